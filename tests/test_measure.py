"""The measuring pieces that need no clock: samples' sizes and the order of paired rounds."""

from __future__ import annotations

from pytest_infer.perf.timing import Timer, calls_for, loop_driver, paired_rounds, sample_calls


def test_calls_for_the_nearest_whole_number_of_calls() -> None:
    assert calls_for(0.002) == 50
    assert calls_for(0.045) == 2  # 90 ms, not 3 x 45 ms
    assert calls_for(0.3) == 1


def test_similar_sides_get_the_same_count_and_distant_ones_their_own() -> None:
    # 38 and 45 ms: 3 and 2 calls on their own; one count for both from their geometric mean (41 ms)
    assert (calls_for(0.038), calls_for(0.045)) == (3, 2)
    assert sample_calls(0.038, 0.045) == (2, 2)
    assert sample_calls(0.010, 0.030) == (10, 3)  # 3x apart: each its own
    assert sample_calls(0.5, 0.4) == (1, 1)


def test_paired_rounds_alternate_which_side_goes_first() -> None:
    log: list[str] = []
    cpu: tuple[list[float], list[float]] = ([], [])
    base, cand = paired_rounds(
        lambda: log.append("B"), lambda: log.append("C"), Timer("cpu"), rounds=5, warmup=1, cpu=cpu, calls=(2, 1)
    )
    assert "".join(log) == "BC" + "BB" + "C" + "C" + "BBBB" + "C" + "C" + "BBBB" + "C"
    assert len(base) == len(cand) == len(cpu[0]) == len(cpu[1]) == 5  # off cuda: CPU time of every sample too


def test_a_driver_that_calls_once_more_after_its_rounds_is_not_timed() -> None:
    def driver(call, calls, after_round, rounds):  # as pytest-benchmark: one more call and teardown at the end
        loop_driver(call, calls, after_round, rounds)
        call()

    log: list[str] = []
    base, cand = paired_rounds(lambda: log.append("B"), lambda: log.append("C"), Timer("cpu"), 2, 0, drive=driver)
    assert "".join(log) == "BC" + "CB" + "C" and len(base) == len(cand) == 2

"""Honest timing: device-synchronised timers, paired rounds of baseline and candidate (B C | C B | ...), calls per
sample, the garbage collector paused, and one call under the memory probes.

Warm-up calls are never in the numbers; the first call (compile) is reported apart; timed rounds alternate so
that drift hits both sides (the ratio and its interval: :mod:`pytest_infer.perf.stats`).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator

from pytest_infer.runtime.memory import host_peak_rss, peak_memory


class Timer:
    """Wall time of a region with the device synchronised around it."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    @contextlib.contextmanager
    def region(self, into: list[float], cpu_into: list[float] | None = None) -> Iterator[None]:
        """Append the wall seconds of the block to ``into``; off cuda, its process CPU seconds to ``cpu_into``
        (time the process ran, whichever thread: unlike wall time, it does not grow while the process waits
        for a core on a shared machine)."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            into.append(start.elapsed_time(end) / 1000.0)
        else:
            c0 = time.process_time_ns()
            t0 = time.perf_counter_ns()
            yield
            into.append((time.perf_counter_ns() - t0) / 1e9)
            if cpu_into is not None:
                cpu_into.append((time.process_time_ns() - c0) / 1e9)


def memory_round(run: Callable[[], object], device: str, timer: Timer) -> tuple[dict[str, int], float]:
    """Peak device memory and peak host RSS of one call (:func:`peak_memory`, :func:`host_peak_rss`), and its
    wall seconds (timed inside the probes)."""
    into: dict[str, int] = {}
    took: list[float] = []
    with peak_memory(device, into), host_peak_rss(into), timer.region(took):
        run()
    return into, took[0]


MIN_SAMPLE_S = 0.1  # timed samples last about this long: a shorter call is repeated within one sample


def calls_for(call_s: float, min_sample_s: float = MIN_SAMPLE_S) -> int:
    """Calls per timed sample for a call of ``call_s`` seconds, so that a sample lasts about ``min_sample_s``: the
    whole number of calls nearest to it, so a sample lies between 2/3 and 3/2 of ``min_sample_s``.

    A shared machine preempts a process for whole time slices (milliseconds): a call of a few milliseconds is
    then either untouched or doubled, and a median of a few such samples jumps between the two. Repeating the
    call within one sample averages the preemptions out (as pytest-benchmark's calibration and ``timeit`` do).
    Rounding up instead would double the time of every call just under ``min_sample_s`` (a 96 ms decode ran
    twice per sample) for no gain: a 70 ms sample already spans tens of time slices."""
    return max(1, min(1000, round(min_sample_s / max(call_s, 1e-6))))


def sample_calls(baseline_s: float, candidate_s: float, min_sample_s: float = MIN_SAMPLE_S) -> tuple[int, int]:
    """Calls per sample of each side, from one call of each: the same count for both where their calls are within
    a factor of two (from the geometric mean of the two), so that both sides' samples have the same structure.

    What a sample's first call pays for following the other side's sample (caches holding the other model's
    weights and activations) is then the same share of both; with counts of, say, 2 and 3 it is not, and
    the ratio moves with the counts, which the single timed call picks anew in every session. Where one side
    is more than twice as fast, each gets its own count (a common one would make the slow side's samples
    needlessly long)."""
    low, high = sorted((max(baseline_s, 1e-6), max(candidate_s, 1e-6)))
    if high <= 2 * low:
        both = calls_for((low * high) ** 0.5, min_sample_s)
        return both, both
    return calls_for(baseline_s, min_sample_s), calls_for(candidate_s, min_sample_s)


def calls_per_sample(run: Callable[[], object], timer: Timer, min_sample_s: float = MIN_SAMPLE_S) -> int:
    """:func:`calls_for` the time of one call of ``run`` (called once, timed)."""
    took: list[float] = []
    with timer.region(took):
        run()
    return calls_for(took[0], min_sample_s)


def repeated(run: Callable[[], object], calls: int) -> Callable[[], None]:
    """``run`` called ``calls`` times: one timed sample."""

    def sample() -> None:
        for _ in range(calls):
            run()

    return sample


# drive(call, calls, after_round, rounds): run ``rounds`` rounds of ``calls`` calls of ``call``, calling
# ``after_round(r)`` (r = 1..rounds) after each round, outside the round's time. pytest-benchmark's pedantic mode
# is one (its ``iterations`` and per-round ``teardown``: see pytest_infer.perf), :func:`loop_driver` the other.
Driver = Callable[[Callable[[], object], int, Callable[[int], None], int], None]


def loop_driver(call: Callable[[], object], calls: int, after_round: Callable[[int], None], rounds: int) -> None:
    for r in range(1, rounds + 1):
        for _ in range(calls):
            call()
        after_round(r)


class Stopwatch:
    """Wall and process-CPU seconds between :meth:`start` and :meth:`stop`, the device synchronised at both ends
    (on cuda: host time after a synchronize, the same on both sides of a pair)."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self.running = False
        self._t0 = self._c0 = 0

    def start(self) -> None:
        self.timer.sync()
        self.running = True
        self._c0 = time.process_time_ns()
        self._t0 = time.perf_counter_ns()

    def stop(self) -> tuple[float, float]:
        self.timer.sync()
        wall = (time.perf_counter_ns() - self._t0) / 1e9
        cpu = (time.process_time_ns() - self._c0) / 1e9
        self.running = False
        return wall, cpu


def paired_rounds(
    run_baseline: Callable[[], object],
    run_candidate: Callable[[], object],
    timer: Timer,
    rounds: int,
    warmup: int,
    cpu: tuple[list[float], list[float]] | None = None,
    *,
    calls: tuple[int, int] = (1, 1),
    drive: Driver = loop_driver,
) -> tuple[list[float], list[float]]:
    """Warm both up, then alternate timed rounds so that drift affects both alike: the pairs run baseline first,
    then candidate first, and so on (B C | C B | B C ...). Returns the wall seconds of each side's samples (a
    sample: ``calls`` = (baseline, candidate) calls in a row, each synchronising the device at its end, on both
    sides alike), and off cuda appends their process-CPU seconds to ``cpu`` (baseline, candidate).

    ``drive`` runs the candidate's rounds: with pytest-benchmark's pedantic mode the candidate samples of the
    pairs are the very rounds pytest-benchmark records (no second set of rounds for it), and the baseline's
    samples run between them, outside its timing."""
    for _ in range(warmup):
        run_baseline()
        run_candidate()
    base: list[float] = []
    cand: list[float] = []
    cpu_b, cpu_c = cpu if cpu is not None else ([], [])
    watch = Stopwatch(timer)

    def baseline_call() -> None:
        run_baseline()
        timer.sync()

    baseline_sample = repeated(baseline_call, calls[0])

    def time_baseline() -> None:
        watch.start()
        baseline_sample()
        wall, cpu_s = watch.stop()
        base.append(wall)
        if not timer.cuda:  # host CPU time on cuda includes the wait in synchronize: not a figure to compare
            cpu_b.append(cpu_s)

    def candidate_call() -> None:
        if not watch.running:  # the first call of a round starts its sample (a call after the rounds: never stopped)
            watch.start()
        run_candidate()
        timer.sync()

    def after_round(r: int) -> None:
        wall, cpu_s = watch.stop()
        cand.append(wall)
        if not timer.cuda:
            cpu_c.append(cpu_s)
        if r % 2 == 0:  # round r ran candidate first: its baseline now, then the next pair's, which runs first
            time_baseline()
            if r < rounds:
                time_baseline()

    with gc_paused():
        time_baseline()
        drive(candidate_call, calls[1], after_round, rounds)
    if len(cand) != rounds or len(base) != rounds:
        raise RuntimeError(f"paired rounds: the driver ran {len(cand)} candidate rounds for {rounds} asked")
    return base, cand


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off during timed calls, as ``timeit`` does: a collection in a process
    holding torch and transformers takes tenths of a second and would land in one round at random. Reference
    counting still frees everything else; the collector runs again after the block."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

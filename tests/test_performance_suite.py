"""The perf suite's scenarios through pytest-benchmark, the report and the terminal; without pytest-benchmark; the
regression gate on stored baselines; and the measuring pieces on their own."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from _scripts import load_script

from pytest_infer.__main__ import main
from pytest_infer.perf.gate import Threshold, parse_compare_fail, regressions
from pytest_infer.perf.stats import Paired
from pytest_infer.perf.timing import Timer, calls_per_sample
from pytest_infer.runtime.memory import host_peak_rss

pytestmark = pytest.mark.timing  # measured time: run alone (README: -m "timing and not slow")


# the technique `planted` of scripts/perf_regression_proof.py: one definition for both
PLANTED_CONFTEST = load_script("perf_regression_proof").PLANTED_CONFTEST

# the suite restricted to the planted technique against sdpa (same model, so ratios are ~1), short and quick
ARGS = (
    "--infer-suite",
    "perf",
    "--infer-technique",
    "planted",
    "--infer-baseline",
    "sdpa",
    "--infer-perf-rounds",
    "3",
    "--infer-perf-new-tokens",
    "8",
)
SCENARIO_TESTS = {
    "test_model_load[cpu-float32-planted]": "model load",
    "test_decode_speed[cpu-float32-planted]": "decode 8 tokens x 8 prompts",
    "test_prefill_latency[cpu-float32-planted-prompt32]": "prefill 32 tokens x 8 prompts",
    "test_prefill_latency[cpu-float32-planted-prompt256]": "prefill 256 tokens x 8 prompts",
    "test_time_to_first_token[cpu-float32-planted]": "time to first token x 8 prompts",
    "test_memory[cpu-float32-planted]": "memory of generate 8 tokens x 8 prompts",
}
# the embedded model's KV bytes per cached position of the 8-prompt batch: 4 layers x (K, V) x 8 rows x 2 KV heads
# x head_dim 32 x 4 bytes (float32)
KV_BYTES_PER_POSITION = 4 * 2 * 8 * 2 * 32 * 4


def test_every_scenario_reaches_pytest_benchmark_the_report_and_the_terminal(
    pytester: pytest.Pytester, run_infer
) -> None:
    pytester.makeconftest(PLANTED_CONFTEST)
    # every scenario of `planted`, and continuous batching (paged|sdpa); --benchmark-only: every scenario counts
    # as a benchmark test (none is skipped as "non-benchmark")
    args = [*ARGS, "--infer-technique", "planted,paged|sdpa", "-k", "planted or batching", "--benchmark-only"]
    result = run_infer(*args, "--benchmark-json=out.json", "--infer-report=report.json")
    result.assert_outcomes(passed=7, deselected=6)
    data = json.loads((pytester.path / "out.json").read_text())
    benches = {b["name"]: b for b in data["benchmarks"]}
    batching = "test_batching_throughput[cpu-float32-paged|sdpa]"
    assert set(benches) == {*SCENARIO_TESTS, batching}
    for name, scenario in {**SCENARIO_TESTS, batching: "continuous batching 8 requests x 8 tokens"}.items():
        assert benches[name]["group"] == f"tiny-llama: {scenario} (float32, cpu)"
        # timed scenarios: pytest-benchmark's rounds are the candidate's paired rounds (memory: its own rounds)
        assert benches[name]["stats"]["rounds"] == 3
        assert benches[name]["extra_info"]["infer_notes"] == []
        assert benches[name]["extra_info"]["infer_baseline"] == ("sequential generate" if name == batching else "sdpa")
    assert data["machine_info"]["infer_stack"]["device_kind"] == "cpu"

    def metrics(name: str) -> dict[str, float]:
        return benches[name]["extra_info"]["infer_metrics"]

    load = metrics("test_model_load[cpu-float32-planted]")
    # (the RSS growth of a load may be 0: the allocator reuses what earlier loads freed; the probe's own test is below)
    assert load["load_s"] == load["median_s"] > 0 and load["cpu_speedup"] > 0 and load["peak_rss_delta"] >= 0
    decode = metrics("test_decode_speed[cpu-float32-planted]")
    assert {"ms_per_token", "decode_ms_per_token", "decode_step_speedup", "compile_s", "cv"} <= set(decode)
    assert decode["tokens_per_s"] == pytest.approx(8 * 8 / decode["median_s"])
    assert decode["weight_memory_ratio"] == 1.0
    for length in (32, 256):
        prefill = metrics(f"test_prefill_latency[cpu-float32-planted-prompt{length}]")
        assert prefill["prompt_len"] == length
        assert prefill["tokens_per_s"] == pytest.approx(8 * length / prefill["median_s"])
    ttft = metrics("test_time_to_first_token[cpu-float32-planted]")
    assert ttft["ttft_s"] == ttft["median_s"] and "speedup_low" in ttft
    throughput = metrics(batching)
    assert throughput["tokens_per_s"] == pytest.approx(8 * 8 / throughput["median_s"])  # 8 requests x 8 tokens
    assert throughput["speedup"] > 0 and throughput["sequential_tokens_per_s"] > 0
    assert throughput["max_batch_tokens"] == 256 and "throughput_ratio" in throughput
    memory = metrics("test_memory[cpu-float32-planted]")
    # the dynamic cache of a forced-length generate holds every position: a whole number of positions, as sdpa's
    assert memory["kv_bytes"] % KV_BYTES_PER_POSITION == 0 and memory["kv_memory_ratio"] == 1.0
    assert memory["weight_bytes"] > 4_000_000 and "median_s" not in memory  # memory is not timed in pairs

    report = json.loads((pytester.path / "report.json").read_text())
    perf = [r for r in report["results"] if r["kind"] == "performance"]
    keys = ["batching", "decode", "load", "memory", "prefill", "prefill", "ttft"]
    assert sorted(r["scenario_key"] for r in perf) == keys
    assert all(r["check"] == "speed" and r["verdict"] == "pass" and r["notes"] == [] for r in perf)
    result.stdout.fnmatch_lines(
        [
            "*pytest-infer: performance*",
            "pass planted | model load (float32, cpu): load * s (CV * %); speedup *x ?95 %: *, *? over 3 paired "
            "rounds* vs sdpa (CPU time *x); peak host RSS +*",
            "pass planted | decode 8 tokens x 8 prompts (float32, cpu): * ms/token, * tokens/s, * ms/token after "
            "the first*; weights 4.82 MiB (1x)*",
            "pass planted | memory of generate 8 tokens x 8 prompts (float32, cpu): weights 4.82 MiB (1x); KV cache *"
            " (1x)*",
        ]
    )


COUNTED = """
import contextlib

from pytest_infer import Technique

CALLS = [0]


@contextlib.contextmanager
def counted():
    CALLS[0] += 1
    yield


def pytest_infer_register_techniques(registry):
    registry.add(Technique(name="counted", family="custom", load_kwargs={"attn_implementation": "sdpa"},
                           context=counted))


def pytest_sessionfinish(session):
    (session.config.rootpath / "calls.txt").write_text(str(CALLS[0]))
"""


@pytest.mark.parametrize("benchmark_on", [True, False], ids=["pytest-benchmark", "no-benchmark-plugin"])
def test_each_candidate_call_is_timed_once_for_both_records(
    pytester: pytest.Pytester, run_infer, benchmark_on: bool
) -> None:
    """The candidate's calls in one prefill test: its first call, the call that sizes the samples, and the paired
    rounds, which pytest-benchmark drives (plus the one call it makes after its rounds, for a result, when a round
    has several calls). Rounds of its own on top would add 3 x the calls of a sample."""
    pytester.makeconftest(COUNTED)
    off = () if benchmark_on else ("-p", "no:benchmark")
    args = ("--infer-suite=perf", "--infer-technique=counted", "--infer-baseline=sdpa", "--infer-perf-rounds=3")
    result = run_infer(*off, *args, "-k", "prefill and prompt32", "--infer-report=report.json")
    result.assert_outcomes(passed=1, deselected=6)
    (perf,) = [
        r for r in json.loads((pytester.path / "report.json").read_text())["results"] if r["technique"] == "counted"
    ]
    calls = perf["calls"]
    extra = 1 if benchmark_on and calls > 1 else 0
    assert int((pytester.path / "calls.txt").read_text()) == 2 + 3 * calls + extra, calls


def test_the_baseline_s_first_call_runs_once_per_model_and_scenario(pytester: pytest.Pytester, run_infer) -> None:
    """Two candidates timed against the same resident baseline in the same scenario: the baseline's first call runs
    for the first test only; each test then makes its sizing call and its paired rounds' calls."""
    pytester.makeconftest(COUNTED)
    args = (
        "--infer-suite=perf",
        "--infer-technique=sdpa,sdpa_math",
        "--infer-baseline=counted",
        "--infer-perf-rounds=2",
    )
    result = run_infer(*args, "-k", "prefill and prompt256", "--infer-report=report.json")
    result.assert_outcomes(passed=2, deselected=11)
    perf = [r for r in json.loads((pytester.path / "report.json").read_text())["results"] if r["kind"] == "performance"]
    assert len(perf) == 2 and perf[0]["baseline_first_call_s"] == perf[1]["baseline_first_call_s"] > 0
    expected = 1 + sum(1 + 2 * r["baseline_calls"] for r in perf)
    assert int((pytester.path / "calls.txt").read_text()) == expected


CLAIMING = """
from pytest_infer import Expectation, Technique


def pytest_infer_register_techniques(registry):
    # the same model as the baseline: a 50x decode speedup cannot hold, a 0.01x prefill one must
    registry.add(Technique(name="claiming", family="custom", load_kwargs={"attn_implementation": "sdpa"},
                           expectations=(Expectation("decode_speedup", ">=", 50.0),
                                         Expectation("prefill_speedup", ">=", 0.01))))
"""


@pytest.mark.parametrize(
    ("off", "note"),
    [
        (("-p", "no:benchmark"), "pytest-benchmark is not loaded (-p no:benchmark)"),
        (("-n", "1"), "pytest-benchmark disables itself under xdist"),
    ],
    ids=["no-benchmark-plugin", "xdist"],
)
def test_without_pytest_benchmark_the_suite_measures_decides_and_says_so(
    pytester: pytest.Pytester, run_infer, off: tuple[str, ...], note: str
) -> None:
    pytester.makeconftest(CLAIMING)
    result = run_infer(
        *off,
        "--infer-suite=perf",
        "--infer-technique=claiming",
        "--infer-baseline=sdpa",
        "--infer-perf-rounds=3",
        "--infer-perf-new-tokens=8",
        "--infer-compare-fail=speedup:10%",
        "--infer-report=report.json",
        "-k",
        "decode or prefill",
    )
    result.assert_outcomes(failed=1, passed=2)
    out = result.stdout.str()
    assert re.search(r"FAIL: decode_speedup [\d.]+ \[95 %: [\d.]+, [\d.]+\] >= 50 expected \(technique", out), out
    full_note = (
        f"{note}: figures measured and claims decided by pytest-infer, nothing stored or compared; "
        "--infer-compare-fail speedup:10% is not applied"
    )
    result.stdout.fnmatch_lines([f"NOTE: {full_note}"])
    report = json.loads((pytester.path / "report.json").read_text())
    perf = [r for r in report["results"] if r["kind"] == "performance"]
    assert len(perf) == 3 and all(r["notes"] == [full_note] for r in perf)
    assert all(r["metrics"]["speedup"] > 0 for r in perf)


def test_stored_baselines_are_kept_per_stack_and_a_slower_technique_fails_its_test(
    pytester: pytest.Pytester, run_infer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makeconftest(PLANTED_CONFTEST)
    decode = ("-k", "test_decode_speed")
    first = run_infer(*ARGS, *decode, "--benchmark-autosave")
    first.assert_outcomes(passed=1, deselected=6)
    stored = list((pytester.path / ".benchmarks").glob("cpu-*/*/*.json"))
    assert len(stored) == 1, "the baseline is stored under .benchmarks/<stack key>/"
    # `pytest-infer list` reads pytest-benchmark's real file: the run, under its stack
    capsys.readouterr()  # pytester echoes the inner session's output into ours: drop it
    assert main(["list", "-s", str(pytester.path / ".benchmarks"), "--newest"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(stored[0])]

    # wide margins: this test runs beside others on a shared machine; the planted slowdown is 21x the CPU time.
    # cpu_speedup (~1 when unchanged) may drop by 0.5 in absolute terms, tokens/s by 60 %
    rules = "--infer-compare-fail=cpu_speedup:0.5,decode.tokens_per_s:60%,weight_bytes:5%"
    same = run_infer(*ARGS, *decode, "--benchmark-compare", rules)
    same.assert_outcomes(passed=1, deselected=6)
    same.stdout.fnmatch_lines([f"regression gate {rules}: vs *0001_*.json"])

    # without --benchmark-compare, the gate compares with the newest stored run of this stack by itself
    monkeypatch.setenv("PLANTED_SLOWDOWN", "20")
    slower = run_infer(*ARGS, *decode, rules)
    slower.assert_outcomes(failed=1, deselected=6)
    slower.stdout.fnmatch_lines(
        [
            "*FAIL: cpu_speedup regressed by * (stored *, now *; allowed 0.5) vs *0001_*.json (the newest stored run "
            "of this stack)*",
            "*FAIL: tokens_per_s regressed * % (stored *, now *; allowed 60 %) vs *0001_*.json*",
            "FAILED *test_decode_speed[[]cpu-float32-planted[]]*",
        ]
    )


def test_bad_compare_fail_spec_is_a_usage_error(run_infer) -> None:
    result = run_infer("--infer-compare-fail=prefil.speedup:10%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "'prefil.speedup:10%': expected METRIC:PCT% (relative) or METRIC:VALUE (absolute" in result.stderr.str()
    assert "SCENARIO one of load, decode, prefill, ttft, memory, batching" in result.stderr.str()


# --- the pieces, in this process ---------------------------------------------------------------------------------
def test_a_scenario_rule_wins_over_the_plain_rule_for_its_tests_only() -> None:
    rules = parse_compare_fail("cpu_speedup:8%,load.cpu_speedup:30%,weight_bytes:5%")
    assert rules == {
        "cpu_speedup": Threshold(0.08),
        "load.cpu_speedup": Threshold(0.30),
        "weight_bytes": Threshold(0.05),
    }
    stored, now = {"cpu_speedup": 1.0, "weight_bytes": 100.0}, {"cpu_speedup": 0.8, "weight_bytes": 104.0}
    assert regressions(now, stored, rules, "load") == []  # 20 % < 30 %; 4 % < 5 %
    assert regressions(now, stored, rules, "decode") == [
        "cpu_speedup regressed 20.0 % (stored 1, now 0.8; allowed 8 %)"
    ]
    assert regressions({"weight_bytes": 120.0}, stored, rules, "memory") == [
        "weight_bytes regressed 20.0 % (stored 100, now 120; allowed 5 %)"
    ]


def test_absolute_rules_allow_a_change_in_the_metric_s_unit() -> None:
    """As pytest-benchmark's min:0.5: a number without % is how much worse the metric may get, in its own unit."""
    rules = parse_compare_fail("peak_memory:1e6,ttft_s:0.02,cpu_speedup:0.5,decode.cpu_speedup:0")
    assert rules["peak_memory"] == Threshold(1e6, relative=False) and rules["decode.cpu_speedup"].limit == 0
    stored = {"peak_memory": 0.0, "ttft_s": 0.10, "cpu_speedup": 1.0}
    assert regressions({"peak_memory": 5e5, "ttft_s": 0.11, "cpu_speedup": 0.6}, stored, rules, "ttft") == []
    assert regressions({"peak_memory": 2e6, "ttft_s": 0.13, "cpu_speedup": 0.4}, stored, rules, "ttft") == [
        "peak_memory regressed by 2e+06 (stored 0, now 2e+06; allowed 1e+06)",  # absolute: a stored 0 is compared
        "ttft_s regressed by 0.03 (stored 0.1, now 0.13; allowed 0.02)",
        "cpu_speedup regressed by 0.6 (stored 1, now 0.4; allowed 0.5)",
    ]
    assert regressions({"cpu_speedup": 0.99}, stored, rules, "decode") == [
        "cpu_speedup regressed by 0.01 (stored 1, now 0.99; allowed 0)"
    ]
    for bad, says in (("peak_memory:lots", "is not a number"), ("ttft_s:-1", ">= 0"), ("ttft_s:nan", "finite")):
        with pytest.raises(ValueError, match=says):
            parse_compare_fail(bad)


def test_the_speedup_is_the_median_of_the_paired_ratios() -> None:
    # round 3 was disturbed on the baseline side only: the median of the ratios ignores it
    paired = Paired([1.0, 2.0, 9.0, 1.0, 2.0], [0.5, 1.0, 1.0, 0.5, 1.0])
    assert paired.ratios == [2.0, 2.0, 9.0, 2.0, 2.0]
    assert paired.speedup == 2.0
    low, high = paired.interval()
    assert low < 2.0 < high


def test_short_calls_are_repeated_within_a_sample() -> None:
    assert calls_per_sample(lambda: time.sleep(0.002), Timer("cpu"), min_sample_s=0.05) in range(10, 26)
    assert calls_per_sample(lambda: time.sleep(0.06), Timer("cpu"), min_sample_s=0.05) == 1
    assert calls_per_sample(lambda: time.sleep(0.045), Timer("cpu"), min_sample_s=0.05) == 1  # not 2 x 45 ms


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak RSS is read from /proc (Linux)")
@pytest.mark.parametrize("exact", [True, False], ids=["kernel-mark", "sampled"])
def test_peak_host_rss_sees_an_allocation_freed_before_the_end(monkeypatch: pytest.MonkeyPatch, exact: bool) -> None:
    import torch

    from pytest_infer.runtime import memory as measure

    if not exact:  # as where Linux refuses the reset of the high-water mark: a thread samples /proc/self/statm
        monkeypatch.setattr(measure, "_HWM_RESET", [False])
    into: dict[str, int] = {}
    with host_peak_rss(into):
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.02)  # held for 20 ms: many samples
        del block
    assert into["rss_exact"] == int(exact)
    assert into["peak_rss_delta"] >= 60 * 2**20, into
    quiet: dict[str, int] = {}
    with host_peak_rss(quiet):
        pass
    assert quiet["peak_rss_delta"] < 8 * 2**20, quiet

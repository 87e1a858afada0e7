"""The regression proof (scripts/perf_regression_proof.py): its planted memory regression in a real session (fast,
deterministic bytes), and the whole script (slow: a baseline, unchanged reruns, a slower and a heavier technique)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _scripts import load_script

pytestmark = pytest.mark.timing  # measured time: run alone (README: -m "timing and not slow")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "perf_regression_proof.py"


proof = load_script("perf_regression_proof")


def test_planted_extra_memory_fails_the_tests_that_report_weights(
    pytester: pytest.Pytester, run_infer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(proof.PLANTED_CONFTEST)
    args = (
        *proof.SUITE,
        "--infer-perf-rounds=2",
        "--infer-perf-new-tokens=4",
        f"--benchmark-storage=file://{pytester.path / 'storage'}",
        "-k",
        "decode or memory",
    )
    base = run_infer(*args, "--benchmark-save=baseline")
    base.assert_outcomes(passed=2, deselected=5)
    (stored,) = (pytester.path / "storage").glob("*/0001_baseline.json")

    # (an unchanged rerun passes this gate: tests/test_performance_suite.py; the script reruns five times)
    gate = ("--benchmark-compare=0001", "--infer-compare-fail=weight_bytes:5%", "--benchmark-json=after.json")
    monkeypatch.setenv("PLANTED_EXTRA_MEMORY", "0.2")
    heavier = run_infer(*args, *gate)
    heavier.assert_outcomes(failed=2, deselected=5)
    heavier.stdout.fnmatch_lines(
        [
            "FAILED *test_decode_speed[[]cpu-float32-planted[]]*",
            "FAILED *test_memory[[]cpu-float32-planted[]]*",
        ],
        consecutive=False,
    )
    out = heavier.stdout.str()
    # bytes are deterministic: exactly the planted 20 %, against the stored run, in both tests
    text = "FAIL: weight_bytes regressed 20.0 % (stored 5.051e+06, now 6.061e+06; allowed 5 %)"
    # counted in the FAILURES sections only: under CI=true pytest prints full messages in the short summary too
    failures = out.split("short test summary info")[0]
    assert failures.count(f"{text} vs {stored.parent.name}/{stored.name}") == 2, out
    # what the proof script reads: our verdicts in pytest-benchmark's JSON, by test name
    run = proof.read_run("heavier", heavier.ret, 0.0, out, pytester.path / "after.json")
    assert sorted(run.ours) == [
        ("test_decode_speed[cpu-float32-planted]", "weight_bytes regressed 20.0 % (stored 5.051e+06, now 6.061e+06; "
         "allowed 5 %)"),
        ("test_memory[cpu-float32-planted]", "weight_bytes regressed 20.0 % (stored 5.051e+06, now 6.061e+06; "
         "allowed 5 %)"),
    ]  # fmt: skip
    assert run.theirs == [] and run.flagged == [
        "test_decode_speed[cpu-float32-planted]",
        "test_memory[cpu-float32-planted]",
    ]


def test_the_script_reads_pytest_benchmark_regressions_by_test_name() -> None:
    line = "\ttest_decode_speed[cpu-float32-planted] (0001_baseli) - Field 'median' has failed PercentageRegressionCheck: 61.2 > 50.0"
    m = proof.BENCH_REGRESSION.match(line)
    assert m is not None and m["name"] == "test_decode_speed[cpu-float32-planted]" and m["field"] == "median"


@pytest.mark.slow
def test_the_proof_script_flags_the_planted_regressions_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "proof.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--reruns", "5", "--json", str(out)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["problems"] == [] and summary["unchanged_flagged"] == 0
    runs = {r["label"]: r for r in summary["runs"]}
    assert "test_decode_speed[cpu-float32-planted]" in runs["slower"]["flagged"]
    assert {t for t, text in runs["heavier"]["ours"] if text.startswith("weight_bytes regressed 20.0 %")} == {
        "test_decode_speed[cpu-float32-planted]",
        "test_memory[cpu-float32-planted]",
    }

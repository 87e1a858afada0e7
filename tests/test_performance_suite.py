"""The perf suite through pytest-benchmark, and the regression gate on stored baselines."""

from __future__ import annotations

import json

import pytest

# A technique whose cost is set by environment variables, so one conftest can be run as "before" and
# "after" a regression: PLANTED_SLEEP adds seconds per forward call, PLANTED_EXTRA_BYTES adds a buffer.
PLANTED = """
import os
import time

import torch

from pytest_infer import Technique


def prepare(model):
    sleep = float(os.environ.get("PLANTED_SLEEP", "0"))
    extra = int(os.environ.get("PLANTED_EXTRA_BYTES", "0"))
    if extra:
        model.register_buffer("planted_ballast", torch.zeros(extra // 4, dtype=torch.float32))
    if sleep:
        forward = model.forward

        def slow_forward(*args, **kwargs):
            time.sleep(sleep)
            return forward(*args, **kwargs)

        model.forward = slow_forward
    return model


def pytest_infer_register_techniques(registry):
    registry.add(Technique(name="planted", family="custom", load_kwargs={"attn_implementation": "sdpa"},
                           prepare=prepare))
"""

ARGS = (
    "--infer-suite",
    "perf",
    "--infer-technique",
    "planted",
    "--infer-perf-rounds",
    "5",
    "--infer-perf-new-tokens",
    "8",
    "--infer-baseline",
    "sdpa",
)


def test_perf_suite_feeds_pytest_benchmark(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(PLANTED)
    result = run_infer(*ARGS, "--benchmark-json=out.json", "-rA")
    result.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "out.json").read_text())
    (bench,) = data["benchmarks"]
    assert bench["name"] == "test_decode_speed[cpu-float32-planted]"
    assert bench["group"].startswith("tiny-llama: decode 8 tokens x 8 prompts (float32, cpu)")
    assert bench["stats"]["rounds"] == 5
    metrics = bench["extra_info"]["infer_metrics"]
    assert {"tokens_per_s", "ms_per_token", "speedup", "speedup_low", "weight_bytes"} <= set(metrics)
    assert data["machine_info"]["infer_stack"]["device_kind"] == "cpu"
    assert data["machine_info"]["infer_stack_key"].startswith("cpu-")
    result.stdout.fnmatch_lines(["*decode 8 tokens x 8 prompts of planted vs sdpa (float32, cpu)*speedup *x ?95 %: *"])


def test_benchmark_disabled_still_measures(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(PLANTED)
    result = run_infer(*ARGS, "--benchmark-disable")
    result.assert_outcomes(passed=1)


def test_stored_baselines_are_kept_per_stack_and_regressions_fail_the_test(
    pytester: pytest.Pytester, run_infer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(PLANTED)
    first = run_infer(*ARGS, "--benchmark-autosave")
    first.assert_outcomes(passed=1)
    stored = list((pytester.path / ".benchmarks").glob("cpu-*/*/*.json"))
    assert len(stored) == 1, "the baseline is stored under .benchmarks/<stack key>/"

    # tokens/s gets a wide margin (a shared CI machine is noisy); the planted slowdown is ~10x
    gate = ("--benchmark-compare", "--infer-compare-fail=tokens_per_s:50%,weight_bytes:5%")
    same = run_infer(*ARGS, *gate)
    same.assert_outcomes(passed=1)

    monkeypatch.setenv("PLANTED_EXTRA_BYTES", str(2_000_000))  # +40 % of the embedded model's weights
    heavier = run_infer(*ARGS, *gate)
    heavier.assert_outcomes(failed=1)
    heavier.stdout.fnmatch_lines(["*weight_bytes regressed * % (stored *, now *; allowed 5 %) vs *0001_*.json*"])

    monkeypatch.delenv("PLANTED_EXTRA_BYTES")
    monkeypatch.setenv("PLANTED_SLEEP", "0.05")  # ~20x slower: far past the 50 % allowed, even on a busy machine
    slower = run_infer(*ARGS, *gate)
    slower.assert_outcomes(failed=1)
    slower.stdout.fnmatch_lines(["*tokens_per_s regressed * % (stored *, now *; allowed 50 %)*"])
    assert "test_decode_speed[cpu-float32-planted]" in slower.stdout.str()


def test_bad_compare_fail_spec_is_a_usage_error(run_infer) -> None:
    result = run_infer("--infer-compare-fail=latency:10")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--infer-compare-fail: 'latency:10': expected METRIC:PCT% with METRIC one of" in result.stderr.str()

"""--infer-perf-scenarios: which perf tests run per technique; and the bundled suites' order by technique."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_infer.perf.scenarios import (
    FAMILY_SCENARIOS,
    SCENARIOS,
    TESTS,
    ScenarioError,
    prefill_lengths,
    validate,
    wanted,
)


def test_validate() -> None:
    assert validate([]) == ("auto",)
    assert validate(["auto"]) == ("auto",)
    assert validate(["ALL"]) == SCENARIOS
    assert validate(["memory", "decode", "memory"]) == ("memory", "decode")
    with pytest.raises(ScenarioError, match="unknown scenario 'prefil'; valid: auto, all, or a comma list of decode"):
        validate(["decode", "prefil"])
    with pytest.raises(ScenarioError, match="'all' cannot be combined"):
        validate(["all", "decode"])
    with pytest.raises(ScenarioError, match="'auto' cannot be combined"):
        validate(["auto", "decode"])


def test_wanted_by_family_and_for_stacks() -> None:
    assert wanted(("auto",), {"quantization"}) == {"decode", "load"}
    assert wanted(("auto",), {"stack", "caching", "attention"}) == {"decode", "memory", "prefill"}
    assert wanted(("auto",), {"custom"}) == set(SCENARIOS)  # a user's technique: everything
    assert wanted(("decode",), {"quantization"}) == {"decode"}
    assert set(TESTS.values()) == set(SCENARIOS)
    assert all(set(v) <= set(SCENARIOS) for v in FAMILY_SCENARIOS.values())


def test_auto_prefill_lengths_by_family() -> None:
    assert prefill_lengths(("auto",), {"attention"}) == {256}
    assert prefill_lengths(("auto",), {"compilation"}) == {256}  # its short-prompt overhead: in ttft
    assert prefill_lengths(("auto",), {"stack", "attention", "caching"}) == {256}  # caching times no prefill
    assert prefill_lengths(("auto",), {"custom"}) is None
    assert prefill_lengths(("prefill",), {"attention"}) is None  # an explicit selection: every length


def _collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if "::" in line]


def test_auto_selects_by_family_and_groups_by_technique(run_infer: Any) -> None:
    # eager is the baseline (the reference): under auto it is not timed against itself
    techniques = "--infer-technique=sdpa,eager,quanto_int8,paged|sdpa"
    result = run_infer("--infer-suite=perf", techniques, "--collect-only", "-q")
    assert _collected(result) == [
        "test_performance.py::test_decode_speed[cpu-float32-sdpa]",
        "test_performance.py::test_prefill_latency[cpu-float32-sdpa-prompt256]",
        "test_performance.py::test_model_load[cpu-float32-quanto_int8]",
        "test_performance.py::test_decode_speed[cpu-float32-quanto_int8]",
        "test_performance.py::test_batching_throughput[cpu-float32-paged|sdpa]",
    ]
    result.stdout.fnmatch_lines(["5/25 tests collected (20 deselected)*"])


def test_all_and_a_list(run_infer: Any) -> None:
    every = run_infer("--infer-suite=perf", "--infer-technique=sdpa", "--infer-perf-scenarios=all", "--collect-only")
    # every scenario but continuous batching's (sdpa is not a batching technique: that test is deselected)
    every.stdout.fnmatch_lines(["*| perf scenarios decode,prefill,ttft,load,memory,batching", "*6/7 tests collected*"])
    listed = run_infer(
        "--infer-suite=perf", "--infer-technique=sdpa,bnb_8bit", "--infer-perf-scenarios=memory", "--collect-only", "-q"
    )
    assert _collected(listed) == [
        "test_performance.py::test_memory[cpu-float32-sdpa]",
        "test_performance.py::test_memory[cpu-float32-bnb_8bit]",
    ]


def test_parity_suite_runs_each_technique_s_tests_together(run_infer: Any) -> None:
    result = run_infer("--infer-suite=parity", "--infer-technique=sdpa,eager", "--collect-only", "-q")
    assert _collected(result) == [
        "test_parity.py::test_logit_parity[cpu-float32-sdpa]",
        "test_parity.py::test_padded_batches[cpu-float32-sdpa]",
        "test_parity.py::test_logit_parity[cpu-float32-eager]",
        "test_parity.py::test_padded_batches[cpu-float32-eager]",
    ]


def test_a_bad_scenario_is_a_usage_error(run_infer: Any) -> None:
    result = run_infer("--infer-suite=perf", "--infer-perf-scenarios=decode,prefil")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--infer-perf-scenarios*unknown scenario 'prefil'*"])

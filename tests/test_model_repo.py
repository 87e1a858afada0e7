"""examples/model_repo: a model repository's configuration, custom technique and own test, run for real."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from pytest_infer.core.detect import detect_stack

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "model_repo"
KERNEL = "chunked_attention"
CASE = f"[cpu-float32-{KERNEL}]"
# the example commits goldens of one stack class: on another, its golden tests skip with the record command
HAS_GOLDENS = (EXAMPLE / "goldens" / "tiny-llama" / detect_stack("cpu").stack_class()).is_dir()


def copy_example(pytester: pytest.Pytester) -> None:
    shutil.copytree(EXAMPLE, pytester.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))


def outcomes(doc: dict[str, Any]) -> dict[str, str]:
    return {t["nodeid"]: t["outcome"] for t in doc["tests"]}


def test_model_repo_passes_with_its_configuration(pytester: pytest.Pytester, run_infer) -> None:
    copy_example(pytester)
    # the perf suite's decode test carries the repository's claims; its other scenarios add only time here
    perf_scenarios = "not test_model_load and not test_prefill_latency and not test_time_to_first_token"
    result = run_infer(
        "--infer-suite", "parity,generation,perf", "--infer-report=report.json", "-k", perf_scenarios, "tests"
    )
    assert result.ret == 0, result.stdout.str()
    doc = json.loads((pytester.path / "report.json").read_text())
    ran = outcomes(doc)
    for nodeid in (
        f"tests/test_my_model.py::test_chunked_attention_logits{CASE}",
        f"tests/test_my_model.py::test_model_runs_the_chunked_kernel{CASE}",
        f"test_parity.py::test_logit_parity{CASE}",
        f"test_parity.py::test_padded_batches{CASE}",
        f"test_generation.py::test_generation_parity{CASE}",
        f"test_performance.py::test_decode_speed{CASE}",
        "test_parity.py::test_logit_parity[cpu-float32-sdpa]",
    ):
        assert ran.get(nodeid) == "passed", f"{nodeid}: {ran.get(nodeid)}"

    # the committed goldens (infer_golden in pyproject.toml): compared here, skipped with the command elsewhere
    for nodeid in (
        f"test_parity_golden.py::test_logits_golden{CASE}",
        f"test_generation_golden.py::test_generation_golden{CASE}",
    ):
        test = next(t for t in doc["tests"] if t["nodeid"] == nodeid)
        if HAS_GOLDENS:
            assert test["outcome"] == "passed", test
        else:
            assert test["outcome"] == "skipped" and "--infer-golden-record" in test["reason"], test

    # pyproject.toml's infer_* options were read from the ini file
    config = doc["config"]
    assert config["techniques"] == ["sdpa", KERNEL] and config["sources"]["technique"] == "ini"
    assert config["new_tokens"] == [16] and config["padding"] == "left:0,7;right:0" and config["perf_rounds"] == 3
    results = [r for r in doc["results"] if r["technique"] == KERNEL]
    logits = [r for r in results if r["check"] == "logits"]
    # the suite's check gets the ini tolerance, the repository's test its marker's tighter one
    assert sorted(r["tolerance"]["max_abs"] for r in logits) == [5e-05, 1e-04]
    assert all(r["tolerance"]["mean_abs"] == 1e-05 and r["metrics"]["top1"] == 1.0 for r in logits)
    assert [r["variant"] for r in results if r["check"] == "padding"] == [
        "left+0 padding",
        "left+7 padding",
        "right+0 padding",
    ]
    # expectations from conftest.py: the memory claim everywhere, the speed claim only on cuda stacks
    (speed,) = [r for r in results if r["check"] == "speed" and r.get("scenario_key", "decode") == "decode"]
    assert [(c["metric"], c["op"], c["value"], c["verdict"]) for c in speed["claims"]] == [
        ("weight_memory_ratio", "<=", 1.0, "pass")
    ]


def test_a_broken_kernel_fails_the_repository_checks(pytester: pytest.Pytester, run_infer) -> None:
    copy_example(pytester)
    kernel = pytester.path / "my_model" / "attention.py"
    source = kernel.read_text()
    correct = "        out = out * rescale + weights @ value[:, :, start:stop].float()\n"
    assert correct in source
    # the classic online-softmax slip: the accumulator is not rescaled when a later chunk raises the max
    kernel.write_text(source.replace(correct, correct.replace("out * rescale", "out")))
    result = run_infer("--infer-suite", "parity", "--infer-report=report.json", "tests")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    ran = outcomes(json.loads((pytester.path / "report.json").read_text()))
    assert ran[f"tests/test_my_model.py::test_chunked_attention_logits{CASE}"] == "failed"
    assert ran[f"test_parity.py::test_logit_parity{CASE}"] == "failed"
    assert ran[f"test_parity.py::test_padded_batches{CASE}"] == "failed"
    assert ran[f"tests/test_my_model.py::test_model_runs_the_chunked_kernel{CASE}"] == "passed"  # it loads fine
    assert ran["test_parity.py::test_logit_parity[cpu-float32-sdpa]"] == "passed"
    result.stdout.fnmatch_lines(
        [
            f"logit parity FAILED: {KERNEL} (float32) vs reference eager (float32) on cpu, 8 prompts",
            "  max_abs * <= 5e-05  FAIL",
        ]
    )
    if HAS_GOLDENS:  # the committed golden names the kernel as what moved, and the reference as unchanged
        assert ran[f"test_parity_golden.py::test_logits_golden{CASE}"] == "failed"
        assert ran["test_parity_golden.py::test_logits_golden[cpu-float32-sdpa]"] == "passed"
        result.stdout.fnmatch_lines(
            [
                f"golden logits FAILED: {KERNEL} (float32, cpu) moved: max_abs * at row *, position *",
                f"  the reference eager (float32) matches its golden (*): only {KERNEL} moved",
            ]
        )

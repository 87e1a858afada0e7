"""The JSON report as documented in docs/report-schema.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _schema import schema_errors, validate_report

from pytest_infer.reports.document import SCHEMA_REF, SCHEMA_VERSION, schema_file, write_atomically

ROOT = Path(__file__).resolve().parents[1]


def test_report_content_matches_the_documented_schema(pytester: pytest.Pytester, run_infer) -> None:
    (pytester.path / "out").mkdir()
    result = run_infer(
        "--infer-suite",
        "parity,generation",
        "--infer-technique",
        "sdpa,flash_attention_2",
        "--infer-report=out/report.json",
    )
    # 3 skipped: flash_attention_2 needs cuda; family tests with nothing selected are deselected
    result.assert_outcomes(passed=3, skipped=3)
    doc = validate_report(pytester.path / "out" / "report.json")  # (run_infer validates every report too)
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert set(doc) == {"$schema", "schema_version", "tool", "stack", "config", "duration_s", "tests", "results"}
    # the report names its schema: a path inside the package and the repository, where the file is
    assert doc["$schema"] == SCHEMA_REF == "pytest_infer/schema/report-v1.json"
    assert (ROOT / SCHEMA_REF).is_file() and schema_file() == (ROOT / SCHEMA_REF).resolve()
    assert doc["stack"]["device_kind"] == "cpu" and doc["config"]["techniques"] == ["sdpa", "flash_attention_2"]
    skipped = [t for t in doc["tests"] if t["outcome"] == "skipped"]
    assert any("flash_attention_2: needs a cuda device" in t["reason"] for t in skipped)
    checks = {r["check"] for r in doc["results"]}
    assert checks == {"logits", "padding", "generation"}
    logits = next(r for r in doc["results"] if r["check"] == "logits")
    assert {"max_abs", "mean_abs", "max_kl", "mean_kl", "cosine", "top1"} <= set(logits["metrics"])
    # the floor as measured (float32 eager: 0, its left- and right-padded batches agree bit for bit) and the bound
    # derived from it: never tighter than a tenth of the per-dtype table (docs/tolerances.md)
    floor = logits["floor"]
    assert {"max_abs", "max_kl", "dtype_max_abs", "batch_max_abs"} <= set(floor) and floor["max_abs"] >= 0
    assert logits["tolerance"]["max_abs"] >= 1e-4 and logits["tolerance"]["max_abs"] >= logits["metrics"]["max_abs"]
    generation = next(r for r in doc["results"] if r["check"] == "generation")
    assert {"matched_tokens", "match_rate", "near_ties"} <= set(generation["metrics"])


def _speed_result() -> dict:
    claim = {"metric": "decode_speedup", "op": ">=", "value": 1.2, "measured": 1.5, "low": 1.3, "high": 1.7}
    return {
        "kind": "performance",
        "check": "speed",
        "variant": "decode 32 tokens x 8 prompts",
        "technique": "static_cache",
        "device": "cuda:0",
        "dtype": "bfloat16",
        "passed": True,
        "metrics": {"speedup": 1.5, "tokens_per_s": float("nan")},
        "failures": [],
        "scenario_key": "decode",
        "scenario": "decode 32 tokens x 8 prompts",
        "baseline": "eager",
        "verdict": "pass",
        "claims": [{**claim, "verdict": "pass", "source": ""}],
        "notes": [],
        "candidate_s": [0.1, 0.11],
        "baseline_s": [0.15, 0.16],
        "calls": 2,
        "added_by_a_later_version": {"any": "thing"},
    }


def test_the_schema_refuses_what_breaks_the_contract_and_ignores_what_it_does_not_know() -> None:
    """Not a schema that takes anything: each broken contract is named; an unknown field is allowed (docs)."""
    stack = {"device_kind": "cuda", "device_name": "NVIDIA H200", "device_count": 1, "python": "3.12"}
    stack |= {"platform": "Linux", "packages": {"torch": "2.11.0", "flash-attn": None}}
    config = {"model": "m", "devices": ["cuda"], "dtypes": ["bfloat16"], "techniques": ["all"], "suites": ["perf"]}
    config |= {"reference": "eager", "reference_dtype": "float32", "sources": {"suite": "cli"}}
    good = {
        "$schema": SCHEMA_REF,
        "schema_version": 1,
        "tool": {"pytest-infer": "0.1.0"},
        "stack": stack,
        "config": config,
        "duration_s": 1.5,
        "tests": [
            {"nodeid": "t.py::test_decode_speed[cuda0-bfloat16-static_cache]", "outcome": "passed", "duration_s": 1}
        ],
        "results": [_speed_result()],
        "golden": {"a section": "a later version adds"},
    }
    assert schema_errors(good) == []
    broken = [
        ({**good, "schema_version": 2}, "schema_version: 1 was expected"),
        (
            {**good, "tests": [{"nodeid": "x", "outcome": "flaky", "duration_s": 0}]},
            "tests/0/outcome: 'flaky' is not one",
        ),
        ({**good, "stack": {**stack, "device_kind": "tpu"}}, "stack/device_kind: 'tpu' is not one"),
        (
            {**good, "results": [{**_speed_result(), "passed": "yes"}]},
            "results/0/passed: 'yes' is not of type 'boolean'",
        ),
        (
            {**good, "results": [{**_speed_result(), "metrics": {"speedup": "1.5x"}}]},
            "results/0/metrics/speedup: '1.5x'",
        ),
        ({**good, "results": [{**_speed_result(), "scenario_key": "warmup"}]}, "results/0/scenario_key: 'warmup'"),
        ({**good, "results": [{**_speed_result(), "claims": [{"metric": "m", "op": "~"}]}]}, "'verdict' is a required"),
        (
            {**good, "results": [{k: v for k, v in _speed_result().items() if k != "failures"}]},
            "results/0: 'failures' is a required property",
        ),
        ({k: v for k, v in good.items() if k != "results"}, "(document): 'results' is a required property"),
    ]
    for document, expected in broken:
        errors = schema_errors(document)
        assert any(expected in e for e in errors), (expected, errors)


def test_report_folder_must_exist(run_infer) -> None:
    result = run_infer("--infer-report=missing/dir/report.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "folder missing/dir does not exist" in result.stderr.str()


def test_atomic_write_leaves_no_partial_file(tmp_path) -> None:
    target = tmp_path / "r.json"
    write_atomically(target, {"a": 1})

    class Unprintable:
        __str__ = None  # json's default=str then fails half-way through the document

    with pytest.raises(TypeError):
        write_atomically(target, {"a": Unprintable()})
    assert json.loads(target.read_text()) == {"a": 1}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_markdown_matrix_and_github_step_summary(
    pytester: pytest.Pytester, run_infer, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = pytester.path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run_infer(
        "--infer-suite", "parity", "--infer-technique", "sdpa,flash_attention_2", "--infer-markdown=m.md"
    )
    result.assert_outcomes(passed=2, skipped=2)
    text = (pytester.path / "m.md").read_text()
    assert "| device | dtype | technique | logits | padding |" in text
    assert "| cpu | float32 | sdpa | pass " in text
    assert "infer stack: cpu" in text
    appended = summary.read_text()
    assert appended.startswith("earlier step\n") and "| cpu | float32 | sdpa | pass " in appended


def test_infer_list_prints_the_catalogue_and_exits(run_infer) -> None:
    result = run_infer("--infer-list")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "techniques on cpu (*",
            "  eager * attention * runnable",
            "  flash_attention_2 * attention * skip: needs a cuda device, running on cpu",
            "  static_compile * compilation * runnable",
            "  hqq_4bit * quantization*skip: transformers * does not implement HQQ weight loading*",
        ]
    )


def _results(device: str = "cpu", dtype: str = "float32") -> list[dict[str, object]]:
    """What the default parity suite records for its widest rows (names and figures as a real run has them)."""
    common = {"device": device, "dtype": dtype, "passed": True}
    out: list[dict[str, object]] = []
    for name in ("tensor_parallel_static", "kernels_local_attention", "torchao_int8_weight_only", "eager"):
        out.append({**common, "technique": name, "check": "logits", "metrics": {"max_abs": 2.2e-05}})
        out += [{**common, "technique": name, "check": "padding", "metrics": {"max_abs": 1.2e-05}}] * 6
    out.append({**common, "technique": "tensor_parallel_static", "check": "ranks", "metrics": {"disagreements": 0}})
    out.append(
        {
            **common,
            "technique": "torchao_int8_weight_only",
            "check": "storage",
            "metrics": {"weight_memory_ratio": 0.566},
        }
    )
    out.append(
        {**common, "technique": "torchao_int8_weight_only", "check": "inference_mode", "metrics": {"max_abs": 0}}
    )
    return out


def test_one_device_and_dtype_go_to_the_title_and_the_matrix_fits_100_columns() -> None:
    from pytest_infer.reports.terminal import summary_lines, terminal_summary

    title, lines = terminal_summary(_results())
    assert title == "pytest-infer: technique x check (cpu, float32)"
    assert lines[0].split() == ["technique", "logits", "padding", "ranks", "storage", "inf-mode"]
    assert lines[1].split()[:3] == ["tensor_parallel_static", "pass", "2.2e-05"]
    assert max(len(line) for line in lines) <= 100, "\n".join(lines)
    # -v keeps the device and dtype columns; so does a run over several dtypes (one title cannot name them)
    assert terminal_summary(_results(), verbose=True) == ("pytest-infer: technique x check", summary_lines(_results()))
    title, lines = terminal_summary(_results() + _results(dtype="bfloat16"))
    assert title == "pytest-infer: technique x check" and lines[0].split()[:3] == ["device", "dtype", "technique"]

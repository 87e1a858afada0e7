"""The JSON report as documented in docs/report-schema.md."""

from __future__ import annotations

import json

import pytest

from pytest_infer.reports.document import SCHEMA_VERSION, write_atomically


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
    doc = json.loads((pytester.path / "out" / "report.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    assert set(doc) == {"schema_version", "interrupted", "tool", "stack", "config", "duration_s", "tests", "results"}
    assert doc["interrupted"] is False
    assert doc["stack"]["device_kind"] == "cpu" and doc["config"]["techniques"] == ["sdpa", "flash_attention_2"]
    skipped = [t for t in doc["tests"] if t["outcome"] == "skipped"]
    assert any("flash_attention_2: needs a cuda device" in t["reason"] for t in skipped)
    checks = {r["check"] for r in doc["results"]}
    assert checks == {"logits", "padding", "generation"}
    logits = next(r for r in doc["results"] if r["check"] == "logits")
    assert {"max_abs", "mean_abs", "max_kl", "mean_kl", "cosine", "top1"} <= set(logits["metrics"])
    assert logits["floor"]["max_abs"] > 0 and logits["tolerance"]["max_abs"] >= logits["metrics"]["max_abs"]
    generation = next(r for r in doc["results"] if r["check"] == "generation")
    assert {"matched_tokens", "match_rate", "near_ties"} <= set(generation["metrics"])


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


def test_an_unwritable_output_is_a_warning_and_reports_are_strict_json(
    pytester: pytest.Pytester, run_infer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A $GITHUB_STEP_SUMMARY that cannot be appended to (a folder in its place) does not cost the JSON report or
    the Markdown (before: the session ended in an INTERNALERROR and wrote neither); a metric that is NaN is
    null in the report (before: the NaN token, which strict JSON readers refuse)."""
    (pytester.path / "summary").mkdir()
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(pytester.path / "summary"))
    pytester.makepyfile(
        test_nan="""
        def test_records_a_nan(infer_session):
            infer_session.record({"check": "logits", "technique": "mine", "device": "cpu", "dtype": "float32",
                                  "passed": True, "metrics": {"max_abs": float("nan"), "top1": float("inf")}})
        """
    )
    result = run_infer("--infer-report=r.json", "--infer-markdown=m.md", "test_nan.py")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "pytest-infer: WARNING: $GITHUB_STEP_SUMMARY *summary not written: Is a directory; the other outputs were written"
        ]
    )

    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    doc = json.loads((pytester.path / "r.json").read_text(), parse_constant=refuse)
    assert doc["results"][0]["metrics"] == {"max_abs": None, "top1": None}
    assert "| cpu | float32 | mine | pass nan |" in (pytester.path / "m.md").read_text()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


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

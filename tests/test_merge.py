"""`pytest-infer merge`: JSON reports of several stacks -> one stack x technique matrix (Markdown, JSON)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_infer.__main__ import main
from pytest_infer.core.stack import Stack
from pytest_infer.reports.document import SCHEMA_VERSION, report_document
from pytest_infer.reports.merge import case_summaries, merge_reports, merged_markdown

H100 = Stack(
    device_kind="cuda",
    device_name="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),
    device_memory_bytes=80 * 1024**3,
    cuda_version="12.8",
    packages={"torch": "2.9.0+cu128", "transformers": "5.24.0", "flash-attn": "2.8.3"},
)
A10 = Stack(
    device_kind="cuda",
    device_name="NVIDIA A10",
    compute_capability=(8, 6),
    cuda_version="12.8",
    packages={"torch": "2.9.0+cu128", "transformers": "5.24.0"},
)


def logits(technique: str, passed: bool, device: str = "cuda") -> dict[str, Any]:
    return {
        "kind": "logit_parity",
        "check": "logits",
        "variant": "",
        "technique": technique,
        "device": device,
        "dtype": "bfloat16",
        "passed": passed,
        "metrics": {"max_abs": 0.02 if passed else 3.5},
        "failures": [] if passed else ["max_abs 3.5 > 0.25"],
    }


def speed(technique: str, speedup: float, weight_ratio: float, peak_ratio: float | None = None) -> dict[str, Any]:
    metrics = {"speedup": speedup, "speedup_low": speedup - 0.1, "speedup_high": speedup + 0.1}
    metrics["weight_memory_ratio"] = weight_ratio
    if peak_ratio is not None:
        metrics["peak_memory_ratio"] = peak_ratio
    return {
        "kind": "performance",
        "check": "speed",
        "variant": "decode 32 tokens x 8 prompts",
        "technique": technique,
        "baseline": "eager",
        "device": "cuda",
        "dtype": "bfloat16",
        "passed": True,
        "verdict": "pass",
        "metrics": metrics,
        "failures": [],
    }


def outcome(test: str, technique: str, result: str, reason: str = "", device: str = "cuda") -> dict[str, Any]:
    entry = {"nodeid": f"test_parity.py::{test}[{device}-bfloat16-{technique}]", "outcome": result, "duration_s": 0.1}
    if reason:
        entry["reason"] = reason
    return entry


def gpu_report(stack: Stack, results: list[dict[str, Any]], tests: list[dict[str, Any]]) -> dict[str, Any]:
    return report_document(stack.to_dict(), {"dtypes": ["bfloat16"]}, results, tests, 12.0, {"pytest-infer": "0.1.0"})


def h100_report() -> dict[str, Any]:
    return gpu_report(
        H100,
        [
            logits("sdpa", True),
            logits("flash_attention_2", True),
            speed("flash_attention_2", 1.42, 1.0, 0.81),
            logits("bnb_nf4", False),
        ],
        [
            outcome("test_logit_parity", "sdpa", "passed"),
            outcome("test_logit_parity", "flash_attention_2", "passed"),
            outcome("test_logit_parity", "bnb_nf4", "failed"),
        ],
    )


def a10_report() -> dict[str, Any]:
    reason = "flash_attention_3: needs compute capability >= 9.0, found 8.6"
    return gpu_report(
        A10,
        [logits("sdpa", True), logits("flash_attention_2", True)],
        [
            outcome("test_logit_parity", "sdpa", "passed"),
            outcome("test_logit_parity", "flash_attention_2", "passed"),
            outcome("test_logit_parity", "flash_attention_3", "skipped", reason),
        ],
    )


def write(path: Path, doc: dict[str, Any]) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_merge_a_real_cpu_report_with_a_gpu_one(
    pytester: pytest.Pytester, run_infer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_infer(
        "--infer-suite", "parity", "--infer-technique", "sdpa,flash_attention_2", "--infer-report=cpu.json"
    )
    outcomes = result.parseoutcomes()  # other suite files skip for want of a technique: counted loosely
    assert outcomes["passed"] == 2 and "failed" not in outcomes, result.stdout.str()
    cpu = str(pytester.path / "cpu.json")
    cpu_key = Stack.from_dict(json.loads(Path(cpu).read_text())["stack"]).key()
    h100 = write(tmp_path / "h100.json", h100_report())
    md, js = tmp_path / "matrix.md", tmp_path / "matrix.json"
    capsys.readouterr()  # the inner run's echo

    assert main(["merge", cpu, h100, "--markdown", str(md), "--json", str(js)]) == 0
    assert capsys.readouterr().out == ""  # files asked for: nothing on stdout

    h100_key = H100.key()
    assert h100_key == "cuda-nvidia_h100_80gb_hbm3-cu12.8-torch2.9.0-tf5.24.0"
    text = md.read_text()
    lines = text.splitlines()
    assert lines[0] == "## pytest-infer: stack x technique"
    assert f"| technique | dtype | `{cpu_key}` | `{h100_key}` |" in lines
    # each technique x dtype is a row; a stack a report does not cover is "–"
    assert "| sdpa | float32 | pass | – |" in lines
    assert "| flash_attention_2 | float32 | skip | – |" in lines
    assert "| sdpa | bfloat16 | – | pass |" in lines
    assert "| flash_attention_2 | bfloat16 | – | pass 1.42x mem 0.81 |" in lines  # peak memory where measured
    assert "| bnb_nf4 | bfloat16 | – | FAIL logits |" in lines
    assert f"- `{h100_key}`: cuda NVIDIA H100 80GB HBM3 (sm 9.0, 1x 80.0 GiB)" in text
    assert f"(from {h100})" in text
    assert f"- flash_attention_2 (float32) on `{cpu_key}`: needs a cuda device, running on cpu" in lines

    merged = json.loads(js.read_text())
    assert merged["kind"] == "stack_matrix" and merged["schema_version"] == SCHEMA_VERSION
    assert [s["key"] for s in merged["stacks"]] == [cpu_key, h100_key]
    assert merged["sources"] == [cpu, h100]
    rows = {(r["technique"], r["dtype"]): r["cells"] for r in merged["rows"]}
    cpu_sdpa = rows["sdpa", "float32"][cpu_key]
    assert cpu_sdpa["status"] == "pass" and cpu_sdpa["checks"] == {"logits": "pass", "padding": "pass"}
    fa2 = rows["flash_attention_2", "bfloat16"][h100_key]
    assert fa2["speed"]["speedup"] == 1.42 and fa2["speed"]["memory_metric"] == "peak_memory_ratio"
    assert rows["bnb_nf4", "bfloat16"][h100_key]["failed_tests"] == [
        "test_parity.py::test_logit_parity[cuda-bfloat16-bnb_nf4]"
    ]


def test_merge_through_the_console_script(tmp_path: Path) -> None:
    script = shutil.which("pytest-infer", path=str(Path(sys.executable).parent))
    assert script, "the pytest-infer console script is not installed next to this Python"
    a = write(tmp_path / "h100.json", h100_report())
    b = write(tmp_path / "a10.json", a10_report())
    done = subprocess.run([script, "merge", a, b], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()  # no output file: the Markdown goes to stdout
    assert f"| technique | dtype | `{H100.key()}` | `{A10.key()}` |" in lines
    assert "| flash_attention_3 | bfloat16 | – | skip |" in lines
    assert f"- flash_attention_3 (bfloat16) on `{A10.key()}`: needs compute capability >= 9.0, found 8.6" in lines


def test_reports_of_one_stack_share_a_column() -> None:
    parity = h100_report()
    perf = gpu_report(H100, [speed("sdpa", 1.1, 1.0)], [])
    merged = merge_reports([("parity.json", parity), ("perf.json", perf)])
    assert [s["key"] for s in merged["stacks"]] == [H100.key()]
    assert merged["stacks"][0]["sources"] == ["parity.json", "perf.json"]
    sdpa = next(r for r in merged["rows"] if r["technique"] == "sdpa")["cells"][H100.key()]
    assert (
        sdpa["status"] == "pass" and sdpa["speed"]["speedup"] == 1.1 and sdpa["sources"] == ["parity.json", "perf.json"]
    )
    assert "| sdpa | bfloat16 | pass 1.10x mem 1.00 |" in merged_markdown(merged)


def test_known_upstream_defect_is_xfail_not_fail() -> None:
    doc = gpu_report(
        H100,
        [logits("flex_attention", False), logits("maskless", False)],
        [
            outcome("test_logit_parity", "flex_attention", "xfailed", "known upstream defect: ..."),
            outcome("test_logit_parity", "maskless", "failed"),
        ],
    )
    cases = case_summaries(doc)
    assert cases["flex_attention", "cuda", "bfloat16"].status() == "xfail"
    assert cases["maskless", "cuda", "bfloat16"].status() == "fail"
    text = merged_markdown(merge_reports([("h.json", doc)]))
    assert "| flex_attention | bfloat16 | xfail |" in text and "| maskless | bfloat16 | FAIL logits |" in text


def test_schema_version_mismatch_is_exit_2_naming_file_and_versions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(tmp_path / "h100.json", h100_report())
    newer = a10_report()
    newer["schema_version"] = SCHEMA_VERSION + 1
    new = write(tmp_path / "a10.json", newer)
    out = tmp_path / "matrix.md"
    assert main(["merge", old, new, "--markdown", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pytest-infer merge: {new}: report schema version {SCHEMA_VERSION + 1} ")
    assert f"does not match version {SCHEMA_VERSION}" in err and f"{old} has version {SCHEMA_VERSION}" in err
    assert not out.exists()  # nothing half-merged is written


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"schema_version": 1, "results": [', "not valid JSON (Expecting value at line 1, column 35)"),
        ('["a list"]', "not a pytest-infer report (no schema_version)"),
        ('{"schema_version": 1, "tests": []}', "report has no 'results' list"),
        (b"\xff\xfe{}", "not UTF-8 text"),
    ],
)
def test_unusable_report_is_exit_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, expected: str
) -> None:
    good = write(tmp_path / "good.json", h100_report())
    bad = tmp_path / "bad.json"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["merge", good, str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pytest-infer merge: {bad}: ") and expected in err


def test_missing_report_merged_matrix_as_input_and_unwritable_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["merge", str(tmp_path / "nope.json")]) == 2
    assert f"{tmp_path / 'nope.json'}: no such file" in capsys.readouterr().err
    merged = tmp_path / "m.json"
    assert main(["merge", write(tmp_path / "h.json", h100_report()), "--json", str(merged)]) == 0
    assert main(["merge", str(merged)]) == 2
    assert "is a merged stack matrix, not a run report" in capsys.readouterr().err
    nowhere = tmp_path / "missing" / "m.md"
    assert main(["merge", str(tmp_path / "h.json"), "--markdown", str(nowhere)]) == 2
    assert f"pytest-infer merge: cannot write {nowhere}: No such file or directory" in capsys.readouterr().err


def test_merge_imports_neither_torch_nor_pytest(tmp_path: Path) -> None:
    """The merge job of a CI matrix runs on a plain runner: `pip install pytest-infer --no-deps` and packaging."""
    report = write(tmp_path / "h100.json", h100_report())
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'pytest', 'numpy', 'matplotlib'):\n"
        "    sys.modules[name] = None  # importing any of them now fails\n"
        "from pytest_infer.__main__ import main\n"
        f"raise SystemExit(main(['merge', {report!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "| flash_attention_2 | bfloat16 | pass 1.42x mem 0.81 |" in done.stdout

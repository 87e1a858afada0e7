"""Goldens in real sessions (``--infer-golden``): recorded, then passed unchanged and at recorded near-ties; a
planted change of one technique fails that technique only; a perturbed weight fails naming the reference; unusable
files fail naming the file and are never overwritten unless regeneration is asked; regeneration says what it
rewrote; a golden of one stack class is never used on another; ``pytest-infer compare`` shows the failures of two
of these runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pytest_infer.__main__ import main
from pytest_infer.core.resources import embedded_model_path
from pytest_infer.parity.golden import dumps

# "planted" is sdpa with, when INFER_PLANT is set, layer 1's output scaled by 1.001: a change of one technique only
CONFTEST = """
import os

from pytest_infer import Technique


def plant(model):
    if os.environ.get("INFER_PLANT"):
        def hook(module, inputs, output):
            return (output[0] * 1.001, *output[1:]) if isinstance(output, tuple) else output * 1.001

        model.model.layers[1].register_forward_hook(hook)
    return model


def pytest_infer_register_techniques(registry):
    registry.add(Technique(name="planted", family="custom", load_kwargs={"attn_implementation": "sdpa"}, prepare=plant))
"""
ARGS = (
    "--infer-model=tiny-llama",  # a copy of the embedded model, named like it: its weights get perturbed below
    "--infer-suite=parity,generation",
    "--infer-technique=eager,sdpa,planted",
    "--infer-new-tokens=8",
    "--infer-padding=left:0",
    "--infer-golden=goldens",
    "-rA",
)


def outcomes(report: Path) -> dict[str, str]:
    doc = json.loads(report.read_text())
    return {t["nodeid"].split("::")[-1]: t["outcome"] for t in doc["tests"]}


def golden_file(root: Path, technique: str, check: str) -> Path:
    (found,) = root.glob(f"goldens/tiny-llama/*/float32/{technique}.{check}.json")
    return found


def edit_generation(path: Path, row: int, step: int, margin: float) -> None:
    """The golden took another token at ``step`` of ``row``, with this margin (as if a previous run had)."""
    doc = json.loads(path.read_text())
    doc["generation"]["tokens"][row][step] += 1
    doc["generation"]["margins"][row][step] = margin
    path.write_text(dumps(doc) + "\n")


def test_record_compare_plant_perturb_regenerate(pytester: pytest.Pytester, run_infer, monkeypatch) -> None:
    shutil.copytree(embedded_model_path(), pytester.path / "tiny-llama")
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\n")

    # 1. record: every key of the run, the reference's included, listed as written
    result = run_infer(*ARGS, "--infer-golden-record", "--infer-report=record.json")
    assert result.ret == 0, result.stdout.str()
    written = sorted(p.name for p in (pytester.path / "goldens").rglob("*.json"))
    assert written == sorted(f"{t}.{c}.json" for t in ("eager", "sdpa", "planted") for c in ("logits", "generation"))
    result.stdout.fnmatch_lines(["*pytest-infer: goldens*", "recorded reference eager logits (float32, cpu): *"])
    assert all(p.stat().st_size < 40_000 for p in (pytester.path / "goldens").rglob("*.json"))

    # 2. unchanged, and sdpa's golden took another token at a recorded near-tie: everything passes
    edit_generation(golden_file(pytester.path, "sdpa", "generation"), row=3, step=2, margin=0.0001)
    result = run_infer(*ARGS, "--infer-report=clean.json")
    assert result.ret == 0, result.stdout.str()
    assert set(outcomes(pytester.path / "clean.json").values()) == {"passed"}
    result.stdout.fnmatch_lines(
        ["*golden generation passed: sdpa (float32, cpu) matches its golden: *1 stopped at recorded near-ties*"]
    )

    # 3. one technique changes; a decisive token differs; a golden is truncated, one is from the future; a key has
    #    no golden (strict): each fails for its own reason, the others pass
    edit_generation(golden_file(pytester.path, "sdpa", "generation"), row=3, step=2, margin=5.0)
    truncated = golden_file(pytester.path, "planted", "generation")
    truncated.write_text(truncated.read_text()[:500])
    future = golden_file(pytester.path, "sdpa", "logits")
    doc = json.loads(future.read_text())
    doc["format_version"] = 99
    future.write_text(json.dumps(doc))
    kept = {p: p.read_bytes() for p in (truncated, future)}
    monkeypatch.setenv("INFER_PLANT", "1")
    result = run_infer(
        *ARGS, "--infer-technique=eager,sdpa,planted,sdpa_math", "--infer-strict", "--infer-report=planted.json"
    )
    ran = outcomes(pytester.path / "planted.json")
    assert ran["test_logits_golden[cpu-float32-eager]"] == ran["test_generation_golden[cpu-float32-eager]"] == "passed"
    for failing in (
        "test_logits_golden[cpu-float32-planted]",
        "test_generation_golden[cpu-float32-planted]",
        "test_logits_golden[cpu-float32-sdpa]",
        "test_generation_golden[cpu-float32-sdpa]",
        "test_logits_golden[cpu-float32-sdpa_math]",
    ):
        assert ran[failing] == "failed", failing
    assert ran["test_logit_parity[cpu-float32-planted]"] == "failed"  # 1.001 is past parity's bound too
    out = result.stdout.str()
    assert re.search(
        r"golden logits FAILED: planted \(float32, cpu\) moved: max_abs \S+ at row \d+, position \d+.*no recorded "
        r"version, model file, tokenizer or device changed",
        out,
    )
    assert re.search(r"the reference eager \(float32\) matches its golden \(max_abs [^)]*\): only planted moved", out)
    assert "golden generation FAILED: sdpa (float32, cpu) moved: 1 of 8 prompts diverged; first row 3 at step 2" in out
    assert f"golden {truncated}: not valid JSON" in out
    assert f"golden {future}: format version 99, written by a newer pytest-infer" in out
    assert re.search(
        r"--infer-strict: no golden of sdpa_math logits \(float32\) for stack class cpu-\S+: .* does not exist\. "
        r"Record it: pytest -p pytest_infer --infer-suite parity --infer-golden \S+ --infer-golden-record "
        r"--infer-technique sdpa_math --infer-dtype float32 --infer-device cpu --infer-model \S+tiny-llama",
        out,
    )
    monkeypatch.delenv("INFER_PLANT")

    # pytest-infer compare of the clean and the planted run: the newly failing tests, exit 1, Markdown for a summary
    summary = pytester.path / "compare.md"
    assert main(["compare", "clean.json", "planted.json", "--markdown", str(summary), "--json", "compare.json"]) == 1
    text = summary.read_text()
    assert "**" in text and "regressions** (tests newly failing" in text
    assert re.search(
        r"- `cpu-\S+` planted \(float32\): test_parity.py::test_logit_parity\[cpu-float32-planted\]: passed -> failed",
        text,
    )
    assert "test_parity_golden.py::test_logits_golden[cpu-float32-planted]: passed -> failed" in text
    assert "| golden | logits | max_abs |" in text.replace("`", "")  # the metrics that moved, golden's included
    assert main(["compare", "clean.json", "clean.json"]) == 0

    # 4. a weight of the reference's model moves by 1e-3 (recording: existing goldens are compared, unusable ones
    #    kept as they are): the reference is named as what moved, with the file that changed
    from safetensors.torch import load_file, save_file

    weights = pytester.path / "tiny-llama" / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.layers.1.mlp.down_proj.weight"] += 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    result = run_infer(*ARGS, "--infer-golden-record")
    out = result.stdout.str()
    assert re.search(
        r"golden logits FAILED: reference eager \(float32, cpu\) moved: max_abs \S+ at row \d+, position \d+.*"
        r"model file model.safetensors \w+ -> \w+",
        out,
    )
    assert "the reference eager (float32) moved too" in out
    assert all(p.read_bytes() == content for p, content in kept.items())

    # 5. regenerate on purpose: rewritten with what changed; the unreadable one replaced, the future one refused
    result = run_infer(*ARGS, "--infer-golden-regen")
    out = result.stdout.str()
    assert re.search(r"REWROTE  reference eager logits \(float32, cpu\): \S+eager.logits.json", out)
    assert re.search(r"before: it had moved: max_abs \S+ at row", out)
    assert "since: model file model.safetensors" in out
    assert f"REWROTE  planted generation (float32, cpu): {truncated}" in out and "replaced an unreadable golden" in out
    assert future.read_bytes() == kept[future]
    assert result.parseoutcomes()["failed"] == 1  # sdpa's logits: a newer format is never overwritten


def test_a_golden_of_another_stack_class_is_never_used(pytester: pytest.Pytester, run_infer) -> None:
    """Goldens recorded here, then a run that believes it is on another CPU ISA: not found, skipped with the
    command that records them, naming the stack classes the folder has."""
    base = (
        "--infer-suite=parity",
        "--infer-technique=sdpa",
        "--infer-golden=goldens",
        "-k",
        "test_logits_golden",
        "-rs",
    )
    result = run_infer(*base, "--infer-golden-record")
    assert result.ret == 0, result.stdout.str()
    (here,) = [p.name for p in (pytester.path / "goldens" / "tiny-llama").iterdir()]
    pytester.makeconftest(
        "import torch\ntorch.backends.cpu.get_cpu_capability = lambda: 'AVX512_FAKE'  # another CPU class, faked\n"
    )
    result = run_infer(*base)
    assert result.ret == 0, result.stdout.str()
    counts = result.parseoutcomes()
    assert counts.get("skipped") == 1 and "passed" not in counts and "failed" not in counts, counts
    result.stdout.fnmatch_lines(
        [
            f"SKIPPED * no golden of sdpa logits (float32) for stack class cpu-*-avx512_fake: * does not exist; "
            f"*/goldens has goldens of tiny-llama for {here} only. Record it: pytest -p pytest_infer --infer-suite parity "
            "--infer-golden */goldens --infer-golden-record --infer-technique sdpa --infer-dtype float32 --infer-device cpu"
        ]
    )

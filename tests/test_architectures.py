"""The architecture matrix: every config in fixtures/configs (random weights, initializer range 0.2 so logits are
peaked, the embedded tokenizer) runs the parity and generation suites for a technique of each family, loaded
through from_pretrained(local_path). Zero unexplained failures: every case passes, is skipped with the reason this
architecture cannot take it (decided before loading), or is a strict xfail keyed to an upstream defect. A new
architecture is added by dropping a config file in fixtures/configs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_infer.runtime import architectures

# one or two techniques per family: attention, caches (a quantized one: the group-size and layer-kind rules),
# weight quantization (quanto: QLinear; torchao: the weight swapped in place), continuous batching
TECHNIQUES = "eager,sdpa,static_cache,quantized_cache_quanto_4bit,quanto_int8,torchao_int8_weight_only,paged|sdpa"
# skips that are not about the architecture: a technique's runner has no such check
BY_DESIGN = re.compile(
    r"runs under (generate|generate_batch): its outputs are compared token by token"
    r"|does not quantize its cache: nothing to simulate"
)


@pytest.mark.parametrize("name", architectures.available())
def test_architecture_matrix(
    name: str, tmp_path_factory: pytest.TempPathFactory, pytester: pytest.Pytester, run_infer
) -> None:
    model = architectures.build(name, tmp_path_factory.getbasetemp() / "models")
    result = run_infer(
        f"--infer-model={model}",
        "--infer-suite",
        "parity,generation",
        "--infer-technique",
        TECHNIQUES,
        "--infer-new-tokens",
        "8",
        "--infer-padding",
        "left:0,7;right:0",
        "--infer-report=report.json",
    )
    doc = json.loads((pytester.path / "report.json").read_text())
    outcomes = doc["tests"]
    failed = [t["nodeid"] for t in outcomes if t["outcome"] in ("failed", "error", "xpassed")]
    assert not failed, f"{name}: unexplained failures {failed}\n{result.stdout.str()[-6000:]}"
    class_name = json.loads((Path(model) / "config.json").read_text())["architectures"][0]
    for t in outcomes:
        reason = t.get("reason", "")
        if t["outcome"] == "skipped" and not BY_DESIGN.search(reason):
            # an architecture limit names the model class; anything else is a requirement of the stack
            assert class_name in reason or "needs " in reason or "not installed" in reason, (t["nodeid"], reason)
        if t["outcome"] == "xfailed":
            assert reason.startswith("known upstream defect:"), (t["nodeid"], reason)
    ran = {t["nodeid"] for t in outcomes if t["outcome"] == "passed"}
    assert any("[cpu-float32-eager]" in n for n in ran), f"{name}: the reference technique itself did not run"

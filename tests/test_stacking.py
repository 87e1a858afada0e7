"""Stacked techniques across families run through the same checks as their parts; contradictory stacks are
rejected at start-up with the reason."""

from __future__ import annotations

import pytest


def test_quantization_stacked_with_attention_and_caches(run_infer) -> None:
    result = run_infer(
        "--infer-suite",
        "parity,generation",
        "--infer-technique",
        "bnb_8bit+sdpa,quanto_int8+static_cache,sdpa+quantized_cache_quanto_4bit",
        "--infer-new-tokens",
        "24",
    )
    # bnb_8bit+sdpa: logits, padding, generation, storage, inference mode, kernel parity, quality (7)
    # quanto_int8+static_cache: generation, storage, inference mode, 3 cache checks, kernel parity, quality, cache
    # quality (9; its static cache quantizes nothing: no cache kernel parity, a skip)
    # sdpa+quantized_cache_quanto_4bit: generation, 3 cache checks, cache kernel parity, cache quality (6);
    # the generate-only stacks skip logits/padding
    result.assert_outcomes(passed=22, skipped=5)
    out = result.stdout.str()
    for stack in ("bnb_8bit+sdpa", "quanto_int8+static_cache", "sdpa+quantized_cache_quanto_4bit"):
        assert stack in out


@pytest.mark.parametrize(
    ("stack", "why"),
    [
        ("bnb_8bit+quanto_int8", "both set from_pretrained quantization_config"),
        (
            "static_cache+quantized_cache_quanto_4bit",
            "both set generate cache_implementation ('static' vs 'quantized')",
        ),
        ("sdpa+eager", "both set from_pretrained attn_implementation"),
    ],
)
def test_contradictory_stacks_are_rejected_at_start_up(run_infer, stack: str, why: str) -> None:
    result = run_infer("--infer-suite", "parity", "--infer-technique", stack)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"contradictory stack {stack}: {why}" in result.stderr.str()
    assert "Traceback" not in result.stderr.str()

"""Logit parity of every selected technique against the reference (``--infer-suite parity``).

Parametrized by pytest-infer over device x dtype x technique: ``test_logit_parity[cpu-float32-sdpa]``.
"""

from __future__ import annotations

import pytest


def _forward_only(case) -> None:
    if case.technique.runner not in ("forward", "multiprocess"):
        pytest.skip(
            f"{case.technique.name} runs under {case.technique.runner}: "
            "its outputs are compared token by token in --infer-suite generation"
        )


def test_logit_parity(infer_case, infer_parity):
    """The prompt batch (left padded) against the reference, at every real position."""
    _forward_only(infer_case)
    infer_parity.assert_logits(infer_case)


def test_padded_batches(infer_case, infer_parity):
    """Left and right padding over a sweep of pad lengths: each padded row against the same prompt run
    alone by the reference; every value, pad positions included, scanned for NaN/Inf."""
    _forward_only(infer_case)
    if infer_case.technique.runner == "multiprocess":
        pytest.skip(
            f"{infer_case.technique.name} runs in its ranks: padding sweeps are not run there "
            "(logits, generation and rank agreement are)"
        )
    if not infer_case.technique.padded_batches:
        pytest.skip(f"{infer_case.technique.name} takes no attention mask: its prompts always run unpadded")
    infer_parity.assert_padding(infer_case)

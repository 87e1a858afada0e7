"""Batch invariance of every selected technique (``--infer-suite parity``): the same prompt alone, in batches of
2 to 8 and at different rows gives the same logits, within the batch noise floor (bit for bit for a technique
that promises it: ``Technique(batch_invariant=True)``)."""

from __future__ import annotations

import pytest


def test_batch_invariance(infer_case, infer_parity):
    technique = infer_case.technique
    if technique.runner != "forward":
        pytest.skip(f"{technique.name} runs under {technique.runner}: batch invariance is checked on plain forwards")
    if not technique.padded_batches:
        pytest.skip(f"{technique.name} runs each prompt alone (no attention mask): nothing is batched")
    infer_parity.assert_batch_invariance(infer_case)

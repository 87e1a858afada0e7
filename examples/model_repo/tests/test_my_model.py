"""The repository's own checks, through pytest-infer's fixtures (they run next to the bundled suites)."""

from __future__ import annotations

import pytest


@pytest.mark.infer_techniques("chunked_attention")
@pytest.mark.infer_tolerance(max_abs=5e-5)  # tighter than pyproject.toml, for this test only
def test_chunked_attention_logits(infer_case, infer_parity):
    result = infer_parity.assert_logits(infer_case)
    assert result.metrics["top1"] == 1.0
    assert result.metrics["cosine"] > 0.999999


@pytest.mark.infer_techniques("chunked_attention")
def test_model_runs_the_chunked_kernel(infer_case, infer_model_loader):
    model = infer_model_loader(infer_case)
    assert model.config._attn_implementation == "chunked_attention"

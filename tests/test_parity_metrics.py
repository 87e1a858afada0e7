"""Unit tests of the logit-parity metrics and their verdicts."""

from __future__ import annotations

import json

import pytest
import torch

from pytest_infer.core.tolerance import Tolerance
from pytest_infer.parity.logits import compare_logits

STRICT = Tolerance(max_abs=1e-3, mean_abs=1e-4, max_kl=1e-6, min_cosine=0.9999, min_top1=1.0, tie_margin=0.01)


def _compare(ref, cand, mask, tol=STRICT, prompts=("first prompt", "second prompt")):
    return compare_logits(
        ref,
        cand,
        mask,
        tol,
        technique="cand",
        reference_name="eager",
        device="cpu",
        dtype="float32",
        reference_dtype="float32",
        prompts=prompts,
    )


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 5, 32, generator=g) * 4
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    return ref, mask


def test_identical_logits_pass_with_zero_error(logits) -> None:
    ref, mask = logits
    r = _compare(ref, ref.clone(), mask)
    assert r.passed and r.failures == []
    assert r.metrics["max_abs"] == 0 and r.metrics["max_kl"] == 0 and r.metrics["top1"] == 1.0
    assert [row.positions for row in r.rows] == [3, 5]
    json.dumps(r.to_dict())


def test_padded_positions_are_not_compared(logits) -> None:
    ref, mask = logits
    cand = ref.clone()
    cand[0, :2] += 100.0  # garbage where row 0 is padding
    assert _compare(ref, cand, mask).passed


def test_error_is_located_at_its_row_and_position(logits) -> None:
    ref, mask = logits
    cand = ref.clone()
    cand[1, 3, 7] += 0.5
    r = _compare(ref, cand, mask)
    assert not r.passed
    assert r.metrics["max_abs"] == pytest.approx(0.5)
    assert any("max_abs 0.5 > 0.001 at row 1 ('second prompt'), position 3" in f for f in r.failures), r.failures
    text = r.message()
    assert "logit parity FAILED: cand (float32) vs reference eager (float32) on cpu" in text
    assert "FAIL" in text


def test_nan_anywhere_in_real_positions_fails(logits) -> None:
    ref, mask = logits
    cand = ref.clone()
    cand[0, 4, 0] = float("nan")
    r = _compare(ref, cand, mask, Tolerance(min_top1=None))
    assert not r.passed
    assert r.nonfinite == [(0, 4, "real")]
    assert "first at row 0, position 4 (real position)" in r.failures[0]


def test_nan_at_a_pad_position_fails_too(logits) -> None:
    ref, mask = logits
    cand = ref.clone()
    cand[0, 1, 3] = float("inf")  # row 0 is padded at positions 0-1
    r = _compare(ref, cand, mask, Tolerance(min_top1=None))
    assert not r.passed and r.nonfinite == [(0, 1, "pad")]
    assert "(pad position)" in r.failures[0]


def test_top1_only_counts_decisive_positions() -> None:
    ref = torch.tensor([[[2.0, 1.999, 0.0], [5.0, 0.0, 0.0]]])
    cand = torch.tensor([[[1.999, 2.0, 0.0], [5.0, 0.0, 0.0]]])  # near-tie flipped
    mask = torch.ones(1, 2)
    tol = Tolerance(min_top1=1.0, tie_margin=0.01)
    r = _compare(ref, cand, mask, tol, prompts=("p",))
    assert r.passed and r.rows[0].decisive == 1
    r = _compare(ref, cand, mask, Tolerance(min_top1=1.0, tie_margin=0.0), prompts=("p",))
    assert not r.passed and "top1 0.5 < 1" in r.failures[0]


def test_kl_and_cosine_bounds(logits) -> None:
    ref, mask = logits
    cand = ref * 1.05  # sharper distributions: KL > 0, cosine still 1
    r = _compare(ref, cand, mask, Tolerance(max_kl=1e-6, min_cosine=0.9999, min_top1=None))
    assert r.metrics["cosine"] == pytest.approx(1.0)
    assert [f.split()[0] for f in r.failures] == ["max_kl"]


def test_shape_mismatch_is_a_clear_error(logits) -> None:
    ref, mask = logits
    with pytest.raises(ValueError, match="logit shapes differ"):
        _compare(ref, ref[:, :4], mask)

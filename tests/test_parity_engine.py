"""Unit tests of generation comparison, noise-floor tolerances, layer localisation and per-stack values."""

from __future__ import annotations

import pytest
import torch

from pytest_infer.core.stack import ByStack, Stack
from pytest_infer.core.tolerance import Tolerance
from pytest_infer.parity.floor import FLOOR_MULTIPLE, NoiseFloor, floor_tolerance
from pytest_infer.parity.generation import compare_generations
from pytest_infer.parity.padding import PadPoint, padded_batch, parse_sweep
from pytest_infer.runtime.generated import Generated


class Tok:
    pad_token_id = 0

    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)

    def __call__(self, text):
        return {"input_ids": [ord(c) for c in text]}


def _compare(ref, cand, near_tie=0.5, n=4):
    return compare_generations(
        ref,
        cand,
        Tok(),
        near_tie=near_tie,
        new_tokens=n,
        technique="t",
        reference_name="r",
        device="cpu",
        dtype="float32",
        reference_dtype="float32",
        prompts=["p0: ", "p1: "],
    )


def test_identical_generations_match() -> None:
    g = Generated([[1, 2, 3, 4], [5, 6, 7, 8]], [[3.0] * 4, [3.0] * 4])
    r = _compare(g, g)
    assert r.passed and r.metrics["match_rate"] == 1.0


def test_divergence_at_a_near_tie_is_accepted_and_stops_the_comparison() -> None:
    ref = Generated([[1, 2, 3, 4], [5, 6, 7, 8]], [[3.0, 0.1, 3.0, 3.0], [3.0] * 4])
    cand = Generated([[1, 9, 9, 9], [5, 6, 7, 8]], [[3.0, 0.05, 1.0, 1.0], [3.0] * 4])
    r = _compare(ref, cand)
    assert r.passed
    assert r.rows[0].status == "near_tie" and r.rows[0].step == 1 and r.rows[0].compared == 1
    assert "row 0: near-tie at step 1 (reference margin 0.1 < 0.5)" in r.message()


def test_decisive_divergence_fails_with_step_tokens_margins_and_text() -> None:
    ref = Generated([[1, 2, 3, 4], [5, 6, 7, 8]], [[3.0] * 4, [3.0, 3.0, 2.5, 3.0]])
    cand = Generated([[1, 2, 3, 4], [5, 6, 9, 8]], [[3.0] * 4, [3.0, 3.0, 1.5, 3.0]])
    r = _compare(ref, cand)
    assert not r.passed
    (failure,) = r.failures
    assert failure == (
        "row 1 diverged at step 2: reference 7 '<7>' (margin 2.5) vs candidate 9 '<9>' (margin 1.5); "
        "near-tie threshold 0.5; text so far: 'p1: <5><6>'"
    )


def test_short_candidate_fails() -> None:
    ref = Generated([[1, 2, 3, 4]], None)
    cand = Generated([[1, 2]], None)
    r = _compare(ref, cand)
    assert r.failures == ["row 0: candidate produced 2 of 4 tokens"]


def test_floor_tightens_the_table_within_bounds() -> None:
    table = Tolerance(max_abs=1e-3, mean_abs=1e-4, max_kl=1e-6, tie_margin=1e-3)
    floor = NoiseFloor(
        "float32", "cpu", max_abs=2e-5, max_kl=1e-11, flip_margin=0.0, dtype_max_abs=0.0, batch_max_abs=2e-5
    )
    tol = floor_tolerance(table, floor)
    assert tol.max_abs == pytest.approx(FLOOR_MULTIPLE * 2e-5)
    assert tol.max_kl == pytest.approx(1e-7)  # never below a tenth of the table
    assert tol.mean_abs == 1e-4  # means keep the table
    loud = NoiseFloor(
        "bfloat16", "cpu", max_abs=0.4, max_kl=1e-2, flip_margin=0.3, dtype_max_abs=0.4, batch_max_abs=0.1
    )
    tol = floor_tolerance(Tolerance(max_abs=1.5, max_kl=5e-2, tie_margin=0.4), loud)
    assert tol.max_abs == 1.5 and tol.max_kl == 5e-2  # never above the table
    assert tol.tie_margin == pytest.approx(0.6)  # twice the largest flip margin seen in the reference itself
    assert floor_tolerance(table, floor, fixed=frozenset({"max_abs"})).max_abs == 1e-3


def test_by_stack_best_match_wins() -> None:
    h100 = Stack(device_kind="cuda", device_name="H100", compute_capability=(9, 0))
    a100 = Stack(device_kind="cuda", device_name="A100", compute_capability=(8, 0))
    cpu = Stack(device_kind="cpu", device_name="cpu")
    values = ByStack({"default": 1, "cuda": 2, "cuda:9": 3, "cuda:9.0": 4})
    assert values.select(h100) == 4 and values.select(a100) == 2 and values.select(cpu) == 1
    assert ByStack({"cuda": 2}).select(cpu) is None


def test_padding_sweep_parsing_and_batches() -> None:
    assert parse_sweep("left:0,3;right:2") == (PadPoint("left", 0), PadPoint("left", 3), PadPoint("right", 2))
    for bad in ("middle:1", "left:x", "left", ""):
        with pytest.raises(ValueError):
            parse_sweep(bad)
    b = padded_batch(Tok(), ["ab", "abcd"], PadPoint("left", 2), "cpu")
    assert b.attention_mask.tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]]
    b = padded_batch(Tok(), ["ab", "abcd"], PadPoint("right", 1), "cpu")
    assert b.attention_mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]
    assert b.input_ids[0].tolist() == [97, 98, 0, 0, 0]


def test_localization_names_the_first_module_beyond_its_threshold() -> None:
    from pytest_infer.core.technique import Technique
    from pytest_infer.parity.localize import first_divergence
    from pytest_infer.runtime.batch import Batch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = torch.nn.Linear(4, 4)

        def forward(self, x):
            return x + self.mlp(x)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.layers = torch.nn.ModuleList([Block() for _ in range(3)])

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            x = input_ids.float().unsqueeze(-1).expand(*input_ids.shape, 4)
            for layer in self.layers:
                x = layer(x)
            return type("Out", (), {"logits": x})()

    ref, cand = Model(), Model()
    with torch.no_grad():
        cand.layers[1].mlp.bias += 0.5
    t = Technique(name="t", family="custom")
    batch = Batch(torch.tensor([[1, 2, 3]]), torch.ones(1, 3), ("x",))
    text = first_divergence(ref, t, cand, t, batch, "float32")
    assert text.startswith("first diverging layer: layers.1 (in its mlp): relative error")
    assert "every module before it stayed within 0" in text
    assert "no decoder layer parted" in first_divergence(ref, t, Model(), t, batch, "float32")


def test_result_le_tolerance_and_assertrepr(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch
        from pytest_infer import Tolerance, compare_logits

        def test_compare():
            ref = torch.tensor([[[4.0, 1.0, 0.0, 0.0], [4.0, 1.0, 0.0, 0.0]]])
            cand = ref.clone(); cand[0, 1, 2] = 0.5
            r = compare_logits(ref, cand, torch.ones(1, 2), Tolerance(), technique="mine", reference_name="eager",
                               device="cpu", dtype="float32", reference_dtype="float32")
            assert r <= Tolerance(max_abs=1.0)
            assert r <= Tolerance(max_abs=0.1)
        """
    )
    result = pytester.runpytest_subprocess("-p", "pytest_infer")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*logit parity of mine does not stay within the tolerance:*", "*max_abs*0.5*<= 0.1*FAIL*"]
    )

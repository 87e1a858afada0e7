"""Lossy techniques judged twice (issue 17): the kernel against its own format, and what the format costs.

Unit tests of the pieces (the paired perplexity ratio, greedy agreement, the simulated quantized cache against the
real one, kernel parity on a real quantized model with and without a planted fault); the sessions that meet them as
users do are in tests/test_quantization.py."""

from __future__ import annotations

import math

import pytest

from pytest_infer.checks.quality import greedy_agreement
from pytest_infer.core.expectation import Expectation
from pytest_infer.parity.quality import Interval, QualityResult, paired_ratio


def test_paired_ratio_is_the_exponent_of_the_mean_difference_with_a_t_interval() -> None:
    same = paired_ratio([2.0, 2.5, 3.0], [2.0, 2.5, 3.0])
    assert (same.ratio, same.low, same.high, same.worst_chunk) == (1.0, 1.0, 1.0, 1.0)
    shifted = paired_ratio([2.01, 2.52, 3.03], [2.0, 2.5, 3.0])  # +0.01, +0.02, +0.03
    assert shifted.ratio == pytest.approx(math.exp(0.02))
    # t(2) = 4.303, stdev 0.01, n 3: half-width 0.0248
    assert shifted.low == pytest.approx(math.exp(0.02 - 4.303 * 0.01 / math.sqrt(3)), rel=1e-4)
    assert shifted.high == pytest.approx(math.exp(0.02 + 4.303 * 0.01 / math.sqrt(3)), rel=1e-4)
    assert shifted.worst_chunk == pytest.approx(math.exp(0.03))
    assert math.isinf(paired_ratio([1.0], [0.5]).high)  # one chunk decides nothing


def _result(low: float, high: float, budget: float | None = 1.05) -> QualityResult:
    return QualityResult(
        technique="t", reference="eager", device="cpu", dtype="float32", mode="forward", text="prose", tokens=2560,
        perplexity=10.0, reference_perplexity=9.9, interval=Interval((low + high) / 2, low, high, high, 20),
        greedy_agreement=0.9, greedy_tokens=64,
        budget=None if budget is None else Expectation("perplexity_ratio", "<=", budget), budget_source=" (test)",
    )  # fmt: skip


def test_quality_is_decided_on_the_interval_against_the_budget() -> None:
    assert _result(1.01, 1.03).verdict == "pass"
    straddles = _result(1.03, 1.07)
    assert straddles.verdict == "inconclusive" and "straddles the budget" in straddles.message()
    beyond = _result(1.06, 1.09)
    assert beyond.verdict == "fail" and not beyond.passed
    assert "lies wholly beyond the budget perplexity_ratio <= 1.05 (test)" in beyond.message()
    assert _result(1.5, 2.0, budget=None).passed  # no budget: measured, reported, not judged
    nan = _result(float("nan"), float("nan"))
    assert nan.verdict == "fail"
    doc = beyond.to_dict()
    assert doc["check"] == "quality" and doc["verdict"] == "fail" and doc["budget"]["value"] == 1.05
    assert doc["metrics"]["perplexity_ratio_high"] == 1.09


def test_greedy_agreement_counts_tokens_before_the_first_divergence() -> None:
    assert greedy_agreement([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == 1.0
    assert greedy_agreement([[1, 2, 9, 4]], [[1, 2, 3, 4]]) == 0.5  # the 4 after the divergence does not count
    assert greedy_agreement([[1, 2], [5, 6]], [[1, 2], [7, 6]]) == 0.5


@pytest.fixture(scope="module")
def tiny() -> tuple[object, object]:
    pytest.importorskip("optimum.quanto")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_infer.core.resources import embedded_model_path

    path = embedded_model_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(path)


def _batch(tokenizer: object) -> object:
    from pytest_infer.runtime.batch import encode

    return encode(tokenizer, ["The capital of France is", "def fibonacci(n):"], "cpu")


@pytest.mark.parametrize("config", [{"backend": "quanto", "nbits": 4, "residual_length": 4, "q_group_size": 32}])
def test_the_simulated_cache_reproduces_the_real_quantized_cache_and_catches_a_lost_residual(
    tiny: tuple[object, object], config: dict[str, object]
) -> None:
    from pytest_infer.core.technique import Technique
    from pytest_infer.parity.kernel import compare_cache_runs
    from pytest_infer.runtime.simulated_cache import generate_logits, quantized_cache, simulated_cache

    model, tokenizer = tiny
    technique = Technique(
        name="q", family="caching", generate_kwargs={"cache_implementation": "quantized", "cache_config": config}
    )
    batch = _batch(tokenizer)
    real = generate_logits(model, tokenizer, batch, technique, 16)
    twin = generate_logits(model, tokenizer, batch, technique, 16, simulated_cache(quantized_cache(model, config)))
    same = compare_cache_runs(real, twin, technique="q", device="cpu", dtype="float32", what="test", floor=1.2e-7)
    assert same.passed, same.message()
    assert same.compared_steps >= 2 * 16 - 2
    broken = simulated_cache(quantized_cache(model, config), fault="no_residual")
    lost = generate_logits(model, tokenizer, batch, technique, 16, broken)
    caught = compare_cache_runs(real, lost, technique="q", device="cpu", dtype="float32", what="test", floor=1.2e-7)
    assert not caught.passed and "FAILED" in caught.message()


def test_kernel_parity_passes_a_real_int8_model_and_names_a_planted_layer(tiny: tuple[object, object]) -> None:
    from transformers import AutoModelForCausalLM, QuantoConfig

    from pytest_infer.core.resources import embedded_model_path
    from pytest_infer.parity.kernel import kernel_parity

    model = AutoModelForCausalLM.from_pretrained(
        embedded_model_path(), dtype="float32", quantization_config=QuantoConfig(weights="int8")
    ).eval()
    ids = tiny[1](["The capital of France is"], return_tensors="pt").input_ids  # type: ignore[operator]

    def run(m: object) -> object:
        return lambda: m(input_ids=ids)  # type: ignore[operator]

    good = kernel_parity(model, run(model), technique="quanto_int8", device="cpu", dtype="float32")
    assert good.passed and len(good.layers) >= 7, good.message()
    assert good.worst is not None and good.worst.relative_error <= good.worst.bound
    # registered before kernel parity's own hook, so that hook sees the planted output
    planted = model.model.layers[1].mlp.down_proj.register_forward_hook(
        lambda _m, _a, out: out + 1e-3 * out.abs().max()
    )
    try:
        bad = kernel_parity(model, run(model), technique="quanto_int8", device="cpu", dtype="float32")
    finally:
        planted.remove()
    assert not bad.passed
    assert "layer model.layers.1.mlp.down_proj (quanto)" in bad.message()
    assert all("layers.1.mlp.down_proj" in f for f in bad.failures)  # only the planted layer is blamed

"""Checks of the quantization techniques beyond parity (``--infer-suite parity``): the weights really
are stored smaller, by the ratio the technique promises, and the model works in inference mode."""

from __future__ import annotations


def test_weight_storage(quantization_technique, infer_parity):
    """Real bytes (quantized tensor subclasses unwrapped) vs. the unquantized reference in the same dtype."""
    infer_parity.assert_storage(quantization_technique)


def test_inference_mode(quantization_technique, infer_parity):
    """Logits under torch.inference_mode() equal the technique's own logits under no_grad."""
    infer_parity.assert_inference_mode(quantization_technique)


def test_kernel_parity(quantization_technique, infer_parity):
    """Each quantized layer computes what its format stores: its real output against the exact product of its input
    (quantize-dequantized where the scheme quantizes activations) and its weight decoded from the stored codes,
    within 10x the float noise of that product (docs/tolerances.md, "Two verdicts")."""
    infer_parity.assert_kernel(quantization_technique)


def test_quality(quantization_technique, infer_parity, benchmark):
    """What the format costs: perplexity ratio on the held-out text (--infer-quality-text) against the reference,
    with its 95 % interval over chunks, and greedy agreement, against the technique's budget."""
    infer_parity.assert_quality(quantization_technique, "forward", benchmark)

"""Checks of the quantization techniques beyond parity (``--infer-suite parity``): the weights really
are stored smaller, by the ratio the technique promises, and the model works in inference mode."""

from __future__ import annotations


def test_weight_storage(quantization_technique, infer_parity):
    """Real bytes (quantized tensor subclasses unwrapped) vs. the unquantized reference in the same dtype."""
    infer_parity.assert_storage(quantization_technique)


def test_inference_mode(quantization_technique, infer_parity):
    """Logits under torch.inference_mode() equal the technique's own logits under no_grad."""
    infer_parity.assert_inference_mode(quantization_technique)

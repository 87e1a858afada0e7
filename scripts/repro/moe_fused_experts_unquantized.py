"""Repro: Linear-only quantization leaves a mixture of experts' fused experts in full precision.
Seen with transformers 5.24.0 (torchao 0.18.0, optimum-quanto 0.2.7, bitsandbytes 0.50.2), torch 2.13.0+cpu.

    python scripts/repro/moe_fused_experts_unquantized.py

Transformers 5 stores Mixtral's experts as two 3-D parameters per layer (experts.gate_up_proj, experts.down_proj);
its quantizer integrations quantize nn.Linear weights only. Expected on an affected stack, for each scheme: the
attention projections quantized, every expert parameter still float32, and a covered fraction near 0.11 (the
experts hold ~89 % of the linear + expert weights of this tiny model, ~97 % of Mixtral-8x7B's).
"""

import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, QuantoConfig, TorchAoConfig

from pytest_infer.runtime.architectures import build
from pytest_infer.runtime.coverage import weight_coverage

folder = build("mixtral-tiny", Path(tempfile.mkdtemp()))
for name, config in (
    (
        "torchao int8 weight-only",
        lambda: TorchAoConfig(__import__("torchao.quantization", fromlist=["x"]).Int8WeightOnlyConfig()),
    ),
    ("quanto int8", lambda: QuantoConfig(weights="int8")),
):
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, device_map="cpu", quantization_config=config()
    )
    experts = model.model.layers[0].mlp.experts
    coverage = weight_coverage(model)
    print(
        f"{name}: experts.gate_up_proj {type(experts.gate_up_proj.data).__name__} {experts.gate_up_proj.dtype}; "
        f"covered fraction {coverage.covered_fraction:.3f}"
    )

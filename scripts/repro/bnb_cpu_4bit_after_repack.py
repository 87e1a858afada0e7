"""Repro: bitsandbytes 4-bit on a CPU with AVX512-BF16 computes in bfloat16 whatever the compute dtype asks.
Seen with bitsandbytes 0.50.2, kernels 0.17.2, torch 2.13.0+cpu.

    python scripts/repro/bnb_cpu_4bit_after_repack.py

The first forward of a Linear4bit repacks its weights for the AVX512-BF16 kernel
(functional._convert_weight_packed_for_cpu); every forward then goes through F.gemv_4bit, whose CPU kernel casts
the input and the scales to bfloat16 ("cpu fused op only support bf16 for now"), with compute_dtype float32.
Expected on an affected stack, against the float32 product of the input and the layer's own weights decoded from
its codes:

    first forward: relative error 0.00309 (weights repacked for the CPU kernel: True)
    second forward: relative error 0.00309 ...

On a CPU without AVX512-BF16: ~1e-7 (float32 compute). A trap found on the way: bitsandbytes'
_convert_weight_packed_for_cpu_inverse rewrites the QuantState it is given, so decoding a repacked layer's weights
with it must work on a copy (pytest_infer/runtime/dequantize.py), or the layer repacks its repacked weights at the
next forward and computes garbage (relative error 1.4).
"""

import logging

import bitsandbytes as bnb
import bitsandbytes.functional as F
import torch

logging.basicConfig(level=logging.WARNING)
print("avx512bf16:", F.has_avx512bf16(), "bitsandbytes", bnb.__version__, "torch", torch.__version__)
torch.manual_seed(0)
layer = bnb.nn.Linear4bit(256, 128, bias=False, compute_dtype=torch.float32, quant_type="nf4")
layer.weight = bnb.nn.Params4bit(torch.randn(128, 256) * 0.05, requires_grad=False, quant_type="nf4").to("cpu")
layer.eval()
weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
x = torch.randn(4, 256)
expected = x @ weight.T
for call in ("first", "second", "third"):
    with torch.inference_mode():
        out = layer(x).float()
    error = float((out - expected).norm() / expected.norm())
    packed = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    print(f"{call} forward: relative error {error:.3g} (weights repacked for the CPU kernel: {packed})")

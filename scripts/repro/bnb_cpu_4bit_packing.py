"""Repro: bitsandbytes 4-bit on a CPU with AVX512-BF16 fails on a layer whose input size is not a
multiple of 64 (the block size). Seen with bitsandbytes 0.50.2, torch 2.13.0+cpu, transformers 5.24.

    python scripts/repro/bnb_cpu_4bit_packing.py

Expected on an affected stack: RuntimeError: shape '[128, 5]' is invalid for input of size 704, raised
from bitsandbytes.functional._convert_weight_packed_for_cpu (absmax.reshape(out, in // blocksize)).
The same layer with in_features=384 works; on CUDA the flattened block layout handles any size.
"""

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import has_avx512bf16

print("avx512bf16:", has_avx512bf16(), "bitsandbytes", bnb.__version__, "torch", torch.__version__)
for in_features in (384, 352):
    layer = bnb.nn.Linear4bit(in_features, 128, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    # Params4bit quantizes when moved to a device
    layer.weight = bnb.nn.Params4bit(torch.randn(128, in_features), requires_grad=False, quant_type="nf4").to("cpu")
    layer.eval()
    try:
        with torch.no_grad():
            out = layer(torch.randn(2, in_features))
        print(f"in_features={in_features}: ok {tuple(out.shape)}")
    except RuntimeError as exc:
        print(f"in_features={in_features}: RuntimeError: {exc}")

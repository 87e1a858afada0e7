"""Repro: optimum-quanto int4 weights fail in torch.inference_mode (work under no_grad).
Seen with optimum-quanto 0.2.7, torch 2.13.0+cpu, transformers 5.24.

    python scripts/repro/quanto_int4_inference_mode.py

Expected on an affected stack: no_grad ok; inference_mode RuntimeError: Cannot set version_counter for
inference tensor (optimum/quanto/tensor/weights/qbits.py).
"""

import torch
from transformers import AutoModelForCausalLM, QuantoConfig

from pytest_infer.core.resources import embedded_model_path

model = AutoModelForCausalLM.from_pretrained(
    embedded_model_path(), dtype=torch.float32, device_map="cpu", quantization_config=QuantoConfig(weights="int4")
).eval()
ids = torch.tensor([[1, 5, 9, 42]])
for name, mode in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
    try:
        with mode():
            model(input_ids=ids)
        print(f"{name}: ok")
    except RuntimeError as exc:
        print(f"{name}: RuntimeError: {exc}")

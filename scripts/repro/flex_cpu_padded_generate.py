"""Repro: flex_attention + generate on a left-padded batch fails to compile on CPU.

torch 2.13.0+cpu, transformers 5.24.0, 2-core x86_64 (AVX-512), fresh inductor cache:
    InductorError: CppCompileError: ... error: 'cur_kvSplitSize0' was not declared in this scope
A batch of one prompt (no padding) generates fine; a plain forward of the padded batch is fine.
Run: TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python scripts/repro/flex_cpu_padded_generate.py
"""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pytest_infer.core.resources import default_prompts_file, embedded_model_path

path = str(embedded_model_path())
tok = AutoTokenizer.from_pretrained(path)
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="flex_attention").eval()
prompts = [p for p in default_prompts_file().read_text().splitlines() if p]
for rows in (prompts[:1], prompts):
    enc = tok(rows, return_tensors="pt", padding=True)
    try:
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
        print(f"batch of {len(rows)}: ok")
    except Exception as exc:  # the defect: C++ codegen of the flex template
        print(f"batch of {len(rows)}: {type(exc).__name__}: {str(exc).splitlines()[0]}")

"""Measure logit errors of the attention backends against float32 eager: the basis of the default tolerances.

Usage: python scripts/measure_tolerances.py [--model DIR] [--device cpu] [--dtypes float32,bfloat16,float16]
Prints one row per (dtype, technique): max/mean abs error, max/mean KL, min cosine, decisive top-1
agreement, and the smallest reference top-1/top-2 margin among positions where top-1 disagreed.
"""

from __future__ import annotations

import argparse

from pytest_infer.core.registry import Registry
from pytest_infer.core.resources import default_prompts_file, embedded_model_path
from pytest_infer.core.tolerance import Tolerance
from pytest_infer.parity.logits import compare_logits
from pytest_infer.runtime.batch import encode, forward_logits
from pytest_infer.runtime.loading import ModelSource, load_model, load_tokenizer
from pytest_infer.techniques import builtin_techniques


def main() -> None:
    import torch

    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(embedded_model_path()))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", default="float32,bfloat16,float16")
    p.add_argument("--techniques", default="eager,sdpa,sdpa_math,sdpa_flash,flex_attention")
    args = p.parse_args()
    reg = Registry(builtin_techniques())
    src = ModelSource(args.model)
    tok = load_tokenizer(src)
    prompts = [x for x in default_prompts_file().read_text().splitlines() if x.strip()]
    batch = encode(tok, prompts, args.device)
    eager = reg.get("eager")
    ref = forward_logits(load_model(src, eager, "float32", args.device), batch, eager)
    print(
        f"{'dtype':<9} {'technique':<15} {'max_abs':>9} {'mean_abs':>9} {'max_kl':>9} {'mean_kl':>9} {'cosine':>9} {'top1':>6} {'flip_margin':>11}"
    )
    for dtype in args.dtypes.split(","):
        for name in args.techniques.split(","):
            t = reg.get(name)
            if t.skip_reason(__import__("pytest_infer.core.detect", fromlist=["x"]).detect_stack(args.device), dtype):
                continue
            logits = forward_logits(load_model(src, t, dtype, args.device), batch, t)
            r = compare_logits(
                ref,
                logits,
                batch.attention_mask,
                Tolerance(min_top1=None),
                technique=name,
                reference_name="eager",
                device=args.device,
                dtype=dtype,
                reference_dtype="float32",
            )
            m = r.metrics
            real = batch.attention_mask.bool()
            rl, cl = ref[real], logits[real]
            top2 = rl.topk(2, dim=-1).values
            flips = rl.argmax(-1) != cl.argmax(-1)
            flip_margin = float((top2[:, 0] - top2[:, 1])[flips].max()) if flips.any() else float("nan")
            print(
                f"{dtype:<9} {name:<15} {m['max_abs']:>9.3g} {m['mean_abs']:>9.3g} {m['max_kl']:>9.2g} "
                f"{m['mean_kl']:>9.2g} {m['cosine']:>9.6f} {1 - flips.float().mean().item():>6.3f} {flip_margin:>11.3g}"
            )
            del logits
    torch.set_printoptions()


if __name__ == "__main__":
    main()

"""Report the embedded model's top-1/top-2 logit margins over the default prompts.

Usage: python scripts/model_margins.py [MODEL_DIR] [--new-tokens 32]
Prints the median margin at real prompt positions and over greedy continuations (docs/embedded-model.md).
"""

from __future__ import annotations

import argparse
import json
import statistics

from pytest_infer.core.resources import default_prompts_file, fixtures_dir


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default=str(fixtures_dir() / "tiny-llama"))
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    prompts = [p for p in default_prompts_file().read_text().splitlines() if p.strip()]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    prompt_margins: list[float] = []
    gen_margins: list[float] = []
    with torch.inference_mode():
        for p in prompts:
            ids = tok(p, return_tensors="pt")["input_ids"]
            top2 = model(input_ids=ids).logits[0].topk(2, dim=-1).values
            prompt_margins.extend((top2[:, 0] - top2[:, 1]).tolist())
            out = model.generate(
                ids,
                max_new_tokens=args.new_tokens,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
            )
            for s in out.scores:
                t2 = s[0].topk(2).values
                gen_margins.append(float(t2[0] - t2[1]))
    report = {
        "prompts": len(prompts),
        "prompt_positions": len(prompt_margins),
        "median_margin_prompt_positions": round(statistics.median(prompt_margins), 3),
        "generated_steps": len(gen_margins),
        "median_margin_greedy_steps": round(statistics.median(gen_margins), 3),
        "share_of_steps_with_margin_below_0.1": round(sum(m < 0.1 for m in gen_margins) / len(gen_margins), 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

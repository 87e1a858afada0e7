"""Validate the plugin's timer against a hand-written CUDA-event loop on the same model and call.

The plugin times a decode as :class:`pytest_infer.perf.timing.Timer` does in the perf suite (device synchronised
around the region, CUDA events on cuda), through :func:`pytest_infer.runtime.generation.greedy_generate`. The
hand-written loop calls ``model.generate`` directly between two ``torch.cuda.Event`` records. Both run the
same greedy decode of ``--new-tokens`` tokens, interleaved round by round; the medians must agree within
3 % and each side's coefficient of variation must stay at or under 2 % over ``--rounds`` rounds.

    python scripts/timer_validation.py --out timer.json                  # cuda, ~0.7 B llama, bf16
    python scripts/timer_validation.py --device cpu --tiny --out t.json  # dry run (perf_counter on CPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tiny", action="store_true", help="the embedded model instead of the 0.7 B llama")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from pytest_infer import architectures
    from pytest_infer.core.resources import embedded_model_path
    from pytest_infer.core.technique import Technique
    from pytest_infer.perf.timing import Timer
    from pytest_infer.runtime.batch import encode
    from pytest_infer.runtime.generated import never_token
    from pytest_infer.runtime.generation import greedy_generate
    from pytest_infer.runtime.loading import load_tokenizer

    tok_path = embedded_model_path()
    model_path = tok_path if args.tiny else Path(architectures.build("llama-700m", Path(tempfile.gettempdir())))
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=getattr(torch, args.dtype), attn_implementation="sdpa"
    ).to(args.device)
    model.eval()
    from pytest_infer.runtime.loading import ModelSource

    tokenizer = load_tokenizer(ModelSource(str(tok_path), False, False))
    from pytest_infer.core.resources import default_prompts_file

    prompts = [line for line in default_prompts_file().read_text(encoding="utf-8").splitlines() if line][:4]
    batch = encode(tokenizer, prompts, args.device)
    technique = Technique(name="sdpa", family="attention", load_kwargs={"attn_implementation": "sdpa"})
    eos = never_token(model, tokenizer)
    cuda = args.device.startswith("cuda")

    def plugin_round(into: list[float]) -> None:
        with Timer(args.device).region(into):
            greedy_generate(model, tokenizer, batch, technique, args.new_tokens, scores=False)

    def hand_round(into: list[float]) -> None:
        import time

        with torch.inference_mode():
            if cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=args.new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
                return_dict_in_generate=True,
                output_scores=False,
            )
            if cuda:
                end.record()
                torch.cuda.synchronize()
                into.append(start.elapsed_time(end) / 1000.0)
            else:
                into.append(time.perf_counter() - t0)

    scratch: list[float] = []
    for _ in range(args.warmup):
        plugin_round(scratch)
        hand_round(scratch)
    plugin: list[float] = []
    hand: list[float] = []
    for i in range(args.rounds):  # interleaved, alternating who goes first
        first, second = (plugin_round, hand_round) if i % 2 == 0 else (hand_round, plugin_round)
        first(plugin if first is plugin_round else hand)
        second(plugin if second is plugin_round else hand)

    def cv(xs: list[float]) -> float:
        return statistics.stdev(xs) / statistics.mean(xs)

    med_p, med_h = statistics.median(plugin), statistics.median(hand)
    result = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__,
        "model": str(model_path.name),
        "dtype": args.dtype,
        "new_tokens": args.new_tokens,
        "batch": len(prompts),
        "rounds": args.rounds,
        "plugin_s": plugin,
        "hand_s": hand,
        "plugin_median_s": med_p,
        "hand_median_s": med_h,
        "median_diff": abs(med_p - med_h) / med_h,
        "plugin_cv": cv(plugin),
        "hand_cv": cv(hand),
    }
    result["within_3pct"] = result["median_diff"] <= 0.03
    result["cv_ok"] = max(result["plugin_cv"], result["hand_cv"]) <= 0.02
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_s") or "median" in k}, indent=1))
    return 0 if result["within_3pct"] and result["cv_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

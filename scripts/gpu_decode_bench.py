"""Speed and memory of techniques on a larger, random-weight Llama built from a config (for GPU stacks).

Random weights are fine for speed and memory (they are not for parity: the embedded model does that).
Times are CUDA-event times with a synchronize (perf_counter + synchronize elsewhere); warm-up rounds are
excluded; the first call of a compiled path is reported apart as compile time. Writes one JSON document.

    python scripts/gpu_decode_bench.py --out bench.json            # ~0.7 B parameters, bf16, cuda
    python scripts/gpu_decode_bench.py --tiny --device cpu --out b.json   # a dry run of the script on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from typing import Any

BIG = dict(
    hidden_size=1536,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=12,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=4096,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=1024,
)


def summary(xs: list[float]) -> dict[str, float]:
    med = statistics.median(xs)
    cv = statistics.pstdev(xs) / statistics.mean(xs) if len(xs) > 1 else 0.0
    return {"median_s": med, "min_s": min(xs), "cv": cv, "rounds": len(xs)}


def main() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytest_infer.perf.timing import Timer

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    device = args.device
    timer = Timer(device)
    doc: dict[str, Any] = {"device": device, "dtype": args.dtype, "config": TINY if args.tiny else BIG, "runs": {}}
    if device.startswith("cuda"):
        doc["gpu"] = torch.cuda.get_device_name(0)
    doc["torch"] = torch.__version__
    import transformers

    doc["transformers"] = transformers.__version__

    def build(attn: str) -> Any:
        torch.manual_seed(0)
        cfg = LlamaConfig(**doc["config"], attn_implementation=attn)
        with torch.device(device):
            model = LlamaForCausalLM(cfg).to(dtype).eval()
        return model

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)

    g = torch.Generator().manual_seed(1)
    vocab = doc["config"]["vocab_size"]
    prompt = torch.randint(3, vocab, (1, args.prompt_len), generator=g).to(device)
    never = vocab + 1  # an EOS id no token has: every run generates the full length

    def generate_run(name: str, model: Any, **kw: Any) -> None:
        times: list[float] = []
        first: list[float] = []
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            with timer.region(first):
                model.generate(
                    prompt, max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=never, pad_token_id=0, **kw
                )
            for _ in range(2):  # warm-up, excluded
                model.generate(
                    prompt, max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=never, pad_token_id=0, **kw
                )
            for _ in range(args.rounds):
                with timer.region(times):
                    model.generate(
                        prompt,
                        max_new_tokens=args.new_tokens,
                        do_sample=False,
                        eos_token_id=never,
                        pad_token_id=0,
                        **kw,
                    )
        s = summary(times)
        doc["runs"][name] = {
            "first_call_s": first[0],
            **s,
            "tokens_per_s": args.new_tokens / s["median_s"],
            "ms_per_token": 1000 * s["median_s"] / args.new_tokens,
            "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
        }
        print(name, json.dumps(doc["runs"][name]), flush=True)
        save()

    model = build("sdpa")
    doc["parameters"] = sum(p.numel() for p in model.parameters())
    generate_run("sdpa+dynamic", model)
    generate_run("sdpa+static", model, cache_implementation="static")  # auto-compiles on cuda
    del model

    # prefill latency by attention backend
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch = torch.randint(3, vocab, (4, 1024 if not args.tiny else 64), generator=g).to(device)
    backends: dict[str, tuple[str, Any]] = {
        "eager": ("eager", None),
        "sdpa": ("sdpa", None),
        "sdpa_math": ("sdpa", SDPBackend.MATH),
        "sdpa_flash": ("sdpa", SDPBackend.FLASH_ATTENTION),
        "sdpa_efficient": ("sdpa", SDPBackend.EFFICIENT_ATTENTION),
        "sdpa_cudnn": ("sdpa", SDPBackend.CUDNN_ATTENTION),
    }
    doc["prefill"] = {}
    for name, (impl, backend) in backends.items():
        model = build(impl)
        times: list[float] = []
        try:
            ctx = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            with torch.inference_mode(), ctx:
                for _ in range(2):
                    model(batch)
                for _ in range(args.rounds):
                    with timer.region(times):
                        model(batch)
            doc["prefill"][name] = {
                **summary(times),
                "tokens": int(batch.numel()),
                "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
            }
        except Exception as exc:  # a backend this stack cannot run: record why
            doc["prefill"][name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        print("prefill", name, json.dumps(doc["prefill"][name]), flush=True)
        del model
        save()
    save()


if __name__ == "__main__":
    main()

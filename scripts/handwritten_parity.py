"""The parity suite's forwards written by hand, without the plugin: the yardstick for the harness overhead.

Loads the reference (eager, float32) and each CPU-capable attention backend, runs the prompt batch, the
padding sweep and the per-prompt reference runs, and compares logits at real positions — the same
forwards `pytest -p pytest_infer --infer-suite parity --infer-technique <these>` runs.

    python scripts/handwritten_parity.py            # prints the wall time
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from pytest_infer.core.resources import default_prompts_file, embedded_model_path  # noqa: E402

PATH = str(embedded_model_path())
BACKENDS = {
    "eager": ("eager", None),
    "sdpa": ("sdpa", None),
    "sdpa_math": ("sdpa", SDPBackend.MATH),
    "sdpa_flash": ("sdpa", SDPBackend.FLASH_ATTENTION),
    "flex_attention": ("flex_attention", None),
}
SWEEP = [("left", 0), ("left", 1), ("left", 7), ("left", 32), ("right", 0), ("right", 7)]


def batch(tok, prompts, side, extra):
    ids = [tok(p)["input_ids"] for p in prompts]
    width = max(map(len, ids)) + extra
    rows = [([0] * (width - len(i)) + i) if side == "left" else (i + [0] * (width - len(i))) for i in ids]
    mask = [
        ([0] * (width - len(i)) + [1] * len(i)) if side == "left" else ([1] * len(i) + [0] * (width - len(i)))
        for i in ids
    ]
    return torch.tensor(rows), torch.tensor(mask)


def forward(model, ids, mask, backend):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode(), sdpa_kernel([backend]) if backend is not None else torch.enable_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.double()


def main() -> None:
    tok = AutoTokenizer.from_pretrained(PATH)
    prompts = [p for p in default_prompts_file().read_text().splitlines() if p.strip()]
    ref_model = AutoModelForCausalLM.from_pretrained(PATH, attn_implementation="eager").eval()
    ids, mask = batch(tok, prompts, "left", 0)
    ref = forward(ref_model, ids, mask, None)
    solo = [
        forward(
            ref_model,
            torch.tensor([tok(p)["input_ids"]]),
            torch.ones(1, len(tok(p)["input_ids"]), dtype=torch.long),
            None,
        )[0]
        for p in prompts
    ]
    worst = {}
    for name, (impl, backend) in BACKENDS.items():
        model = AutoModelForCausalLM.from_pretrained(PATH, attn_implementation=impl).eval()
        if name == "sdpa_flash":  # no mask: each prompt alone
            out = [
                forward(
                    model,
                    torch.tensor([tok(p)["input_ids"]]),
                    torch.ones(1, len(tok(p)["input_ids"]), dtype=torch.long),
                    backend,
                )[0]
                for p in prompts
            ]
            worst[name] = max(float((o - s).abs().max()) for o, s in zip(out, solo, strict=True))
            continue
        c = forward(model, ids, mask, backend)
        err = float((c - ref)[mask.bool()].abs().max())
        for side, extra in SWEEP:
            bi, bm = batch(tok, prompts, side, extra)
            c = forward(model, bi, bm, backend)
            for b, s in enumerate(solo):
                err = max(err, float((c[b, bm[b].bool()] - s).abs().max()))
        worst[name] = err
    print({k: f"{v:.3g}" for k, v in worst.items()})
    print(f"wall {time.perf_counter() - T0:.2f} s")


if __name__ == "__main__":
    main()

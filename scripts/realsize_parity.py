"""The yardstick for the harness's cost at real size: the forwards `--infer-suite parity --infer-technique
eager,sdpa` needs, written by hand, on a random-weight model of Qwen3-0.6B's shape (fixtures/configs/qwen3-0.6b.json,
float32, built into a temporary folder: no weights are committed).

    python scripts/realsize_parity.py build /tmp/models          # ~2.4 GB of float32 weights, once
    python scripts/realsize_parity.py run /tmp/models/qwen3-0.6b  # prints wall time and peak RSS

What it does, as a parity script would: load the reference (eager, float32); its logits on the left-padded prompt
batch, and on the prompts right-padded (each prompt as if alone); then for each technique (eager, sdpa) load it,
its logits on the padded batch and on each point of the padding sweep a real-size model gets (left:0,7;right:0),
each compared with the reference at real positions. The suite computes exactly these forwards (its counts:
docs/performance.md, "Cost at real size"); its extra work is the comparison metrics and pytest itself.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

T0 = time.perf_counter()

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from pytest_infer.core.resources import default_prompts_file  # noqa: E402
from pytest_infer.runtime.architectures import build  # noqa: E402

SWEEP = [("left", 0), ("left", 7), ("right", 0)]


def batch(tok, prompts, side, extra):
    ids = [tok(p)["input_ids"] for p in prompts]
    width = max(map(len, ids)) + extra
    rows = [([0] * (width - len(i)) + i) if side == "left" else (i + [0] * (width - len(i))) for i in ids]
    mask = [
        ([0] * (width - len(i)) + [1] * len(i)) if side == "left" else ([1] * len(i) + [0] * (width - len(i)))
        for i in ids
    ]
    return torch.tensor(rows), torch.tensor(mask)


def forward(model, ids, mask):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


def run(path: str) -> None:
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [p for p in default_prompts_file().read_text().splitlines() if p.strip() and not p.startswith("#")]
    ref_model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    ids, mask = batch(tok, prompts, "left", 0)
    ref = forward(ref_model, ids, mask)
    rids, rmask = batch(tok, prompts, "right", 0)
    right = forward(ref_model, rids, rmask)
    solo = [right[b, rmask[b].bool()] for b in range(len(prompts))]
    worst = {}
    for impl in ("eager", "sdpa"):
        model = (
            ref_model
            if impl == "eager"
            else AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, dtype=torch.float32).eval()
        )
        err = 0.0
        for side, extra in SWEEP:
            if impl == "eager" and side == "left" and extra == 0:
                c, bm = ref, mask  # the reference's own forward
            elif impl == "eager" and side == "right" and extra == 0:
                c, bm = right, rmask
            else:
                bi, bm = batch(tok, prompts, side, extra)
                c = forward(model, bi, bm)
            for b, s in enumerate(solo):
                err = max(err, float((c[b, bm[b].bool()].double() - s.double()).abs().max()))
        worst[impl] = err
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print({k: f"{v:.3g}" for k, v in worst.items()})
    print(f"wall {time.perf_counter() - T0:.1f} s, peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    if sys.argv[1:2] == ["build"]:
        print(build("qwen3-0.6b", Path(sys.argv[2]), dtype="float32"))
    else:
        run(sys.argv[2])

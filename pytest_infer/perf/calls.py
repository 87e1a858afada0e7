"""What a perf scenario calls: :class:`Scenario` (one call of the baseline, one of the candidate), the prefill
prompts of an exact length and the prefill call, and a streamer that clocks each decoded token."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pytest_infer.core.technique import Technique


@dataclass
class Scenario:
    """What one scenario times: a call of the baseline and one of the candidate."""

    key: str
    label: str
    run_baseline: Callable[[], object]
    run_candidate: Callable[[], object]
    new_tokens: int = 0
    batch: int = 0
    tokens: int = 0  # tokens one call processes (tokens/s); 0: none
    alias: str = ""  # the median under its own name too (ttft_s, load_s)
    extra: dict[str, float] = field(default_factory=dict)
    calls: tuple[int, int] = (1, 1)  # (baseline, candidate) calls per timed sample, set when measuring
    baseline_model: Any = None  # the resident model run_baseline calls (None: each call makes its own)


# a perf run of continuous batching wants more tokens per forward than the parity tests' budget (still explicit)
BATCHING_OVERRIDES: dict[str, Any] = {"max_batch_tokens": 256}


def streaming(technique: Technique, into: list[float]) -> Technique:
    """``technique`` with a streamer that appends, per ``generate`` call, the seconds per token after the first;
    unchanged where ``generate`` cannot stream (continuous batching) or runs prompts one at a time."""
    if technique.runner == "generate_batch" or not technique.padded_batches:
        return technique
    return dataclasses.replace(technique, generate_kwargs={**technique.generate_kwargs, "streamer": step_clock(into)})


def step_clock(into: list[float]) -> Any:
    from transformers.generation.streamers import BaseStreamer

    class StepClock(BaseStreamer):  # type: ignore[misc]
        """Host time at which ``generate`` hands over each token (after the copy to the host: synchronised)."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            steps = self.times[1:]  # times[0]: the prompt, handed over before the prefill
            if len(steps) >= 2:
                into.append((steps[-1] - steps[0]) / (len(steps) - 1))
            self.times = []

    return StepClock()


def prefill_ids(tokenizer: Any, prompts: Iterable[str], length: int, device: str) -> Any:
    """One row per prompt, each exactly ``length`` tokens of the prompt set's text (windows at different
    offsets, the BOS token first where the tokenizer has one), no padding: a clean prefill shape."""
    import torch

    texts = list(prompts)
    ids = list(tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError("the prompt set has no tokens to build prefill prompts from")
    rows = len(texts)
    while len(ids) < length + 7 * rows:
        ids = ids + ids
    bos = getattr(tokenizer, "bos_token_id", None)
    out = []
    for r in range(rows):
        window = ids[7 * r : 7 * r + length]
        out.append([bos, *window[: length - 1]] if bos is not None else window)
    return torch.tensor(out, dtype=torch.long, device=device)


def run_prefill(model: Any, technique: Technique, ids: Any) -> None:
    import inspect

    kwargs: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in inspect.signature(type(model).forward).parameters:
        kwargs["logits_to_keep"] = 1  # as generate: only the last position's logits
    with technique.no_grad(), technique.active():
        model(input_ids=ids, **kwargs)

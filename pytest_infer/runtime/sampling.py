"""Seeded sampling as data (:class:`Sampled`: tokens and the probabilities each token was drawn from).

:func:`sampled_generate` runs ``generate(do_sample=True)`` after ``torch.manual_seed(seed)``, with the plain
distribution (temperature 1 unless given, no top-k, no top-p: every token keeps its probability, so a different
random stream shows as different tokens) and a forced length (an end-of-sequence id outside the vocabulary).
A technique that runs each prompt alone (no attention mask) draws one prompt at a time: its random stream has a
different shape from a batched run's, so a reference compared with it is sampled the same way (``per_row``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_infer.core.technique import Technique
from pytest_infer.runtime.batch import Batch
from pytest_infer.runtime.generated import forced_generate

if TYPE_CHECKING:
    import torch


@dataclass
class Sampled:
    """Sampled tokens ``[batch][steps]`` and the distributions ``[batch, steps, vocab]`` (float32, CPU) they were
    drawn from (after the temperature)."""

    tokens: list[list[int]]
    probs: torch.Tensor


def sampled_generate(
    model: Any,
    tokenizer: Any,
    batch: Batch,
    technique: Technique,
    new_tokens: int,
    *,
    seed: int,
    temperature: float = 1.0,
    per_row: bool = False,
) -> Sampled:
    """``new_tokens`` sampled tokens per prompt, the global RNG seeded with ``seed`` before the (first) call."""
    import torch

    if per_row and batch.input_ids.shape[0] > 1:
        torch.manual_seed(seed)
        parts = [_generate(model, tokenizer, one, technique, new_tokens, temperature) for one in batch.rows()]
        return Sampled([t for p in parts for t in p.tokens], torch.cat([p.probs for p in parts]))
    torch.manual_seed(seed)
    return _generate(model, tokenizer, batch, technique, new_tokens, temperature)


def _generate(
    model: Any, tokenizer: Any, batch: Batch, technique: Technique, new_tokens: int, temperature: float
) -> Sampled:
    import torch

    out = forced_generate(
        model, tokenizer, batch, technique, new_tokens,
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, min_p=None, output_scores=True,
    )  # fmt: skip
    tokens = out.sequences[:, batch.input_ids.shape[1] :].tolist()
    probs = torch.stack([s.float().softmax(-1) for s in out.scores], dim=1).cpu()
    return Sampled(tokens, probs)

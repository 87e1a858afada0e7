"""Greedy tokens as data (:class:`Generated`: tokens and top-1/top-2 margins per step) and the end-of-sequence
id that never stops a forced-length generation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class Generated:
    """Greedy tokens ``[batch][steps]`` and the top-1/top-2 margin at each step (None when unknown)."""

    tokens: list[list[int]]
    margins: list[list[float]] | None


def step_margins(scores: Sequence[torch.Tensor]) -> list[list[float]]:
    import torch

    stacked = torch.stack([s.float() for s in scores], dim=1)  # [batch, steps, vocab]
    top2 = stacked.topk(2, dim=-1).values
    return (top2[..., 0] - top2[..., 1]).tolist()


def join_generated(parts: list[Generated]) -> Generated:
    margins = None if any(p.margins is None for p in parts) else [m for p in parts for m in p.margins or []]
    return Generated([t for p in parts for t in p.tokens], margins)


def never_token(model: Any, tokenizer: Any) -> int:
    """A token id outside the vocabulary: as EOS it never stops generation and changes no logit."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return max(int(getattr(config, "vocab_size", 0) or 0), len(tokenizer))


def output_cache(out: Any) -> Any:
    """The cache a forward or generate output carries, by the field its class declares: ``cache`` since Transformers
    5.2x, ``past_key_values`` before (reading the old name on a new output logs a deprecation warning)."""
    fields = getattr(out, "__dataclass_fields__", None) or {}
    for name in ("cache", "past_key_values", "cache_params"):
        if name in fields:
            return getattr(out, name)
    return getattr(out, "cache", None)

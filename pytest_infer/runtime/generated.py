"""Greedy tokens as data (:class:`Generated`: tokens and top-1/top-2 margins per step) and the end-of-sequence
id that never stops a forced-length generation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_infer.core.technique import Technique, resolve_kwargs

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


def forced_generate(
    model: Any,
    tokenizer: Any,
    batch: Any,
    technique: Technique,
    new_tokens: int,
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> Any:
    """``generate`` of exactly ``new_tokens`` tokens per prompt of ``batch`` (a :class:`~pytest_infer.runtime.batch.Batch`)
    in the technique's context, returning its dict output. The length is forced by an end-of-sequence id no token can
    have (:func:`never_token`), not by ``min_new_tokens``, which would rewrite the EOS logit and which continuous
    batching drops. ``options`` (``do_sample``, ``output_scores``...; greedy by default) come first, then the
    technique's generate arguments: ``kwargs`` as given (the same objects), else resolved for this run's length."""
    if kwargs is None:
        needed = int(batch.input_ids.shape[1]) + new_tokens
        kwargs = resolve_kwargs(technique.generate_kwargs, needed_length=needed, device=str(batch.input_ids.device))
    with technique.no_grad(), technique.active():
        return model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            **{
                "max_new_tokens": new_tokens,
                "eos_token_id": never_token(model, tokenizer),
                "pad_token_id": tokenizer.pad_token_id,
                "do_sample": False,
                "return_dict_in_generate": True,
                **options,
                **kwargs,
            },
        )


def output_cache(out: Any) -> Any:
    """The cache a forward or generate output carries, by the field its class declares: ``cache`` since Transformers
    5.2x, ``past_key_values`` before (reading the old name on a new output logs a deprecation warning)."""
    fields = getattr(out, "__dataclass_fields__", None) or {}
    for name in ("cache", "past_key_values", "cache_params"):
        if name in fields:
            return getattr(out, name)
    return getattr(out, "cache", None)


def cache_kwarg(model: Any) -> str:
    """The keyword a cache is passed by to ``forward``/``generate``: ``cache`` where the model's forward declares it
    (Transformers 5.2x; ``past_key_values`` there is deprecated and logs a warning), ``past_key_values`` before."""
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"

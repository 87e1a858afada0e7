"""A custom attention kernel: keys in chunks with an online softmax (the FlashAttention recurrence, in
plain PyTorch), accumulated in float32.

It has the signature Transformers' ``AttentionInterface`` expects, so it plugs into any model through
``attn_implementation="chunked_attention"`` once registered (the repository's conftest.py does that through
pytest-infer's ``attention_function_technique``).
"""

from __future__ import annotations

from typing import Any

import torch

CHUNK_SIZE = 16


def chunked_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [batch, heads, q_len, head_dim]
    key: torch.Tensor,  # [batch, kv_heads, kv_len, head_dim]
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,  # additive float or boolean (True = attend), [batch, 1, q_len, kv_len]
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    q = query.float() * scale
    batch, heads, q_len, _ = q.shape
    running_max = q.new_full((batch, heads, q_len, 1), float("-inf"))
    running_sum = q.new_zeros((batch, heads, q_len, 1))
    out = q.new_zeros((batch, heads, q_len, value.shape[-1]))
    for start in range(0, key.shape[2], CHUNK_SIZE):
        stop = start + CHUNK_SIZE
        scores = q @ key[:, :, start:stop].float().transpose(-1, -2)
        if attention_mask is not None:
            mask = attention_mask[:, :, :, start:stop]
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
        safe_max = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)  # rows masked so far
        weights = torch.exp(scores - safe_max)
        rescale = torch.exp(running_max - safe_max)
        running_sum = running_sum * rescale + weights.sum(dim=-1, keepdim=True)
        out = out * rescale + weights @ value[:, :, start:stop].float()
        running_max = new_max
    # a query with nothing to attend to (a padded position) gets zeros, not 0/0
    out = out / torch.where(running_sum == 0, torch.ones_like(running_sum), running_sum)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None

"""A tokenized prompt batch (left padded) and the logits of a model on it, technique context applied."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_infer.core.technique import Technique

if TYPE_CHECKING:
    import torch


@dataclass
class Batch:
    """A tokenized prompt batch (left padded) on a device."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompts: tuple[str, ...]

    def digest(self) -> str:
        """What makes two batches the same input (token ids, mask, shape): the key of a forward's result."""
        h = hashlib.sha1(repr(tuple(self.input_ids.shape)).encode())
        h.update(repr(self.input_ids.tolist()).encode())
        h.update(repr(self.attention_mask.tolist()).encode())
        return h.hexdigest()

    def rows(self) -> list[Batch]:
        """Each prompt alone, padding removed (for kernels without mask support)."""
        out = []
        for b in range(self.input_ids.shape[0]):
            real = self.attention_mask[b].bool()
            out.append(
                Batch(
                    self.input_ids[b, real].unsqueeze(0),
                    self.attention_mask[b, real].unsqueeze(0),
                    self.prompts[b : b + 1],
                )
            )
        return out


def encode(tokenizer: Any, prompts: Sequence[str], device: str) -> Batch:
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return Batch(enc["input_ids"].to(device), enc["attention_mask"].to(device), tuple(prompts))


def forward_logits(model: Any, batch: Batch, technique: Technique) -> torch.Tensor:
    """Logits ``[batch, seq, vocab]`` (float32, on the batch's device) for every position.

    Techniques whose kernels take no padding mask run each prompt alone; their logits are placed at
    the same (left-padded) positions so the result lines up with a padded reference.
    """
    import torch

    with technique.no_grad(), technique.active():
        if technique.padded_batches:
            # positions count real tokens only, as generate() does for padded batches
            position_ids = (batch.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            return model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids
            ).logits.float()
        out: torch.Tensor | None = None
        seq = batch.input_ids.shape[1]
        for b, one in enumerate(batch.rows()):
            real = batch.attention_mask[b].bool()
            logits = model(input_ids=one.input_ids).logits.float()
            if out is None:
                out = torch.zeros(batch.input_ids.shape[0], seq, logits.shape[-1], device=logits.device)
            out[b, real] = logits[0]
        assert out is not None
        return out

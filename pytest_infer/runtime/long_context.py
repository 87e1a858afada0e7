"""Long prompts cut from a text (``--infer-context N``): a batch whose generation runs up to N positions.

Two rows, left padded: one prompt of ``prompt_tokens`` tokens from the start of the text and one of three quarters
of that from further on (two lengths, so the padded row's positions and mask are exercised at length too); a text
shorter than that is read again from its start (a model's context can be longer than any shipped text). Built from
token ids, not re-tokenized text, so the lengths are exact; the decoded text is kept for messages.
"""

from __future__ import annotations

from typing import Any

from pytest_infer.runtime.batch import Batch


def long_batch(tokenizer: Any, text: str, prompt_tokens: int, device: str) -> Batch:
    import torch

    ids = list(tokenizer(text, verbose=False)["input_ids"])  # verbose: no "longer than the maximum" line
    bos = getattr(tokenizer, "bos_token_id", None)
    head = [bos] if bos is not None and ids and ids[0] == bos else []
    body = ids[len(head) :]
    second = max(1, prompt_tokens * 3 // 4)
    offset = prompt_tokens // 2
    needed = max(prompt_tokens, offset + second) - len(head)
    if not body:
        raise ValueError("the text has no tokens")
    while len(body) < needed:
        body = body + body
    rows = [head + body[: prompt_tokens - len(head)], head + body[offset : offset + second - len(head)]]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    texts = tuple(tokenizer.decode(r[len(head) :]) for r in rows)
    return Batch(input_ids, mask, texts)

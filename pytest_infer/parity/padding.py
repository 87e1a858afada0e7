"""Batches like real traffic: left and right padding over a sweep of pad lengths, each padded row
compared with the same prompt run alone, and every output value — pad positions included — scanned
for NaN/Inf (a NaN at a pad position reaches real positions in the next layer: 0 x NaN = NaN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_infer.core.numbers import MAX_TOKENS, NumberError, parse_int, why
from pytest_infer.core.technique import Technique
from pytest_infer.core.tolerance import Tolerance
from pytest_infer.parity.logits import LogitParityResult, compare_logits
from pytest_infer.runtime.batch import Batch

if TYPE_CHECKING:
    import torch

DEFAULT_SWEEP = "left:0,1,7,32;right:0,7"
LARGE_MODEL_SWEEP = "left:0,7;right:0"  # auto over LARGE_MODEL_PARAMETERS: the batch, more left padding, right
LARGE_MODEL_PARAMETERS = 100_000_000


@dataclass(frozen=True)
class PadPoint:
    side: str  # "left" | "right"
    extra: int  # pad tokens added beyond what the longest prompt needs

    @property
    def label(self) -> str:
        return f"{self.side}+{self.extra}"


def parse_sweep(spec: str) -> tuple[PadPoint, ...]:
    """``"left:0,1,7;right:0,7"`` -> pad points. Raises ValueError with the expected form."""
    points: list[PadPoint] = []
    for part in spec.replace(" ", "").split(";"):
        if not part:
            continue
        side, sep, values = part.partition(":")
        if side not in ("left", "right") or not sep:
            raise ValueError(f"padding sweep {spec!r}: expected 'left:N,N;right:N', got {part!r}")
        for v in values.split(","):
            try:
                extra = parse_int(v)
            except NumberError as exc:
                raise ValueError(f"padding sweep {spec!r}: {v!r} is not a non-negative integer{why(exc)}") from None
            if extra < 0:
                raise ValueError(f"padding sweep {spec!r}: {v!r} is not a non-negative integer")
            if extra > MAX_TOKENS:
                raise ValueError(f"padding sweep {spec!r}: {extra} pad tokens is more than {MAX_TOKENS:,}")
            points.append(PadPoint(side, extra))
    if not points:
        raise ValueError(f"padding sweep {spec!r}: no pad lengths given")
    return tuple(dict.fromkeys(points))


def padded_batch(tokenizer: Any, prompts: Sequence[str], point: PadPoint, device: str) -> Batch:
    import torch

    ids = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(i) for i in ids) + point.extra
    pad = tokenizer.pad_token_id
    rows, masks = [], []
    for seq in ids:
        n = width - len(seq)
        if point.side == "left":
            rows.append([pad] * n + seq)
            masks.append([0] * n + [1] * len(seq))
        else:
            rows.append(seq + [pad] * n)
            masks.append([1] * len(seq) + [0] * n)
    return Batch(torch.tensor(rows, device=device), torch.tensor(masks, device=device), tuple(prompts))


def solo_logits(
    forward: Callable[[Batch], torch.Tensor], tokenizer: Any, prompts: Sequence[str], device: str
) -> list[torch.Tensor]:
    """Each prompt as if run alone, ``[positions, vocab]`` per prompt, from ONE forward of the prompts right-padded:
    under causal attention a real position attends only to the positions before it, all real in a right-padded
    row, so its logits are the solo run's up to rounding (the noise floor measures that rounding)."""
    batch = padded_batch(tokenizer, prompts, PadPoint("right", 0), device)
    logits = forward(batch)
    mask = batch.attention_mask.bool()
    return [logits[b, mask[b]] for b in range(logits.shape[0])]


def choose_sweep(spec: str, parameters: int) -> tuple[str, str]:
    """The sweep to run and why: ``spec`` as given, or for ``auto`` :data:`DEFAULT_SWEEP`, and
    :data:`LARGE_MODEL_SWEEP` for a model over :data:`LARGE_MODEL_PARAMETERS` parameters (each point is a forward
    of the whole batch: on a real-size model on CPU, seconds each)."""
    if spec != "auto":
        return spec, "as configured"
    if parameters > LARGE_MODEL_PARAMETERS:
        return LARGE_MODEL_SWEEP, f"auto for a {parameters / 1e6:,.0f}M-parameter model"
    return DEFAULT_SWEEP, "auto"


def padding_parity(
    reference_solo: Sequence[torch.Tensor],
    forward: Callable[[Batch], torch.Tensor],
    tokenizer: Any,
    prompts: Sequence[str],
    technique: Technique,
    tolerance: Tolerance,
    points: Sequence[PadPoint],
    *,
    reference_name: str,
    device: str,
    dtype: str,
    reference_dtype: str,
) -> list[tuple[PadPoint, LogitParityResult]]:
    """For each pad point: the candidate's padded batch (``forward``) vs the reference's solo runs, row by row."""
    import torch

    results = []
    for point in points:
        batch = padded_batch(tokenizer, prompts, point, device)
        cand = forward(batch)
        ref = torch.zeros_like(cand)
        mask = batch.attention_mask.bool()
        for b, solo in enumerate(reference_solo):
            ref[b, mask[b]] = solo.to(ref.dtype)
        result = compare_logits(
            ref,
            cand,
            mask,
            tolerance,
            technique=technique.name,
            reference_name=f"{reference_name} (each prompt alone)",
            device=device,
            dtype=dtype,
            reference_dtype=reference_dtype,
            prompts=prompts,
            scan_padding=True,
        )
        result.check, result.variant = "padding", f"{point.label} padding"
        results.append((point, result))
    return results

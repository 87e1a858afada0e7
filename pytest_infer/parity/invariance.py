"""Batch invariance: one prompt's logits must not depend on what else is in the batch.

The same prompt runs alone, then in batches of 2 to 8 at the first, a middle and the last row, the other rows
filled with the other prompts (right padded: under causal attention a real position sees only real positions, so
padding cannot reach it). Its logits at every real position must equal the solo run's within the *batch noise
floor*: ``FLOOR_MULTIPLE`` x the reference's own batch-composition noise in this dtype (the session's noise floor),
never tighter than a tenth of the dtype's table bound nor looser than the table (the rule of parity/floor.py).
A technique that promises bitwise batch invariance (``Technique(batch_invariant=True)``) must match bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_infer.parity.floor import FLOOR_MULTIPLE, TABLE_FRACTION, NoiseFloor
from pytest_infer.parity.padding import PadPoint, padded_batch
from pytest_infer.runtime.batch import Batch

if TYPE_CHECKING:
    import torch

LAYOUTS: tuple[tuple[int, int], ...] = ((2, 0), (2, 1), (3, 1), (4, 3), (8, 0), (8, 4), (8, 7))  # (size, row)


def invariance_bound(table_max_abs: float, floor: NoiseFloor | None) -> tuple[float, str]:
    """The max_abs bound and where it came from."""
    if floor is None:
        return table_max_abs * TABLE_FRACTION, f"a tenth of the dtype's table ({table_max_abs:.3g}): no noise floor"
    bound = min(table_max_abs, max(FLOOR_MULTIPLE * floor.batch_max_abs, table_max_abs * TABLE_FRACTION))
    return bound, (
        f"{FLOOR_MULTIPLE:g} x the reference's padded-batch noise {floor.batch_max_abs:.3g}, clamped to "
        f"[{table_max_abs * TABLE_FRACTION:.3g}, {table_max_abs:.3g}]"
    )


@dataclass
class Placement:
    size: int
    row: int
    max_abs: float
    differing: int  # real positions whose logits differ at all
    top1_changed: int  # real positions whose top-1 token changed

    @property
    def label(self) -> str:
        where = "first" if self.row == 0 else "last" if self.row == self.size - 1 else f"row {self.row}"
        return f"batch {self.size}, {where}"


@dataclass
class BatchInvarianceResult:
    technique: str
    device: str
    dtype: str
    prompt: str
    positions: int
    bound: float
    bound_source: str
    bitwise: bool
    placements: list[Placement] = field(default_factory=list)
    kind: str = "batch_invariance"
    check: str = "invariance"

    @property
    def worst(self) -> Placement | None:
        return max(self.placements, key=lambda p: p.max_abs, default=None)

    @property
    def failures(self) -> list[str]:
        out = []
        for p in self.placements:
            if self.bitwise and p.differing:
                out.append(
                    f"{p.label}: {p.differing} of {self.positions} positions differ from the prompt alone (max_abs "
                    f"{p.max_abs:.3g}); the technique promises bitwise batch invariance"
                )
            elif not self.bitwise and not p.max_abs <= self.bound:
                out.append(
                    f"{p.label}: max_abs {p.max_abs:.3g} against the prompt alone > {self.bound:.3g} ({self.bound_source}); "
                    f"top-1 changed at {p.top1_changed} of {self.positions} positions"
                )
        return out

    @property
    def passed(self) -> bool:
        return bool(self.placements) and not self.failures

    def message(self) -> str:
        worst = self.worst
        mode = "bitwise" if self.bitwise else f"max_abs <= {self.bound:.3g}"
        head = (
            f"batch invariance {'passed' if self.passed else 'FAILED'}: {self.technique} ({self.dtype}) on "
            f"{self.device}: one prompt ({self.positions} positions) alone vs {len(self.placements)} batch placements "
            f"(sizes 2-8, first/middle/last), {mode}; worst {worst.label if worst else '-'} "
            f"max_abs {worst.max_abs if worst else float('nan'):.3g}"
        )
        return "\n".join([head, *(f"  - {f}" for f in self.failures)])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        worst = self.worst
        d.update(
            passed=self.passed,
            failures=self.failures,
            variant="bitwise" if self.bitwise else "",
            metrics={
                "max_abs": worst.max_abs if worst else None,
                "bound": self.bound,
                "differing_positions": max((p.differing for p in self.placements), default=0),
                "top1_changed": max((p.top1_changed for p in self.placements), default=0),
                "placements": len(self.placements),
            },
        )
        return d


def batch_invariance(
    forward: Callable[[Batch], torch.Tensor],
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    bound: float,
    bound_source: str,
    bitwise: bool,
    technique: str,
    device: str,
    dtype: str,
    layouts: Sequence[tuple[int, int]] = LAYOUTS,
) -> BatchInvarianceResult:
    """``prompts[0]`` alone, then placed at each ``(size, row)`` of ``layouts`` among the other prompts (cycled)."""
    target, others = prompts[0], list(prompts[1:]) or [prompts[0]]
    alone_batch = padded_batch(tokenizer, [target], PadPoint("right", 0), device)
    alone = forward(alone_batch)[0]
    n = int(alone_batch.attention_mask[0].sum())
    result = BatchInvarianceResult(technique, device, dtype, target, n, bound, bound_source, bitwise)
    for size, row in layouts:
        fillers = [others[i % len(others)] for i in range(size - 1)]
        rows = [*fillers[:row], target, *fillers[row:]]
        logits = forward(padded_batch(tokenizer, rows, PadPoint("right", 0), device))[row, :n]
        diff = (logits - alone[:n]).abs()
        result.placements.append(
            Placement(
                size=size,
                row=row,
                max_abs=float(diff.max()),
                differing=int(((diff.amax(dim=-1) > 0) | diff.isnan().any(dim=-1)).sum()),
                top1_changed=int((logits.argmax(-1) != alone[:n].argmax(-1)).sum()),
            )
        )
    return result

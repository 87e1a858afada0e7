"""Noise-floor tolerances: bounds set relative to the inherent noise of the reference itself.

For each (dtype, device) the session measures how far the reference moves with no optimization at all:

- *dtype noise*: the reference run in the candidate's dtype vs. the reference in its own dtype (float32);
- *batch noise*: the reference in the candidate's dtype on the padded batch vs. each prompt run alone.

The floor of a metric is the larger of the two. A default bound then becomes
``clamp(FLOOR_MULTIPLE x floor, table / 10, table)`` for ``max_abs`` (``FLOOR_MULTIPLE**2`` for
``max_kl``, which grows with the square of a logit error): as tight as the measured noise allows, never
tighter than a tenth of the per-dtype table (a floor of exactly 0 on a deterministic kernel must not make
every other kernel fail), never looser than the table. Mean metrics, cosine and top-1 keep the table:
kernel-to-kernel mean error is legitimately larger than a single kernel's batch noise (measured 14x).

The near-tie threshold (``tie_margin``) becomes the larger of the table's and twice the largest reference
margin at which dtype noise alone flipped the top-1 token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pytest_infer.core.tolerance import Tolerance
from pytest_infer.parity.logits import LogitParityResult

FLOOR_MULTIPLE = 10.0
TABLE_FRACTION = 0.1


@dataclass(frozen=True)
class NoiseFloor:
    dtype: str
    device: str
    max_abs: float
    max_kl: float
    flip_margin: float  # largest reference margin where dtype noise flipped the top-1 (0.0 when none)
    dtype_max_abs: float
    batch_max_abs: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        source = "dtype" if self.dtype_max_abs >= self.batch_max_abs else "batch composition"
        return (
            f"noise floor {self.dtype}/{self.device}: max_abs {self.max_abs:.3g} ({source}), max_kl {self.max_kl:.2g}"
        )


def measure_floor(
    dtype_noise: LogitParityResult | None, batch_noise: LogitParityResult, flip_margin: float
) -> NoiseFloor:
    """The floor from both noises; ``dtype_noise`` None: the candidate runs in the reference's own dtype (zero)."""
    b = batch_noise.metrics
    d = dtype_noise.metrics if dtype_noise is not None else {"max_abs": 0.0, "max_kl": 0.0}
    return NoiseFloor(
        dtype=batch_noise.dtype,
        device=batch_noise.device,
        max_abs=max(d["max_abs"], b["max_abs"]),
        max_kl=max(d["max_kl"], b["max_kl"]),
        flip_margin=flip_margin,
        dtype_max_abs=d["max_abs"],
        batch_max_abs=b["max_abs"],
    )


def _scaled(table: float | None, floor: float, multiple: float) -> float | None:
    if table is None or math.isnan(floor):
        return table
    return min(table, max(multiple * floor, table * TABLE_FRACTION))


def floor_tolerance(table: Tolerance, floor: NoiseFloor, fixed: frozenset[str] = frozenset()) -> Tolerance:
    """The table tolerance tightened to the measured floor; metrics named in ``fixed`` are left alone."""
    changes: dict[str, float | None] = {}
    if "max_abs" not in fixed:
        changes["max_abs"] = _scaled(table.max_abs, floor.max_abs, FLOOR_MULTIPLE)
    if "max_kl" not in fixed:
        changes["max_kl"] = _scaled(table.max_kl, floor.max_kl, FLOOR_MULTIPLE**2)
    if "tie_margin" not in fixed:
        changes["tie_margin"] = max(table.tie_margin, 2.0 * floor.flip_margin)
    return table.replace(**changes)

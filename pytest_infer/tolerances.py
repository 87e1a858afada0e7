"""Default logit-parity tolerances per dtype (and device kind), from measurement.

The reference is eager attention in float32 on the same device. The numbers below were measured on the
embedded model (docs/tolerances.md has the table and the command); each bound sits a documented factor
above the largest error seen across the CPU-capable attention backends, so a real kernel fault (a
wrong mask, a dropped head, a NaN) is orders of magnitude past it, while run-to-run noise is not.

``tie_margin``: a position is *decisive* (top-1 must agree) only when the reference's top-1/top-2 logit
margin is at least this; below it, rounding in the candidate's dtype can legitimately swap the two.
"""

from __future__ import annotations

from pytest_infer.technique import Tolerance

DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    # measured, max over CPU backends (docs/tolerances.md): max_abs 2.3e-5, mean_abs 2.5e-6, max_kl 4.4e-11
    "float32": Tolerance(max_abs=1e-3, mean_abs=1e-4, max_kl=1e-6, min_cosine=0.99999, min_top1=1.0, tie_margin=1e-3),
    # measured: max_abs 0.38, mean_abs 0.045, max_kl 9.7e-3, cosine 0.99966, top-1 flips at margins <= 0.165
    "bfloat16": Tolerance(max_abs=1.5, mean_abs=0.2, max_kl=5e-2, min_cosine=0.998, min_top1=1.0, tie_margin=0.4),
    # measured: max_abs 0.052, mean_abs 0.0055, max_kl 1.1e-4, cosine 0.999993, top-1 flips at margins <= 0.0018
    "float16": Tolerance(max_abs=0.25, mean_abs=0.025, max_kl=5e-4, min_cosine=0.99995, min_top1=1.0, tie_margin=0.05),
}


def default_tolerance(dtype: str, device: str) -> Tolerance:
    """The built-in bound for candidates in ``dtype`` on ``device`` (compared with a float32 reference)."""
    return DEFAULT_TOLERANCES[dtype]

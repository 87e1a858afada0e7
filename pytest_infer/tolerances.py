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
    # measured max over CPU backends (docs/tolerances.md): max_abs 1.6e-5, mean_abs 1.3e-6, max_kl 1.3e-11
    "float32": Tolerance(max_abs=1e-3, mean_abs=1e-4, max_kl=1e-6, min_cosine=0.99999, min_top1=1.0, tie_margin=1e-3),
    # measured: max_abs 0.18, mean_abs 0.023, max_kl 1.9e-3, cosine 0.99977, top-1 flips at margins <= 0.12
    "bfloat16": Tolerance(max_abs=0.75, mean_abs=0.1, max_kl=1e-2, min_cosine=0.999, min_top1=1.0, tie_margin=0.4),
    # measured: max_abs 0.03, mean_abs 0.0029, max_kl 4e-5, cosine 0.999993, no top-1 flips
    "float16": Tolerance(max_abs=0.1, mean_abs=0.01, max_kl=2e-4, min_cosine=0.9999, min_top1=1.0, tie_margin=0.05),
}


def default_tolerance(dtype: str, device: str) -> Tolerance:
    """The built-in bound for candidates in ``dtype`` on ``device`` (compared with a float32 reference)."""
    return DEFAULT_TOLERANCES[dtype]

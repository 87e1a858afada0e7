"""Parity bounds as data: :class:`Tolerance`, the ``[TECHNIQUE:][DTYPE:]metric=value`` spec, and the one check of
``infer_tolerance`` keywords (markers, hooks and specs share it). How a bound is decided: parity/bounds.py."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_infer.core.dtypes import is_dtype, normalize_dtype
from pytest_infer.core.errors import TechniqueError
from pytest_infer.core.numbers import NumberError, parse_real, why

TOLERANCE_METRICS = (
    "max_abs",
    "mean_abs",
    "max_kl",
    "mean_kl",
    "min_cosine",
    "min_top1",
    "tie_margin",
    "min_greedy",
)
FRACTIONS = ("min_cosine", "min_top1", "min_greedy")  # shares and cosines: at most 1


@dataclass(frozen=True)
class Tolerance:
    """Bounds a candidate's logits must stay within, compared to the reference at real (unpadded) positions.

    ``max_abs`` / ``mean_abs``: absolute logit error; ``max_kl`` / ``mean_kl``: KL(reference || candidate)
    of next-token distributions per position; ``min_cosine``: per-row cosine similarity of logits;
    ``min_top1``: share of *decisive* positions (reference top-1/top-2 margin >= ``tie_margin``) where
    both pick the same token. ``None`` leaves a metric unchecked.

    ``min_greedy`` is for lossy techniques (quantization): greedy generation then passes when the share of
    generated tokens that agree with the reference before their row diverges (near-tie rows count in full)
    is at least this, instead of requiring every row to match. ``None`` (the default): every row must match
    up to near-ties.
    """

    max_abs: float | None = None
    mean_abs: float | None = None
    max_kl: float | None = None
    mean_kl: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = 1.0
    tie_margin: float = 0.0
    min_greedy: float | None = None

    def looser(self, other: Tolerance) -> Tolerance:
        """The bound that admits both (used when stacking techniques)."""

        def pick(a: float | None, b: float | None, upper: bool) -> float | None:
            if a is None or b is None:
                return None
            return max(a, b) if upper else min(a, b)

        return Tolerance(
            max_abs=pick(self.max_abs, other.max_abs, True),
            mean_abs=pick(self.mean_abs, other.mean_abs, True),
            max_kl=pick(self.max_kl, other.max_kl, True),
            mean_kl=pick(self.mean_kl, other.mean_kl, True),
            min_cosine=pick(self.min_cosine, other.min_cosine, False),
            min_top1=pick(self.min_top1, other.min_top1, False),
            tie_margin=max(self.tie_margin, other.tie_margin),
            min_greedy=_min_greedy(self.min_greedy, other.min_greedy),
        )

    def replace(self, **changes: float | None) -> Tolerance:
        unknown = set(changes) - set(TOLERANCE_METRICS)
        if unknown:
            raise TechniqueError(
                f"unknown tolerance metric(s) {', '.join(sorted(unknown))}; valid: {', '.join(TOLERANCE_METRICS)}"
            )
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


def _min_greedy(a: float | None, b: float | None) -> float | None:
    """Exact matching (None) is the strictest: the looser of a bound and None is the bound."""
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def parse_tolerance_spec(spec: str) -> tuple[str | None, str | None, dict[str, float | None]]:
    """``"sdpa:bfloat16:max_abs=0.2,min_top1=0.99"`` -> ("sdpa", "bfloat16", {...}).

    The technique and dtype prefixes are optional; ``none`` clears a bound.
    """
    *parts, body = spec.strip().split(":")
    technique: str | None = None
    dtype: str | None = None
    for p in parts:
        if is_dtype(p):
            dtype = normalize_dtype(p)
        elif technique is None:
            technique = p
        else:
            raise TechniqueError(f"tolerance {spec!r}: expected [TECHNIQUE:][DTYPE:]metric=value")
    values: dict[str, float | None] = {}
    for item in body.split(","):
        if not item.strip():
            continue
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in TOLERANCE_METRICS:
            raise TechniqueError(
                f"tolerance {spec!r}: {item.strip()!r} is not metric=value; metrics: {', '.join(TOLERANCE_METRICS)}"
            )
        raw = raw.strip()
        try:
            number = None if raw.lower() == "none" else parse_real(raw)
        except NumberError as exc:
            clear = "; 'none' clears a bound" if "finite" in str(exc) else ""
            raise TechniqueError(f"tolerance {spec!r}: {raw!r} is not a number (or 'none'){why(exc)}{clear}") from None
        values[key] = number
        if number is not None and (math.isnan(number) or number < 0):
            raise TechniqueError(f"tolerance {spec!r}: {key} must be a non-negative number")
        if number is not None and key in FRACTIONS and number > 1:
            raise TechniqueError(f"tolerance {spec!r}: {key} is a fraction: at most 1, got {raw}")
    if not values:
        raise TechniqueError(f"tolerance {spec!r}: no metric=value given")
    return technique, dtype, values


def tolerance_keyword_problem(kwargs: Mapping[str, Any], *, allow_stack: bool = True) -> str | None:
    """What is wrong with ``infer_tolerance`` keywords (unknown metric, not a non-negative number), or None.

    The one check behind the marker (validated at collection) and the decision of a bound."""
    allowed = {*TOLERANCE_METRICS, "stack"} if allow_stack else set(TOLERANCE_METRICS)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        return f"unknown keyword(s) {', '.join(unknown)}"
    for key, value in kwargs.items():
        problem = None if key == "stack" else number_problem(key, value, allow_none=True)
        if problem:
            return problem
    return None


def number_problem(key: str, value: Any, *, allow_none: bool) -> str | None:
    """What is wrong with ``key=value`` as a non-negative number (a bound, a marker's min/max), or None."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key}={value!r} is not a number"
    if value != value or value < 0:  # NaN or negative
        return f"{key}={value!r} must be a non-negative number"
    if not math.isfinite(value):
        return f"{key}={value!r} must be a finite number" + (" (None clears a bound)" if allow_none else "")
    if key in FRACTIONS and value > 1:
        return f"{key}={value!r} is a fraction: at most 1"
    return None

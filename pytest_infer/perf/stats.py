"""Paired statistics of alternating rounds: the speedup as the median of per-round ratios, its 95 % interval from
the paired log-ratios (Student t), the coefficient of variation."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# two-sided 95 % Student t quantiles by degrees of freedom (1..30); beyond: normal
_T95 = [
    12.71,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t95(dof: int) -> float:
    return _T95[dof - 1] if 1 <= dof <= len(_T95) else 1.96


@dataclass
class Paired:
    """Alternating rounds of baseline and candidate: times, and the speedup interval."""

    baseline_s: list[float]
    candidate_s: list[float]

    @property
    def ratios(self) -> list[float]:
        return [b / c for b, c in zip(self.baseline_s, self.candidate_s, strict=True) if b > 0 and c > 0]

    @property
    def speedup(self) -> float:
        """Median of the per-round ratios: each round's pair ran back to back, so what the machine does to
        both cancels, and one disturbed round moves the median little."""
        ratios = self.ratios
        if not ratios:
            return statistics.median(self.baseline_s) / statistics.median(self.candidate_s)
        return statistics.median(ratios)

    def interval(self) -> tuple[float, float]:
        """95 % interval of the speedup from the paired log-ratios (t-interval of their mean)."""
        logs = [math.log(b / c) for b, c in zip(self.baseline_s, self.candidate_s, strict=True) if b > 0 and c > 0]
        if len(logs) < 2:
            return (self.speedup, self.speedup)
        mean = statistics.fmean(logs)
        half = t95(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        return (math.exp(mean - half), math.exp(mean + half))


def cv(xs: Sequence[float]) -> float:
    return statistics.pstdev(xs) / statistics.fmean(xs) if len(xs) > 1 and statistics.fmean(xs) > 0 else 0.0

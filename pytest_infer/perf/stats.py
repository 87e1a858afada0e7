"""Paired statistics of alternating rounds: the speedup as the median of per-round ratios, its 95 % interval from
the paired log-ratios (Student t), the coefficient of variation."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_infer.core.intervals import t95


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

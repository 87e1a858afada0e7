"""What a technique costs in quality: the perplexity of a text under the technique against the reference's, paired
chunk by chunk (``d_i`` = the chunk's mean NLL difference; ratio = exp(mean d), its 95 % t-interval over chunks),
and greedy agreement over a long generation, decided against the technique's budget (an ``Expectation`` on
``perplexity_ratio``, MLPerf style) by the interval rule of every claim: pass when the whole interval is within the
budget, fail when it lies wholly beyond, inconclusive otherwise."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_infer.core.expectation import Expectation
from pytest_infer.core.intervals import decide, t95
from pytest_infer.core.text import number


@dataclass(frozen=True)
class Interval:
    """exp of the mean paired NLL difference, with its 95 % interval and the worst chunk's ratio."""

    ratio: float
    low: float
    high: float
    worst_chunk: float
    chunks: int


def paired_ratio(nll: Sequence[float], reference_nll: Sequence[float]) -> Interval:
    """Perplexity ratio of ``nll`` against ``reference_nll`` (per-chunk mean NLLs of the same chunks)."""
    d = [a - b for a, b in zip(nll, reference_nll, strict=True)]
    mean = statistics.fmean(d)
    half = t95(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), math.exp(max(d)), len(d))


@dataclass
class QualityResult:
    technique: str
    reference: str
    device: str
    dtype: str
    mode: str  # "forward" (every position, one forward) | "decode" (token by token through the technique's cache)
    text: str
    tokens: int
    perplexity: float
    reference_perplexity: float
    interval: Interval
    greedy_agreement: float  # share of greedy tokens equal to the reference's before each row's first divergence
    greedy_tokens: int  # new tokens per prompt of that generation
    budget: Expectation | None = None
    budget_source: str = ""
    notes: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)  # against the stored run (--infer-compare-fail)
    kind: str = "quality"

    @property
    def verdict(self) -> str:
        if self.regressions:
            return "fail"
        if self.budget is None:
            return "pass"
        if not all(math.isfinite(x) for x in (self.interval.low, self.interval.high)):
            return "fail"
        return decide(self.interval.low, self.interval.high, self.budget.value, self.budget.op)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def failures(self) -> list[str]:
        b, i = self.budget, self.interval
        if self.passed:
            return []
        if b is None or decide(i.low, i.high, b.value, b.op) == "pass":
            return list(self.regressions)
        where = "lies wholly beyond" if self.verdict == "fail" else "straddles"
        return [
            *self.regressions,
            f"perplexity ratio {i.ratio:.4f} [95 % interval {i.low:.4f}, {i.high:.4f}] {where} the budget "
            f"{b.metric} {b.op} {b.value:g}{self.budget_source}: the format costs more than the technique promises",
        ]

    @property
    def metrics(self) -> dict[str, float]:
        i = self.interval
        return {
            "perplexity_ratio": i.ratio,
            "perplexity_ratio_low": i.low,
            "perplexity_ratio_high": i.high,
            "worst_chunk_ratio": i.worst_chunk,
            "perplexity": self.perplexity,
            "reference_perplexity": self.reference_perplexity,
            "greedy_agreement": self.greedy_agreement,
            "chunks": float(i.chunks),
        }

    def headline(self) -> str:
        i = self.interval
        budget = f" (budget {self.budget.op} {self.budget.value:g})" if self.budget else " (no budget)"
        return f"ppl x{i.ratio:.4f} [{i.low:.4f}, {i.high:.4f}]{budget}, greedy agreement {self.greedy_agreement:.2f}"

    def message(self) -> str:
        verdict = {"pass": "passed", "fail": "FAILED", "inconclusive": "INCONCLUSIVE"}[self.verdict]
        lines = [
            f"quality {verdict}: {self.technique} ({self.dtype}) on {self.device} vs {self.reference}: "
            f"{self.headline()}",
            f"  perplexity {number(self.perplexity)} vs {number(self.reference_perplexity)} on {self.interval.chunks} "
            f"chunks ({self.tokens} tokens of {self.text}; {self.mode}); worst chunk x{self.interval.worst_chunk:.4f}; "
            f"greedy agreement over {self.greedy_tokens} new tokens",
        ]
        lines += [f"  - {f}" for f in self.failures]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        b = self.budget
        return {
            "kind": self.kind,
            "check": "quality",
            "variant": self.mode,
            "technique": self.technique,
            "reference": self.reference,
            "device": self.device,
            "dtype": self.dtype,
            "passed": self.passed,
            "verdict": self.verdict,
            "metrics": self.metrics,
            "budget": None if b is None else {"metric": b.metric, "op": b.op, "value": b.value},
            "text": self.text,
            "tokens": self.tokens,
            "greedy_tokens": self.greedy_tokens,
            "failures": self.failures,
            "notes": list(self.notes),
        }

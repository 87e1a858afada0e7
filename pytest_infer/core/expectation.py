"""What a technique must buy (:class:`Expectation`: a ratio against a baseline, per stack and dtype), and the
most specific expectation per metric for a stack."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pytest_infer.core.errors import TechniqueError
from pytest_infer.core.stack import Stack, stack_key_specificity


@dataclass(frozen=True)
class Expectation:
    """What a technique must buy, as a ratio against a baseline technique measured in the same session.

    ``metric`` is e.g. ``decode_speedup`` or ``weight_memory_ratio``; ``op`` is ``>=`` or ``<=``;
    ``stacks`` restricts it to stack keys such as ``cuda``, ``cuda:9.0`` (device kind and compute
    capability; the most specific match wins) — empty means everywhere.
    """

    metric: str
    op: str
    value: float
    stacks: tuple[str, ...] = ()
    baseline: str | None = None
    dtypes: tuple[str, ...] = ()  # the run dtypes it applies to; empty: all

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise TechniqueError(f"expectation {self.metric}: op must be '>=' or '<=', got {self.op!r}")
        object.__setattr__(self, "stacks", tuple(self.stacks))
        object.__setattr__(self, "dtypes", tuple(self.dtypes))

    def specificity(self, stack: Stack) -> int:
        """-1 when it does not apply to ``stack``; else how specific the best matching key is."""
        if not self.stacks:
            return 0
        return max(stack_key_specificity(k, stack) for k in self.stacks)

    def holds(self, measured: float) -> bool:
        return measured >= self.value if self.op == ">=" else measured <= self.value


def select_expectations(
    expectations: Iterable[Expectation], stack: Stack, dtype: str | None = None
) -> list[Expectation]:
    """Per metric, the expectation whose stack key matches ``stack`` most specifically (among those for
    ``dtype``, when given)."""
    best: dict[str, tuple[int, Expectation]] = {}
    for e in expectations:
        if dtype is not None and e.dtypes and dtype not in e.dtypes:
            continue
        s = e.specificity(stack)
        if s >= 0 and (e.metric not in best or s > best[e.metric][0]):
            best[e.metric] = (s, e)
    return [e for _, e in best.values()]

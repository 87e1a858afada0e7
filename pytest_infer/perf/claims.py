"""The one rule for every speed and memory claim.

An expectation (the technique's own for this stack and dtype, or a test's ``infer_speedup`` / ``infer_memory``
marker, the closest winning) is decided on the 95 % interval of the paired ratio for the scenario's speedup, and on
the single measured value for everything else (bytes and memory ratios are deterministic): ``pass`` when the whole
interval clears the bound, ``fail`` when it lies wholly on the wrong side, ``inconclusive`` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pytest_infer.core.errors import ExplainedFailure
from pytest_infer.core.expectation import Expectation, select_expectations
from pytest_infer.core.intervals import decide
from pytest_infer.core.stack import Stack
from pytest_infer.perf.result import PerfResult
from pytest_infer.perf.stats import Paired

# what infer_memory(metric=...) can bound: the ratios the perf scenarios and the weight-storage check measure
MEMORY_METRICS = (
    "weight_memory_ratio",
    "quantized_layers_ratio",
    "peak_memory_ratio",
    "peak_rss_ratio",
    "kv_memory_ratio",
)
# marker -> (metric, op); "{scenario}" is the scenario of the test the marker is on (decode, prefill...)
MARKER_METRICS = {
    "infer_speedup": ("{scenario}_speedup", ">="),
    "infer_memory": ("weight_memory_ratio", "<="),
    "infer_quality": ("perplexity_ratio", "<="),  # the quality check's budget
}


def holds(expectation: Expectation, measured: float | None) -> bool:
    """A single deterministic value (bytes, a memory ratio) against an expectation: the same rule, low = high."""
    return measured is not None and decide(measured, measured, expectation.value, expectation.op) == "pass"


def expectations_for(
    own: Iterable[Expectation],
    stack: Stack,
    dtype: str,
    scenario: str,
    markers: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[tuple[Expectation, str]]:
    """The technique's expectations for this stack and dtype, then the test's markers (``markers[name]``: the
    keyword arguments of each ``infer_speedup`` / ``infer_memory`` marker, closest first); a marker replaces
    the technique's expectation of the same metric. Each comes with where it came from, for the message."""
    chosen = [(e, " (technique, this stack)") for e in select_expectations(own, stack, dtype)]
    for marker_name, (metric, op) in MARKER_METRICS.items():
        for given in markers.get(marker_name, ()):
            kwargs = dict(given)
            stacks = tuple(s for s in [kwargs.pop("stack", None)] if s)
            bound = kwargs.pop("min" if op == ">=" else "max", None)
            metric_name = kwargs.pop("metric", metric.format(scenario=scenario))
            if bound is None or kwargs:
                raise ExplainedFailure(
                    f"@pytest.mark.{marker_name}: expected ({'min' if op == '>=' else 'max'}=NUMBER"
                    f"[, stack='cuda:9.0'][, metric=...]), got {dict(given)}"
                )
            e = Expectation(metric_name, op, float(bound), stacks=stacks)
            if e.specificity(stack) >= 0:
                chosen = [c for c in chosen if c[0].metric != e.metric] + [(e, f" (@{marker_name})")]
    return chosen


def decide_claims(result: PerfResult, expectations: Iterable[tuple[Expectation, str]]) -> None:
    """Decide each expectation on ``result``: the scenario's speedup on its paired interval, anything else on its
    single value; the claims are appended to ``result.claims``."""
    m = result.metrics
    speed_metric = f"{result.scenario_key}_speedup"
    for e, source in expectations:
        interval = e.metric == speed_metric and "speedup" in m
        if interval:
            low, high = Paired(result.baseline_s, result.candidate_s).interval()
            measured = m["speedup"]
        elif e.metric in m:
            measured = m[e.metric]
            low = high = measured
        else:
            continue
        result.claims.append(
            {
                "metric": e.metric,
                "op": e.op,
                "value": e.value,
                "measured": measured,
                "low": low if interval else None,
                "high": high if interval else None,
                "verdict": decide(low, high, e.value, e.op),
                "source": source,
            }
        )

"""pytest-infer's markers: their help text (registered by the plugin) and the check of their arguments, made at
collection so that a typo fails before any model loads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_infer.core.stack import stack_key_problem
from pytest_infer.core.tolerance import TOLERANCE_METRICS, number_problem, tolerance_keyword_problem
from pytest_infer.perf.claims import MEMORY_METRICS

MARKERS = (
    "infer_tolerance(**bounds): override logit-parity bounds for this test "
    "(max_abs, mean_abs, max_kl, mean_kl, min_cosine, min_top1, tie_margin, min_greedy)",
    "infer_techniques(*names): run this test only for these techniques, families or stacks",
    "infer_unsupported(reason): set by pytest-infer under --infer-strict on cases this stack cannot run",
    "infer_not_selected: set by pytest-infer on a family test none of whose techniques is selected (deselected)",
    "infer_speedup(min=X, stack=None): the decode speedup over the baseline this technique must show (perf suite)",
    "infer_memory(max=X, stack=None, metric='weight_memory_ratio'): the memory ratio it must stay under (perf suite)",
    "infer_quality(max=X, stack=None): the perplexity ratio against the reference this technique must stay under "
    "(the quality tests)",
)


_NUMBER_KEYS = {"infer_speedup": "min", "infer_memory": "max", "infer_quality": "max"}


def marker_problem(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """What is wrong with a pytest-infer marker's arguments, or None (other markers: None).

    Checked at collection so that a typo fails the session before any model loads, instead of failing
    (or, for an unknown stack key or metric, silently not applying) after the measurement."""
    if name == "infer_tolerance":
        usage = f"@pytest.mark.infer_tolerance(METRIC=NUMBER, ..., stack=None) with METRIC one of {', '.join(TOLERANCE_METRICS)}"
        if args:
            return f"@pytest.mark.infer_tolerance takes keywords only, got {args!r}: {usage}"
        problem = tolerance_keyword_problem(kwargs) or stack_key_problem(kwargs.get("stack"))
        if problem is None:
            return None
        return f"@pytest.mark.infer_tolerance: {problem}" + (f"; {usage}" if problem.startswith("unknown") else "")
    if name in _NUMBER_KEYS:
        bound = _NUMBER_KEYS[name]
        usage = f"@pytest.mark.{name}({bound}=NUMBER[, stack='cuda:9.0'][, metric=...])"
        if name == "infer_memory":
            usage += f" with metric one of {', '.join(MEMORY_METRICS)}"
        if args:
            return f"@pytest.mark.{name} takes keywords only, got {args!r}: {usage}"
        unknown = sorted(set(kwargs) - {bound, "stack", *(() if name == "infer_quality" else ("metric",))})
        if unknown:
            return f"@pytest.mark.{name}: unknown keyword(s) {', '.join(unknown)}; {usage}"
        if bound not in kwargs:
            return f"@pytest.mark.{name}: {bound}= is missing; {usage}"
        problem = number_problem(bound, kwargs[bound], allow_none=False)
        if problem is None and "stack" in kwargs:
            problem = stack_key_problem(kwargs["stack"])
        metric = kwargs.get("metric")
        if problem is None and metric is not None:
            if not isinstance(metric, str) or not metric:
                problem = f"metric={metric!r} must be a metric name"
            elif name == "infer_memory" and metric not in MEMORY_METRICS:
                problem = f"metric={metric!r} is not a memory metric"
        return None if problem is None else f"@pytest.mark.{name}: {problem}; {usage}"
    if name == "infer_techniques":
        bad = [a for a in args if not isinstance(a, str)]
        if not args or bad or kwargs:
            return (
                "@pytest.mark.infer_techniques takes technique, family or stack names as strings, e.g. "
                f"infer_techniques('sdpa', 'attention'), got args={args!r} kwargs={dict(kwargs)!r}"
            )
    return None

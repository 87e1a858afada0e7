"""The regression gate on what pytest-benchmark does not compare (``--infer-compare-fail``): rules per metric
(and per scenario), relative (``8%``) or absolute (``0.5``, in the metric's unit), and the regressions of a result
against its stored run."""

from __future__ import annotations

import math
from dataclasses import dataclass

# metric -> direction: +1 bigger is better, -1 smaller is better. A rule applies to every perf test whose result
# has the metric (speedup, cpu_speedup, median_s: every timed scenario; tokens_per_s: decode, prefill, batching;
# weight_bytes: decode, memory...); SCENARIO.METRIC applies to that scenario's tests only, over the plain rule.
METRICS = {
    "tokens_per_s": 1,
    "speedup": 1,
    "cpu_speedup": 1,
    "median_s": -1,
    "cpu_s": -1,
    "ms_per_token": -1,
    "decode_ms_per_token": -1,
    "decode_step_speedup": 1,
    "ttft_s": -1,
    "load_s": -1,
    "throughput_ratio": 1,
    "peak_memory": -1,
    "peak_rss_delta": -1,
    "weight_bytes": -1,
    "kv_bytes": -1,
    "compile_s": -1,
}


SCENARIOS = ("load", "decode", "prefill", "ttft", "memory", "batching")


@dataclass(frozen=True)
class Threshold:
    """How much worse a metric may get: ``relative`` a fraction of the stored value (``8%`` -> 0.08), else an
    absolute change in the metric's own unit (``peak_memory:50e6`` bytes, ``ttft_s:0.02`` seconds), as
    pytest-benchmark's ``--benchmark-compare-fail=min:5%`` / ``min:0.001``."""

    limit: float
    relative: bool = True

    def text(self) -> str:
        return f"{100 * self.limit:g} %" if self.relative else f"{self.limit:g}"


def parse_compare_fail(spec: str) -> dict[str, Threshold]:
    """``"cpu_speedup:8%,load.cpu_speedup:30%,peak_memory:50e6"`` -> {"cpu_speedup": 8 %, "load.cpu_speedup": 30 %,
    "peak_memory": 50e6 (bytes, absolute)}."""
    rules: dict[str, Threshold] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, sep, amount = part.partition(":")
        scenario, _, metric = name.rpartition(".")
        if not sep or metric not in METRICS or (scenario and scenario not in SCENARIOS) or not amount.strip():
            raise ValueError(
                f"{part!r}: expected METRIC:PCT% (relative) or METRIC:VALUE (absolute, in the metric's unit) with "
                f"METRIC one of {', '.join(METRICS)} (or SCENARIO.METRIC:..., for one scenario's tests, with "
                f"SCENARIO one of {', '.join(SCENARIOS)})"
            )
        relative = amount.strip().endswith("%")
        number = amount.strip().removesuffix("%").strip()
        try:
            value = float(number)
        except ValueError:
            kind = "a percentage" if relative else "a number (an absolute change) or a percentage (PCT%)"
            raise ValueError(f"{part!r}: {amount.strip()!r} is not {kind}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{part!r}: the allowed change must be a finite number >= 0, got {amount.strip()!r}")
        rules[name] = Threshold(value / 100.0 if relative else value, relative)
    return rules


def regressions(
    current: dict[str, float], stored: dict[str, float], rules: dict[str, Threshold], scenario: str = ""
) -> list[str]:
    """What regressed beyond its rule, worst direction per metric; the ``scenario.metric`` rule wins over the
    plain one for a test of that scenario. A relative rule skips a metric stored as 0 (no ratio to take)."""
    chosen: dict[str, Threshold] = {}
    for name, allowed in rules.items():
        where, _, metric = name.rpartition(".")
        if not where:
            chosen.setdefault(metric, allowed)
        elif where == scenario:
            chosen[metric] = allowed
    out = []
    for metric, allowed in chosen.items():
        if metric not in current or metric not in stored:
            continue
        now, then = current[metric], stored[metric]
        delta = now - then if METRICS[metric] < 0 else then - now  # > 0: worse
        if allowed.relative:
            if not then:
                continue
            worse = delta / abs(then)
            if worse > allowed.limit:
                out.append(
                    f"{metric} regressed {100 * worse:.1f} % (stored {then:.4g}, now {now:.4g}; "
                    f"allowed {allowed.text()})"
                )
        elif delta > allowed.limit:
            out.append(
                f"{metric} regressed by {delta:.4g} (stored {then:.4g}, now {now:.4g}; allowed {allowed.text()})"
            )
    return out

"""The regression gate on what pytest-benchmark does not compare (``--infer-compare-fail``): rules per metric
(and per scenario), and the regressions of a result against its stored run."""

from __future__ import annotations

from pytest_infer.core.numbers import NumberError, parse_real, why

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


def parse_compare_fail(spec: str) -> dict[str, float]:
    """``"cpu_speedup:8%,load.cpu_speedup:30%,weight_bytes:5%"`` -> {"cpu_speedup": 0.08, "load.cpu_speedup": 0.3,
    "weight_bytes": 0.05}."""
    rules: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, sep, pct = part.partition(":")
        scenario, _, metric = name.rpartition(".")
        if not sep or metric not in METRICS or (scenario and scenario not in SCENARIOS) or not pct.endswith("%"):
            raise ValueError(
                f"{part!r}: expected METRIC:PCT% with METRIC one of {', '.join(METRICS)} (or SCENARIO.METRIC:PCT%, "
                f"for one scenario's tests, with SCENARIO one of {', '.join(SCENARIOS)})"
            )
        try:
            percent = parse_real(pct[:-1])
        except NumberError as exc:
            raise ValueError(f"{part!r}: {pct!r} is not a percentage{why(exc)}") from None
        if not 0 <= percent <= 1000:
            raise ValueError(f"{part!r}: {pct!r} must lie between 0% and 1000%")
        rules[name] = percent / 100.0
    return rules


def regressions(
    current: dict[str, float], stored: dict[str, float], rules: dict[str, float], scenario: str = ""
) -> list[str]:
    """What regressed beyond its rule, worst direction per metric; the ``scenario.metric`` rule wins over the
    plain one for a test of that scenario."""
    chosen: dict[str, float] = {}
    for name, allowed in rules.items():
        where, _, metric = name.rpartition(".")
        if not where:
            chosen.setdefault(metric, allowed)
        elif where == scenario:
            chosen[metric] = allowed
    out = []
    for metric, allowed in chosen.items():
        if metric not in current or metric not in stored or not stored[metric]:
            continue
        change = (current[metric] - stored[metric]) / abs(stored[metric])
        worse = -change if METRICS[metric] > 0 else change
        if worse > allowed:
            out.append(
                f"{metric} regressed {100 * worse:.1f} % (stored {stored[metric]:.4g}, now {current[metric]:.4g}; "
                f"allowed {100 * allowed:g} %)"
            )
    return out

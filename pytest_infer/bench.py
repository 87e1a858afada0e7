"""pytest-benchmark glue: machine info with the full stack, baselines stored per stack, and our own
regression gate for the metrics pytest-benchmark does not compare (memory, tokens/s...).

Registered only when pytest-benchmark is loaded (``config.pluginmanager.hasplugin("benchmark")``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_infer.session import InferSession

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
            rules[name] = float(pct[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"{part!r}: {pct!r} is not a percentage") from None
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


class BenchmarkHooks:
    """pytest-benchmark hook implementations, bound to the infer session."""

    def __init__(self, session: InferSession) -> None:
        from pytest_infer.perf import ensure_summary

        self.session = session
        self._stored: dict[str, dict[str, Any]] | None = None
        self.stored_source = ""
        ensure_summary(session)  # here too: an xdist controller runs no perf check itself but prints the figures

    @pytest.hookimpl(tryfirst=True)
    def pytest_configure(self, config: pytest.Config) -> None:  # pragma: no cover - wiring
        pass

    def pytest_benchmark_update_machine_info(self, config: pytest.Config, machine_info: dict[str, Any]) -> None:
        stack = self.session.stack
        machine_info["infer_stack"] = stack.to_dict()
        machine_info["infer_stack_key"] = stack.key()

    def pytest_benchmark_compare_machine_info(
        self,
        config: pytest.Config,
        benchmarksession: Any,
        machine_info: dict[str, Any],
        compared_benchmark: dict[str, Any],
    ) -> None:
        theirs = compared_benchmark.get("machine_info", {}).get("infer_stack_key")
        ours = machine_info.get("infer_stack_key")
        if theirs != ours:
            message = (
                f"pytest-infer: the stored benchmark was measured on stack {theirs or 'unknown'}, this run is on "
                f"{ours}: timings are not comparable (store baselines per stack: see docs/performance.md)"
            )
            self.session.stack_mismatch = message
            benchmarksession.logger.warning(message)

    # --- our regression gate ---------------------------------------------------------------------
    def stored_metrics(self, fullname: str) -> dict[str, float] | None:
        if self._stored is None:
            self._stored = self._load()
        entry = self._stored.get(fullname)
        return entry

    def _load(self) -> dict[str, dict[str, Any]]:
        config = self.session.pytest_config
        compare = config.getoption("benchmark_compare", None)
        bs = getattr(config, "_benchmarksession", None)
        if bs is None or compare is None:
            return {}
        try:
            files = list(bs.storage.query(compare)) if compare is not True else list(bs.storage.query())[-1:]
            if not files:
                return {}
            path, data = next(iter(bs.storage.load(files[-1])))
        except Exception as exc:  # no stored run yet: nothing to compare with
            self.stored_source = f"(no stored baseline: {exc})"
            return {}
        self.stored_source = str(path)
        out: dict[str, dict[str, Any]] = {}
        for b in data.get("benchmarks", []):
            metrics = (b.get("extra_info") or {}).get("infer_metrics")
            if isinstance(metrics, dict):
                out[b["fullname"]] = metrics
        return out


def stack_storage(session: InferSession, config: pytest.Config) -> None:
    """Keep stored baselines of different stacks apart: .benchmarks/<stack key>/... (unless the user chose)."""
    option = getattr(config.option, "benchmark_storage", None)
    if option in (None, "file://./.benchmarks"):
        config.option.benchmark_storage = f"file://./.benchmarks/{session.stack.key()}"


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())

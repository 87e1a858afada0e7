"""One perf scenario's result (:class:`PerfResult`): samples of both sides, memory, claims, notes; its metrics,
verdict, headline and message, rendered from the same numbers for the terminal, JSON and pytest-benchmark."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_infer.perf.stats import Paired, cv


@dataclass
class PerfResult:
    """One perf scenario (``scenario_key``: decode, prefill, ttft, load, memory, batching) of a technique
    against the baseline, timed in paired rounds; ``extra`` holds the scenario's own figures."""

    technique: str
    baseline: str
    device: str
    dtype: str
    scenario: str  # the label, e.g. "decode 32 tokens x 8 prompts"
    new_tokens: int
    batch: int
    rounds: int
    warmup: int
    first_call_s: float
    baseline_first_call_s: float
    candidate_s: list[float]
    baseline_s: list[float]
    weight_bytes: int = 0
    baseline_weight_bytes: int = 0
    memory: dict[str, int] = field(default_factory=dict)
    baseline_memory: dict[str, int] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)  # metric, op, value, measured, low, high, verdict
    scenario_key: str = "decode"
    tokens: int = 0  # tokens one timed call processes (tokens/s); 0: not a throughput figure
    extra: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # e.g. pytest-benchmark off: nothing stored or compared
    calls: int = 1  # candidate calls per timed sample (short calls are repeated; times are per call)
    baseline_calls: int = 1
    cpu_candidate_s: list[float] = field(default_factory=list)  # process CPU seconds per call (off cuda)
    cpu_baseline_s: list[float] = field(default_factory=list)
    kind: str = "performance"

    @property
    def metrics(self) -> dict[str, float]:
        m: dict[str, float] = {}
        if self.candidate_s:
            med = statistics.median(self.candidate_s)
            m["median_s"] = med
            if self.scenario_key == "decode":
                m["ms_per_token"] = 1000 * med / max(1, self.new_tokens)
            if self.tokens:
                m["tokens_per_s"] = self.tokens / med
            m["cv"] = cv(self.candidate_s)
            if self.baseline_s:
                paired = Paired(self.baseline_s, self.candidate_s)
                low, high = paired.interval()
                m.update(speedup=paired.speedup, speedup_low=low, speedup_high=high)
            if self.first_call_s and self.scenario_key != "load":
                m["compile_s"] = max(0.0, self.first_call_s - med)
        if self.cpu_candidate_s:
            m["cpu_s"] = statistics.median(self.cpu_candidate_s)
            if self.cpu_baseline_s:
                m["cpu_speedup"] = Paired(self.cpu_baseline_s, self.cpu_candidate_s).speedup
        if self.weight_bytes:
            m["weight_bytes"] = float(self.weight_bytes)
            m["weight_memory_ratio"] = self.weight_bytes / max(1, self.baseline_weight_bytes)
        if "peak_allocated" in self.memory and self.baseline_memory.get("peak_allocated"):
            m["peak_memory"] = float(self.memory["peak_allocated"])
            m["peak_memory_ratio"] = self.memory["peak_allocated"] / self.baseline_memory["peak_allocated"]
        if "peak_rss_delta" in self.memory:
            m["peak_rss_delta"] = float(self.memory["peak_rss_delta"])
            if self.baseline_memory.get("peak_rss_delta"):
                m["peak_rss_ratio"] = self.memory["peak_rss_delta"] / self.baseline_memory["peak_rss_delta"]
        m.update(self.extra)
        return m

    @property
    def verdict(self) -> str:
        verdicts = {c["verdict"] for c in self.claims}
        return "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def failures(self) -> list[str]:
        return [_claim_text(c) for c in self.claims if c["verdict"] == "fail"]

    def message(self) -> str:
        first = f"; first call {self.first_call_s:.2f} s" if self.first_call_s else ""
        lines = [
            f"{self.scenario} of {self.technique} vs {self.baseline} ({self.dtype}, {self.device}): "
            f"{perf_headline(self.scenario_key, self.metrics, self.baseline, self.rounds, self.calls)}{first}"
        ]
        lines.extend(f"  {c['verdict'].upper()}: {_claim_text(c)}" for c in self.claims)
        lines.extend(f"  NOTE: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            metrics=self.metrics,
            passed=self.passed,
            verdict=self.verdict,
            failures=self.failures,
            check="speed",
            variant=self.scenario,
        )
        return d


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def perf_headline(key: str, m: Mapping[str, float], baseline: str, rounds: int, calls: int = 1) -> str:
    """The figures of one perf result (its ``metrics``), as one line: what the terminal and messages show."""
    parts: list[str] = []
    ms = 1000 * m.get("median_s", float("nan"))
    if key == "decode" and "ms_per_token" in m:
        parts.append(f"{m['ms_per_token']:.3g} ms/token, {m.get('tokens_per_s', float('nan')):.4g} tokens/s")
        if "decode_ms_per_token" in m:
            parts[-1] += f", {m['decode_ms_per_token']:.3g} ms/token after the first"
    elif key == "prefill" and "median_s" in m:
        parts.append(f"{ms:.3g} ms, {m.get('tokens_per_s', float('nan')):.4g} prompt tokens/s")
    elif key == "ttft" and "median_s" in m:
        parts.append(f"time to first token {ms:.3g} ms")
    elif key == "load" and "median_s" in m:
        parts.append(f"load {m['median_s']:.3g} s")
    elif key == "batching" and "tokens_per_s" in m:
        parts.append(
            f"generate_batch {m['tokens_per_s']:.4g} tokens/s vs {m.get('sequential_tokens_per_s', float('nan')):.4g} "
            "sequential"
        )
    elif "median_s" in m:
        parts.append(f"{ms:.3g} ms per call")
    if parts and "cv" in m:
        parts[-1] += f" (CV {100 * m['cv']:.1f} %)"
    if "speedup" in m:
        parts.append(
            f"speedup {m['speedup']:.3g}x [95 %: {m.get('speedup_low', float('nan')):.3g}, "
            f"{m.get('speedup_high', float('nan')):.3g}] over {rounds} paired rounds"
            f"{f' of {calls} calls' if calls > 1 else ''} vs {baseline}"
            + (f" (CPU time {m['cpu_speedup']:.3g}x)" if "cpu_speedup" in m else "")
        )
    if "weight_bytes" in m:
        parts.append(f"weights {_bytes(m['weight_bytes'])} ({m.get('weight_memory_ratio', float('nan')):.3g}x)")
    if "kv_bytes" in m:
        ratio = f" ({m['kv_memory_ratio']:.3g}x)" if "kv_memory_ratio" in m else ""
        parts.append(f"KV cache {_bytes(m['kv_bytes'])}{ratio}")
    if "peak_memory" in m:
        parts.append(f"peak device memory {_bytes(m['peak_memory'])} ({m.get('peak_memory_ratio', float('nan')):.3g}x)")
    if "peak_rss_delta" in m:
        ratio = f" ({m['peak_rss_ratio']:.3g}x)" if "peak_rss_ratio" in m else ""
        parts.append(f"peak host RSS +{_bytes(m['peak_rss_delta'])}{ratio}")
    return "; ".join(parts) or "no figures"


def _claim_text(c: dict[str, Any]) -> str:
    if c.get("text"):
        return f"{c['text']}{c.get('source', '')}"
    interval = f" [95 %: {c['low']:.3g}, {c['high']:.3g}]" if c.get("low") is not None else ""
    return f"{c['metric']} {c['measured']:.3g}{interval} {c['op']} {c['value']:g} expected{c.get('source', '')}"

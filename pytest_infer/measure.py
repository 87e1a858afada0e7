"""Honest measurement: device-synchronised timers, memory probes, and paired ratio decisions.

- Timing: CUDA events after a synchronize on cuda, ``perf_counter_ns`` elsewhere; warm-up calls are
  never in the numbers; the first call (compile) is reported apart.
- Memory: peak device memory (peak stats reset first), real weight storage (quantized tensor
  subclasses unwrapped: ``get_memory_footprint()`` reports 1.0x for torchao/quanto).
- Ratios: candidate and baseline are timed in alternating rounds (drift hits both), and a claim is
  decided on the interval of the paired log-ratios: the lower bound of the speedup's 95 % interval must
  clear the threshold to pass, the upper bound must fall below it to fail; otherwise "inconclusive".
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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


class Timer:
    """Wall time of a region with the device synchronised around it."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    @contextlib.contextmanager
    def region(self, into: list[float]) -> Iterator[None]:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            into.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter_ns()
            yield
            into.append((time.perf_counter_ns() - t0) / 1e9)


def weight_bytes(model: Any) -> int:
    """Bytes of real storage behind parameters and buffers, unwrapping tensor subclasses (torchao, quanto)."""
    return storage_bytes([*model.parameters(), *model.buffers()])


def storage_bytes(tensors: Iterable[Any], device_type: str | None = None) -> int:
    """Bytes of real storage behind ``tensors`` (tensor subclasses unwrapped into their inner tensors,
    storage shared between tensors counted once); with ``device_type``, only what lies on that device."""
    seen: set[int] = set()

    def size(t: Any) -> int:
        inner_names = getattr(t, "__tensor_flatten__", None)
        if inner_names is not None and type(t).__name__ not in ("Tensor", "Parameter"):
            try:
                names, _ = t.__tensor_flatten__()
                return sum(size(getattr(t, n)) for n in names)
            except Exception:  # an odd subclass: fall back to its nominal size
                pass
        data = getattr(t, "data", t)
        if device_type is not None and data.device.type != device_type:
            return 0
        try:
            ptr = data.untyped_storage().data_ptr()
        except Exception:
            ptr = id(data)
        if ptr in seen and ptr != 0:
            return 0  # tied weights count once
        seen.add(ptr)
        return int(data.numel() * data.element_size())

    def with_side_tensors(t: Any) -> int:
        # bitsandbytes keeps scales beside the weight, not as parameters: Int8Params.SCB, Params4bit.quant_state
        total = size(t)
        scb = getattr(t, "SCB", None)
        if scb is not None and hasattr(scb, "untyped_storage"):
            total += size(scb)
        state = getattr(t, "quant_state", None)
        while state is not None:
            for name in ("absmax", "code", "offset"):
                side = getattr(state, name, None)
                if side is not None and hasattr(side, "untyped_storage"):
                    total += size(side)
            state = getattr(state, "state2", None)  # nested (double) quantization
        return total

    return sum(with_side_tensors(t) for t in tensors)


@contextlib.contextmanager
def peak_memory(device: str, into: dict[str, int]) -> Iterator[None]:
    """Peak device memory allocated and reserved during the block (cuda; nothing recorded elsewhere)."""
    if not device.startswith("cuda"):
        yield
        return
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    yield
    torch.cuda.synchronize()
    into["peak_allocated"] = int(torch.cuda.max_memory_allocated())
    into["peak_reserved"] = int(torch.cuda.max_memory_reserved())
    into["peak_over_start"] = int(torch.cuda.max_memory_allocated() - base)


@dataclass
class Paired:
    """Alternating rounds of baseline and candidate: times, and the speedup interval."""

    baseline_s: list[float]
    candidate_s: list[float]

    @property
    def speedup(self) -> float:
        return statistics.median(self.baseline_s) / statistics.median(self.candidate_s)

    def interval(self) -> tuple[float, float]:
        """95 % interval of the speedup from the paired log-ratios (t-interval of their mean)."""
        logs = [math.log(b / c) for b, c in zip(self.baseline_s, self.candidate_s, strict=True) if b > 0 and c > 0]
        if len(logs) < 2:
            return (self.speedup, self.speedup)
        mean = statistics.fmean(logs)
        half = t95(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        return (math.exp(mean - half), math.exp(mean + half))


def decide(low: float, high: float, threshold: float, op: str) -> str:
    """'pass', 'fail' or 'inconclusive' for a claim ``measured op threshold`` known to lie in [low, high]."""
    if op == ">=":
        return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"
    return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"


def cv(xs: Sequence[float]) -> float:
    return statistics.pstdev(xs) / statistics.fmean(xs) if len(xs) > 1 and statistics.fmean(xs) > 0 else 0.0


@dataclass
class PerfResult:
    technique: str
    baseline: str
    device: str
    dtype: str
    scenario: str
    new_tokens: int
    batch: int
    rounds: int
    warmup: int
    first_call_s: float
    baseline_first_call_s: float
    candidate_s: list[float]
    baseline_s: list[float]
    weight_bytes: int
    baseline_weight_bytes: int
    memory: dict[str, int] = field(default_factory=dict)
    baseline_memory: dict[str, int] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)  # metric, op, value, measured, low, high, verdict
    kind: str = "performance"

    @property
    def metrics(self) -> dict[str, float]:
        med = statistics.median(self.candidate_s)
        paired = Paired(self.baseline_s, self.candidate_s)
        low, high = paired.interval()
        m = {
            "median_s": med,
            "ms_per_token": 1000 * med / max(1, self.new_tokens),
            "tokens_per_s": self.batch * self.new_tokens / med,
            "cv": cv(self.candidate_s),
            "speedup": paired.speedup,
            "speedup_low": low,
            "speedup_high": high,
            "compile_s": max(0.0, self.first_call_s - med),
            "weight_bytes": float(self.weight_bytes),
            "weight_memory_ratio": self.weight_bytes / max(1, self.baseline_weight_bytes),
        }
        if "peak_allocated" in self.memory and self.baseline_memory.get("peak_allocated"):
            m["peak_memory"] = float(self.memory["peak_allocated"])
            m["peak_memory_ratio"] = self.memory["peak_allocated"] / self.baseline_memory["peak_allocated"]
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
        m = self.metrics
        lines = [
            f"{self.scenario} of {self.technique} vs {self.baseline} ({self.dtype}, {self.device}): "
            f"{m['ms_per_token']:.3g} ms/token, {m['tokens_per_s']:.4g} tokens/s (CV {100 * m['cv']:.1f} %), "
            f"speedup {m['speedup']:.3g}x [95 %: {m['speedup_low']:.3g}, {m['speedup_high']:.3g}] over "
            f"{self.rounds} paired rounds; first call {self.first_call_s:.2f} s; weights {m['weight_memory_ratio']:.3g}x"
        ]
        lines.extend(f"  {c['verdict'].upper()}: {_claim_text(c)}" for c in self.claims)
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


def _claim_text(c: dict[str, Any]) -> str:
    if c.get("text"):
        return f"{c['text']}{c.get('source', '')}"
    interval = f" [95 %: {c['low']:.3g}, {c['high']:.3g}]" if c.get("low") is not None else ""
    return f"{c['metric']} {c['measured']:.3g}{interval} {c['op']} {c['value']:g} expected{c.get('source', '')}"


def paired_rounds(
    run_baseline: Callable[[], None], run_candidate: Callable[[], None], timer: Timer, rounds: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Warm both up, then alternate timed rounds (baseline, candidate) so drift affects both alike."""
    for _ in range(warmup):
        run_baseline()
        run_candidate()
    base: list[float] = []
    cand: list[float] = []
    for i in range(rounds):
        order = (run_baseline, run_candidate) if i % 2 == 0 else (run_candidate, run_baseline)
        for fn in order:
            with timer.region(base if fn is run_baseline else cand):
                fn()
    return base, cand

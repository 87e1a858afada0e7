"""Honest measurement: device-synchronised timers, memory probes, and paired ratio decisions.

- Timing: CUDA events after a synchronize on cuda, ``perf_counter_ns`` elsewhere; warm-up calls are
  never in the numbers; the first call (compile) is reported apart; the cyclic garbage collector is
  paused during timed rounds (as ``timeit`` does).
- Memory: peak device memory (peak stats reset first), peak host RSS over its start (Linux's own
  high-water mark reset first, else sampled), real weight storage (quantized tensor subclasses
  unwrapped: ``get_memory_footprint()`` reports 1.0x for torchao/quanto).
- Ratios: candidate and baseline are timed in alternating rounds (drift hits both); the speedup is
  the median of the per-round ratios, and a claim is decided on the interval of the paired
  log-ratios: the lower bound of the speedup's 95 % interval must clear the threshold to pass, the
  upper bound must fall below it to fail; otherwise "inconclusive".
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    def region(self, into: list[float], cpu_into: list[float] | None = None) -> Iterator[None]:
        """Append the wall seconds of the block to ``into``; off cuda, its process CPU seconds to ``cpu_into``
        (time the process ran, whichever thread: unlike wall time, it does not grow while the process waits
        for a core on a shared machine)."""
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
            c0 = time.process_time_ns()
            t0 = time.perf_counter_ns()
            yield
            into.append((time.perf_counter_ns() - t0) / 1e9)
            if cpu_into is not None:
                cpu_into.append((time.process_time_ns() - c0) / 1e9)


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


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HWM_RESET: list[bool] = []  # [works?] once known


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM); None without ``/proc``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _statm_rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * _PAGE


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (``clear_refs`` 5, Linux >= 4.0); False where refused."""
    if _HWM_RESET and not _HWM_RESET[0]:
        return False
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        ok = True
    except OSError:
        ok = False
    if not _HWM_RESET:
        _HWM_RESET.append(ok)
    return ok


@contextlib.contextmanager
def host_peak_rss(into: dict[str, int]) -> Iterator[None]:
    """Peak resident memory of this process during the block over what it held at the start, in bytes
    (``peak_rss_delta``; ``peak_rss``: the peak itself; ``rss_exact``: 1 when read from the kernel's mark).

    Exact where Linux lets a process reset its own high-water mark (``/proc/self/clear_refs``, then
    ``VmHWM``); otherwise a thread samples ``/proc/self/statm`` every millisecond (a peak shorter than that
    can be missed); without ``/proc`` nothing is recorded. Resetting the mark also resets what
    ``getrusage`` reports as ``ru_maxrss`` for this process.
    """
    start_kib = _status_kib("VmRSS")
    if start_kib is None:
        yield
        return
    start = start_kib * 1024
    if _reset_rss_peak():
        yield
        peak = (_status_kib("VmHWM") or start_kib) * 1024
        into.update(peak_rss=peak, peak_rss_delta=max(0, peak - start), rss_exact=1)
        return
    highest = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.001):
            highest[0] = max(highest[0], _statm_rss())

    thread = threading.Thread(target=sample, name="pytest-infer-rss", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    peak = max(highest[0], _statm_rss())
    into.update(peak_rss=peak, peak_rss_delta=max(0, peak - start), rss_exact=0)


def memory_round(run: Callable[[], object], device: str, timer: Timer) -> tuple[dict[str, int], float]:
    """Peak device memory and peak host RSS of one call (:func:`peak_memory`, :func:`host_peak_rss`), and its
    wall seconds (timed inside the probes)."""
    into: dict[str, int] = {}
    took: list[float] = []
    with peak_memory(device, into), host_peak_rss(into), timer.region(took):
        run()
    return into, took[0]


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


def decide(low: float, high: float, threshold: float, op: str) -> str:
    """'pass', 'fail' or 'inconclusive' for a claim ``measured op threshold`` known to lie in [low, high]."""
    if op == ">=":
        return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"
    return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"


def cv(xs: Sequence[float]) -> float:
    return statistics.pstdev(xs) / statistics.fmean(xs) if len(xs) > 1 and statistics.fmean(xs) > 0 else 0.0


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


MIN_SAMPLE_S = 0.1  # timed samples last about this long: a shorter call is repeated within one sample


def calls_for(call_s: float, min_sample_s: float = MIN_SAMPLE_S) -> int:
    """Calls per timed sample for a call of ``call_s`` seconds, so that a sample lasts about ``min_sample_s``: the
    whole number of calls nearest to it, so a sample lies between 2/3 and 3/2 of ``min_sample_s``.

    A shared machine preempts a process for whole time slices (milliseconds): a call of a few milliseconds is
    then either untouched or doubled, and a median of a few such samples jumps between the two. Repeating the
    call within one sample averages the preemptions out (as pytest-benchmark's calibration and ``timeit`` do).
    Rounding up instead would double the time of every call just under ``min_sample_s`` (a 96 ms decode ran
    twice per sample) for no gain: a 70 ms sample already spans tens of time slices."""
    return max(1, min(1000, round(min_sample_s / max(call_s, 1e-6))))


def sample_calls(baseline_s: float, candidate_s: float, min_sample_s: float = MIN_SAMPLE_S) -> tuple[int, int]:
    """Calls per sample of each side, from one call of each: the same count for both where their calls are within
    a factor of two (from the geometric mean of the two), so that both sides' samples have the same structure.

    What a sample's first call pays for following the other side's sample (caches holding the other model's
    weights and activations) is then the same share of both; with counts of, say, 2 and 3 it is not, and
    the ratio moves with the counts, which the single timed call picks anew in every session. Where one side
    is more than twice as fast, each gets its own count (a common one would make the slow side's samples
    needlessly long)."""
    low, high = sorted((max(baseline_s, 1e-6), max(candidate_s, 1e-6)))
    if high <= 2 * low:
        both = calls_for((low * high) ** 0.5, min_sample_s)
        return both, both
    return calls_for(baseline_s, min_sample_s), calls_for(candidate_s, min_sample_s)


def calls_per_sample(run: Callable[[], object], timer: Timer, min_sample_s: float = MIN_SAMPLE_S) -> int:
    """:func:`calls_for` the time of one call of ``run`` (called once, timed)."""
    took: list[float] = []
    with timer.region(took):
        run()
    return calls_for(took[0], min_sample_s)


def repeated(run: Callable[[], object], calls: int) -> Callable[[], None]:
    """``run`` called ``calls`` times: one timed sample."""

    def sample() -> None:
        for _ in range(calls):
            run()

    return sample


# drive(call, calls, after_round, rounds): run ``rounds`` rounds of ``calls`` calls of ``call``, calling
# ``after_round(r)`` (r = 1..rounds) after each round, outside the round's time. pytest-benchmark's pedantic mode
# is one (its ``iterations`` and per-round ``teardown``: see pytest_infer.perf), :func:`loop_driver` the other.
Driver = Callable[[Callable[[], object], int, Callable[[int], None], int], None]


def loop_driver(call: Callable[[], object], calls: int, after_round: Callable[[int], None], rounds: int) -> None:
    for r in range(1, rounds + 1):
        for _ in range(calls):
            call()
        after_round(r)


class Stopwatch:
    """Wall and process-CPU seconds between :meth:`start` and :meth:`stop`, the device synchronised at both ends
    (on cuda: host time after a synchronize, the same on both sides of a pair)."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self.running = False
        self._t0 = self._c0 = 0

    def start(self) -> None:
        self.timer.sync()
        self.running = True
        self._c0 = time.process_time_ns()
        self._t0 = time.perf_counter_ns()

    def stop(self) -> tuple[float, float]:
        self.timer.sync()
        wall = (time.perf_counter_ns() - self._t0) / 1e9
        cpu = (time.process_time_ns() - self._c0) / 1e9
        self.running = False
        return wall, cpu


def paired_rounds(
    run_baseline: Callable[[], object],
    run_candidate: Callable[[], object],
    timer: Timer,
    rounds: int,
    warmup: int,
    cpu: tuple[list[float], list[float]] | None = None,
    *,
    calls: tuple[int, int] = (1, 1),
    drive: Driver = loop_driver,
) -> tuple[list[float], list[float]]:
    """Warm both up, then alternate timed rounds so that drift affects both alike: the pairs run baseline first,
    then candidate first, and so on (B C | C B | B C ...). Returns the wall seconds of each side's samples (a
    sample: ``calls`` = (baseline, candidate) calls in a row, each synchronising the device at its end, on both
    sides alike), and off cuda appends their process-CPU seconds to ``cpu`` (baseline, candidate).

    ``drive`` runs the candidate's rounds: with pytest-benchmark's pedantic mode the candidate samples of the
    pairs are the very rounds pytest-benchmark records (no second set of rounds for it), and the baseline's
    samples run between them, outside its timing."""
    for _ in range(warmup):
        run_baseline()
        run_candidate()
    base: list[float] = []
    cand: list[float] = []
    cpu_b, cpu_c = cpu if cpu is not None else ([], [])
    watch = Stopwatch(timer)

    def baseline_call() -> None:
        run_baseline()
        timer.sync()

    baseline_sample = repeated(baseline_call, calls[0])

    def time_baseline() -> None:
        watch.start()
        baseline_sample()
        wall, cpu_s = watch.stop()
        base.append(wall)
        if not timer.cuda:  # host CPU time on cuda includes the wait in synchronize: not a figure to compare
            cpu_b.append(cpu_s)

    def candidate_call() -> None:
        if not watch.running:  # the first call of a round starts its sample (a call after the rounds: never stopped)
            watch.start()
        run_candidate()
        timer.sync()

    def after_round(r: int) -> None:
        wall, cpu_s = watch.stop()
        cand.append(wall)
        if not timer.cuda:
            cpu_c.append(cpu_s)
        if r % 2 == 0:  # round r ran candidate first: its baseline now, then the next pair's, which runs first
            time_baseline()
            if r < rounds:
                time_baseline()

    with gc_paused():
        time_baseline()
        drive(candidate_call, calls[1], after_round, rounds)
    if len(cand) != rounds or len(base) != rounds:
        raise RuntimeError(f"paired rounds: the driver ran {len(cand)} candidate rounds for {rounds} asked")
    return base, cand


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off during timed calls, as ``timeit`` does: a collection in a process
    holding torch and transformers takes tenths of a second and would land in one round at random. Reference
    counting still frees everything else; the collector runs again after the block."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

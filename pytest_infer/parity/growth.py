"""Memory stability: repeated identical calls of a technique must level off, not grow call after call.

The technique's generation runs ``calls`` times on the same batch; after each call (and a full garbage collection)
the process's resident host memory (after glibc's free pages are handed back: ``malloc_trim``) and, on a GPU, the
device memory allocated are read. The first ``warmup`` calls are left out (caches, compiled graphs and allocator
pools are built there); over the later ones a least-squares line gives the growth per call and its standard error.
A memory *grows* when:

* the slope exceeds both ``floor`` (what the reading can resolve: trimmed host RSS still moves by a few pages
  between identical calls, up to ~20 KiB per call on average for bitsandbytes on CPU, so ``HOST_FLOOR`` is 256 KiB;
  the CUDA allocator's count is exact to its 512-byte blocks, ``DEVICE_FLOOR``) and 3 standard errors (the noise of
  this run), and
* at least three quarters of the later calls grew it by more than an eighth of the floor (sustained growth, not
  one allocator arena mapped once).

Measured on the embedded model (CPU, 20 calls): trimmed RSS moved by -16..+32 KiB per call for eager, static caches,
static_compile, quanto and bitsandbytes (untrimmed: swings of +-7 MiB for static_compile); continuous batching
(paged|sdpa), whose manager runs in a thread, moved by -1.4..+0.8 MiB per call with no trend (+0.7 MiB in 20).
A leak below the floor is not resolved: the result states the floor it decided at.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

HOST_FLOOR = 256 * 1024
DEVICE_FLOOR = 4 * 1024
CALLS = 10
WARMUP = 3


def _mib(n: float) -> str:
    return f"{n / 2**20:.3g} MiB"


@dataclass
class Growth:
    """One memory's readings after each call and what they say."""

    memory: str  # "host RSS" | "device allocated"
    readings: list[int]
    warmup: int
    floor: int
    slope: float = 0.0  # bytes per call over the later calls
    stderr: float = 0.0
    grew: int = 0  # later calls that increased it
    later: int = 0

    def __post_init__(self) -> None:
        ys = [float(y) for y in self.readings[self.warmup :]]
        self.later = max(0, len(ys) - 1)
        self.slope, self.stderr = least_squares(ys)
        # a reading "grew" when it rose by more than 1/8 of the floor (32 KiB of RSS, which still moves by a few
        # pages either way, by up to ~800 KiB for continuous batching's threads; 512 bytes of device memory)
        self.grew = sum(b - a > self.floor / 8 for a, b in itertools.pairwise(ys))

    @property
    def growing(self) -> bool:
        return self.slope > max(self.floor, 3 * self.stderr) and 4 * self.grew >= 3 * self.later > 0

    def describe(self) -> str:
        total = self.readings[-1] - self.readings[self.warmup] if len(self.readings) > self.warmup else 0
        return (
            f"{self.memory} {'+' if self.slope >= 0 else '-'}{_mib(abs(self.slope))} per call "
            f"(± {_mib(self.stderr)}, {self.grew} of {self.later} later calls grew it, {_mib(total)} in all; "
            f"decided at > {_mib(self.floor)} and > 3 standard errors)"
        )


def least_squares(ys: Sequence[float]) -> tuple[float, float]:
    """Slope of ``ys`` against 0, 1, 2... and its standard error (0 with fewer than 3 points)."""
    n = len(ys)
    if n < 2:
        return 0.0, 0.0
    mean_x, mean_y = (n - 1) / 2, sum(ys) / n
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    slope = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(ys)) / sxx
    if n < 3:
        return slope, 0.0
    residual = sum((y - mean_y - slope * (i - mean_x)) ** 2 for i, y in enumerate(ys))
    return slope, math.sqrt(residual / (n - 2) / sxx)


@dataclass
class MemoryStabilityResult:
    technique: str
    device: str
    dtype: str
    call: str  # what was repeated
    calls: int
    memories: list[Growth] = field(default_factory=list)
    kind: str = "memory_stability"
    check: str = "memory_stability"

    @property
    def failures(self) -> list[str]:
        return [
            f"{m.describe()}: it keeps growing over {self.calls} identical calls of {self.call}; something is kept "
            "from every call (a cache, list or hook holding tensors)"
            for m in self.memories
            if m.growing
        ]

    @property
    def passed(self) -> bool:
        return bool(self.memories) and not self.failures

    @property
    def metrics(self) -> dict[str, float | None]:
        by = {m.memory: m for m in self.memories}
        host, dev = by.get("host RSS"), by.get("device allocated")
        return {
            "host_growth_per_call": host.slope if host else None,
            "host_growth_stderr": host.stderr if host else None,
            "device_growth_per_call": dev.slope if dev else None,
            "device_growth_stderr": dev.stderr if dev else None,
            "calls": float(self.calls),
        }

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"memory stability {verdict}: {self.technique} ({self.dtype}) on {self.device}, {self.calls} identical "
            f"calls of {self.call}, the first {self.memories[0].warmup if self.memories else WARMUP} left out"
        ]
        lines.extend(f"  {m.describe()}" for m in self.memories if not m.growing)
        lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(passed=self.passed, failures=self.failures, metrics=self.metrics, variant=f"{self.calls} calls")
        return d


def memory_stability(
    host: Sequence[int],
    device_allocated: Sequence[int] | None,
    *,
    technique: str,
    device: str,
    dtype: str,
    call: str,
    warmup: int = WARMUP,
) -> MemoryStabilityResult:
    result = MemoryStabilityResult(technique, device, dtype, call, len(host))
    result.memories.append(Growth("host RSS", list(host), warmup, HOST_FLOOR))
    if device_allocated is not None:
        result.memories.append(Growth("device allocated", list(device_allocated), warmup, DEVICE_FLOOR))
    return result

"""Memory probes: real weight storage (tensor subclasses of torchao/quanto unwrapped, bitsandbytes' side tensors
counted; ``get_memory_footprint()`` says 1.0x for torchao and quanto), peak device memory and peak host RSS."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any


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


def out_of_memory_message(exc: BaseException, device: str, freed_bytes: int | None) -> str:
    """A readable OOM failure: what was asked for, what was free, and what was freed afterwards."""
    import re

    text = str(exc)
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", text)
    free = re.search(r"of which ([\d.]+ [KMGT]?i?B) (?:is )?free", text)
    total = re.search(r"total capacity of ([\d.]+ [KMGT]?i?B)", text)
    parts = [f"out of memory on {device}"]
    if asked:
        parts.append(f"requested {asked.group(1)}")
    if free:
        parts.append(f"available {free.group(1)}" + (f" of {total.group(1)}" if total else ""))
    if not asked and not free:
        parts.append(text.splitlines()[0][:300] if text else type(exc).__name__)
    if freed_bytes is not None:
        parts.append(f"freed {freed_bytes / 2**20:.1f} MiB before the next test (model dropped, cache emptied)")
    return "; ".join(parts)


def _release_free_heap() -> Callable[[], Any]:
    """glibc's ``malloc_trim(0)``: the allocator hands its free pages back, so that resident memory counts what is
    alive rather than what the allocator kept (without it, RSS swings by MiBs between identical calls); a no-op where
    the C library has none."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def memory_after_calls(call: Callable[[], Any], device: str, calls: int) -> tuple[list[int], list[int] | None]:
    """Resident host memory and allocated device memory (cuda; None elsewhere) after each of ``calls`` calls of
    ``call``, each read after a full garbage collection and the C heap's free pages handed back (what a leak keeps
    is what survives both)."""
    import gc

    cuda = device.startswith("cuda")
    if cuda:
        import torch
    trim = _release_free_heap()
    host: list[int] = []
    on_device: list[int] = []
    for _ in range(calls):
        call()
        gc.collect()
        trim()
        if cuda:
            torch.cuda.synchronize()
            on_device.append(int(torch.cuda.memory_allocated()))
        host.append(_statm_rss())
    return host, on_device if cuda else None

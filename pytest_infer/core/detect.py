"""Detect the stack this process runs on (device, host, installed packages) and validate device specs.

torch is imported lazily, when a stack is first detected.
"""

from __future__ import annotations

import importlib
import os
import platform as _platform
import shutil
import subprocess
import sys
from dataclasses import replace
from functools import cache, partial
from typing import Any

from pytest_infer.core import nvml
from pytest_infer.core.stack import _SPEC_RE, ACCEPTED_DEVICE_SPECS, TRACKED_PACKAGES, Stack, _probe, package_version


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return lines[0].strip() or None if lines else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        name = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if name:
            return name
    return _platform.processor() or _platform.machine() or "unknown cpu"


@cache
def cpu_flags() -> frozenset[str]:
    """The host CPU's feature flags (``/proc/cpuinfo``; empty where unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _host_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _format_cudnn(v: int | None) -> str | None:
    if not v:
        return None
    if v >= 10000:  # cuDNN 9+: major*10000 + minor*100 + patch
        return f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
    return f"{v // 1000}.{v % 1000 // 100}.{v % 100}"  # cuDNN <= 8


def _cudnn_version(torch: Any) -> str | None:
    if torch.version.hip or not torch.backends.cudnn.is_available():
        return None  # on ROCm this would be the MIOpen version
    return _format_cudnn(torch.backends.cudnn.version())


def _nvidia_driver() -> str | None:
    smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    return nvml.driver_version() or _run(smi)


def _torch() -> Any:
    """The torch module, imported on first use; None when it cannot be imported."""
    return _probe(partial(importlib.import_module, "torch"))


def _count(torch: Any, kind: str) -> int:
    """Number of usable devices of backend ``kind`` ("cuda", "xpu", "mps")."""
    if torch is None:
        return 0
    if kind == "mps":
        return 1 if _probe(lambda: torch.backends.mps.is_available()) else 0
    mod = getattr(torch, kind, None)
    if mod is None or not _probe(mod.is_available):
        return 0
    return int(_probe(mod.device_count) or 0)


def available_devices() -> list[str]:
    """Device strings usable on this machine, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    torch = _torch()
    devices = ["cpu"]
    for kind in ("cuda", "xpu"):
        devices += [f"{kind}:{i}" for i in range(_count(torch, kind))]
    return devices + (["mps"] if _count(torch, "mps") else [])


def validate_device(spec: str) -> str | None:
    """None if ``spec`` is usable here, else a one-line message listing valid choices."""
    match = _SPEC_RE.match(spec.strip())
    if not match:
        return (
            f"invalid device {spec!r}: accepted forms are {ACCEPTED_DEVICE_SPECS}"
            f" (available here: {', '.join(available_devices())})"
        )
    kind, index = match.group(1), match.group(2)
    if kind in ("auto", "cpu"):
        return None if index is None else f"invalid device {spec!r}: use '{kind}' without an index"
    if kind == "mps" and index is not None:
        return f"invalid device {spec!r}: use 'mps' without an index"
    torch = _torch()
    n = _count(torch, kind)
    if n == 0:
        if torch is None:
            return f"{spec} requested but torch is not installed"
        build = f"torch {torch.__version__}"
        if kind == "cuda" and not (torch.version.cuda or torch.version.hip):
            build += " is a CPU build"
        elif kind == "cuda":
            build += " has GPU support but sees no GPU; check the driver and CUDA_VISIBLE_DEVICES"
        check = "torch.backends.mps" if kind == "mps" else f"torch.{kind}"
        return (
            f"{spec} requested but {check}.is_available() is False ({build});"
            f" available: {', '.join(available_devices())}"
        )
    if index is not None and int(index) >= n:
        have = ", ".join(f"{kind}:{i}" for i in range(n))
        return f"{spec} is not available: this machine has {have} only"
    return None


@cache
def detect_stack(device: str = "auto") -> Stack:
    """Probe the stack as seen from ``device``; probe failures become None.

    Raises ValueError only for a device spec that :func:`validate_device` rejects.
    """
    error = validate_device(device)
    if error:
        raise ValueError(error)
    torch = _torch()
    kind, _, idx = device.strip().partition(":")
    if kind == "auto":
        kind = next((k for k in ("cuda", "xpu", "mps") if _count(torch, k)), "cpu")
    i = int(idx or 0)
    cpu_name, host_mem = _cpu_name(), _host_memory()
    base = Stack(
        device_kind="cpu",
        device_name=cpu_name,
        device_memory_bytes=host_mem,
        cuda_version=_probe(lambda: torch.version.cuda),
        rocm_version=_probe(lambda: torch.version.hip),
        cudnn_version=_probe(lambda: _cudnn_version(torch)),
        packages={p: package_version(p) for p in TRACKED_PACKAGES},
        cpu_name=cpu_name,
        cpu_count=_cpu_count(),
        host_memory_bytes=host_mem,
        cpu_capability=_probe(lambda: str(torch.backends.cpu.get_cpu_capability()).lower()),
    )
    if kind == "cpu":
        return base
    if kind == "mps":
        mem = _probe(lambda: int(torch.mps.recommended_max_memory()))
        return replace(base, device_kind="mps", device_name=cpu_name, device_memory_bytes=mem or host_mem)
    mod = getattr(torch, kind)
    props = _probe(lambda: mod.get_device_properties(i))
    rocm = kind == "cuda" and bool(base.rocm_version)
    cc = _probe(lambda: tuple(mod.get_device_capability(i))) if kind == "cuda" else None
    driver = _probe(lambda: str(props.driver_version)) if kind == "xpu" else None
    if kind == "cuda" and not rocm:
        driver = _nvidia_driver()
    return replace(
        base,
        device_kind="rocm" if rocm else kind,
        device_name=_probe(lambda: str(mod.get_device_name(i))) or f"unknown {kind} device",
        compute_capability=cc,
        device_count=_count(torch, kind),
        device_memory_bytes=_probe(lambda: int(props.total_memory)),
        driver_version=driver,
    )

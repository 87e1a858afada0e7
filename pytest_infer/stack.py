"""Detect the software/hardware stack and describe what a technique needs from it.

Nothing here imports torch at module level: :func:`detect_stack` imports it lazily.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform as _platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache, partial
from importlib.machinery import PathFinder
from types import MappingProxyType
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

TRACKED_PACKAGES: tuple[str, ...] = (
    "torch",
    "transformers",
    "accelerate",
    "flash-attn",
    "flash-attn-3",
    "flash-attn-4",
    "bitsandbytes",
    "kernels",
    "torchao",
    "optimum-quanto",
    "hqq",
    "triton",
)
DEVICE_KINDS = ("cuda", "rocm", "xpu", "mps", "cpu")
ACCEPTED_DEVICE_SPECS = "auto, cpu, cuda, cuda:N, xpu, xpu:N, mps"
_SPEC_RE = re.compile(r"^(auto|cpu|mps|cuda|xpu)(?::(\d+))?$")
_GIB = 1024**3
_CPU_NOISE = re.compile(r"\((r|tm)\)|\b(cpu|processor|\d+-core)\b|@.*$", re.IGNORECASE)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_version(dist: str) -> str | None:
    """Installed version of distribution ``dist`` (no import), or None."""
    for name in dict.fromkeys((dist, dist.replace("-", "_"), dist.replace("_", "-"))):
        version = _probe(partial(importlib.metadata.version, name))
        if version:
            return str(version)
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".")


def _slug(text: str, limit: int) -> str:
    s = re.sub(r"[^a-z0-9.]+", "_", text.lower()).strip("_.")
    return s[:limit].rstrip("_.") or "unknown"


def _short_version(v: str | None) -> str:
    return ".".join(re.findall(r"\d+", v or "")[:2]) or "unknown"


def _cc_str(cc: tuple[int, int] | None) -> str | None:
    return None if cc is None else f"{cc[0]}.{cc[1]}"


def _cc_parse(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    major, minor = ([*str(v).split("."), "0"])[:2] if isinstance(v, str) else v
    return int(major), int(minor)


@dataclass(frozen=True)
class Stack:
    """One device as seen by a test, plus the host and installed packages."""

    device_kind: str
    device_name: str
    compute_capability: tuple[int, int] | None = None
    device_count: int = 1
    device_memory_bytes: int | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    rocm_version: str | None = None
    cudnn_version: str | None = None
    python: str = field(default_factory=_platform.python_version)
    platform: str = field(default_factory=_platform.platform)
    packages: Mapping[str, str | None] = field(default_factory=dict)
    machine: str = field(default_factory=_platform.machine)
    cpu_name: str = ""
    cpu_count: int | None = None
    host_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.device_kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device kind {self.device_kind!r}, expected {DEVICE_KINDS}")
        object.__setattr__(self, "packages", MappingProxyType(dict(self.packages)))
        object.__setattr__(self, "compute_capability", _cc_parse(self.compute_capability))

    def __hash__(self) -> int:
        return hash(tuple((k, v) for k, v in self.to_dict().items() if k != "packages") + tuple(self.packages.items()))

    def version(self, pkg: str) -> str | None:
        """Recorded version of ``pkg``; packages not recorded are looked up live."""
        wanted = _norm(pkg)
        for name, version in self.packages.items():
            if _norm(name) == wanted:
                return version
        return package_version(pkg)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_kind": self.device_kind,
            "device_name": self.device_name,
            "compute_capability": _cc_str(self.compute_capability),
            "device_count": self.device_count,
            "device_memory_bytes": self.device_memory_bytes,
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "rocm_version": self.rocm_version,
            "cudnn_version": self.cudnn_version,
            "python": self.python,
            "platform": self.platform,
            "packages": dict(self.packages),
            "machine": self.machine,
            "cpu_name": self.cpu_name,
            "cpu_count": self.cpu_count,
            "host_memory_bytes": self.host_memory_bytes,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stack:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones defaulted."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def header_line(self) -> str:
        mem_b = self.device_memory_bytes
        mem = "" if mem_b is None else f"{mem_b / _GIB:.1f} GiB"
        cc = _cc_str(self.compute_capability)
        if self.device_kind == "cpu":
            bits = [f"{self.cpu_count} cores" if self.cpu_count else "", mem]
        else:
            cap = f"{'sm' if self.device_kind == 'cuda' else 'cc'} {cc}" if cc else ""
            bits = [cap, f"{self.device_count}x {mem}".strip()]
        inner = ", ".join(b for b in bits if b)
        head = f"infer stack: {self.device_kind} {self.device_name}"
        parts = [head + (f" ({inner})" if inner else "")]
        if self.device_kind != "cpu":
            build = [
                f"{label} {v}"
                for label, v in (
                    ("driver", self.driver_version),
                    ("cuda", self.cuda_version),
                    ("rocm", self.rocm_version),
                    ("cudnn", self.cudnn_version),
                )
                if v
            ]
            if build:
                parts.append(" ".join(build))
        pkgs = " ".join(f"{k} {v}" for k, v in self.packages.items() if v)
        parts.append(pkgs or "torch not installed")
        return _one_line(" | ".join(parts))

    def key(self) -> str:
        """Short filesystem-safe key separating benchmark baselines per stack (<= 80 chars)."""
        torch_v = self.version("torch")
        tail = "-torch" + (_slug(torch_v.split("+")[0], 20) if torch_v else "none")
        if self.device_kind == "cuda":
            tail = f"-cu{_short_version(self.cuda_version)}{tail}"
        elif self.device_kind == "rocm":
            tail = f"-rocm{_short_version(self.rocm_version)}{tail}"
        if self.device_kind == "cpu":
            model = _CPU_NOISE.sub(" ", self.device_name)
            head = f"cpu-{_slug(self.machine, 16)}-{_slug(model, 24)}"
        else:
            head = f"{self.device_kind}-{_slug(self.device_name, 80)}"
        return head[: 80 - len(tail)].rstrip("_.-") + tail

    def for_device(self, device: str) -> Stack:
        """This stack as seen by a test on ``device`` ("cpu" view of a GPU stack, etc.)."""
        match = _SPEC_RE.match(device)
        kind = match.group(1) if match else None
        if kind == "cpu":
            return replace(
                self,
                device_kind="cpu",
                device_name=self.cpu_name or self.machine,
                compute_capability=None,
                device_count=1,
                device_memory_bytes=self.host_memory_bytes,
                driver_version=None,
            )
        if kind in ("auto", self.device_kind) or (kind, self.device_kind) == ("cuda", "rocm"):
            return self
        raise ValueError(f"{device!r} is not a device of this {self.device_kind} stack")


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


def _probe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


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


def _nvml_driver() -> str:
    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    try:
        v = pynvml.nvmlSystemGetDriverVersion()
    finally:
        pynvml.nvmlShutdown()
    return v.decode() if isinstance(v, bytes) else str(v)


def _nvidia_driver() -> str | None:
    smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    return _probe(_nvml_driver) or _run(smi)


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


Check = Callable[[Stack], "str | None"]


@dataclass(frozen=True)
class Requirements:
    """What a technique needs from the stack; :meth:`check` gives the first unmet need."""

    device_kinds: frozenset[str] = frozenset()
    min_compute_capability: tuple[int, int] | None = None
    packages: tuple[tuple[str, str], ...] = ()
    min_device_count: int = 1
    custom: tuple[Check, ...] = ()
    python_modules: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device_kinds", frozenset(self.device_kinds))
        unknown = self.device_kinds - set(DEVICE_KINDS)
        if unknown:
            raise ValueError(f"unknown device kinds {sorted(unknown)}, expected {DEVICE_KINDS}")
        object.__setattr__(self, "min_compute_capability", _cc_parse(self.min_compute_capability))
        pkgs = self.packages.items() if isinstance(self.packages, Mapping) else self.packages
        object.__setattr__(self, "packages", tuple((str(p), str(s or "")) for p, s in pkgs))
        object.__setattr__(self, "custom", tuple(self.custom))
        object.__setattr__(self, "python_modules", tuple(self.python_modules))
        for pkg, spec in self.packages:
            try:
                SpecifierSet(spec)
            except InvalidSpecifier:
                raise ValueError(f"invalid version specifier {spec!r} for {pkg}") from None

    def check(self, stack: Stack) -> str | None:
        reason = self._check(stack)
        return None if reason is None else _one_line(reason)

    def _check(self, stack: Stack) -> str | None:
        if self.device_kinds and stack.device_kind not in self.device_kinds:
            kinds = " or ".join(sorted(self.device_kinds))
            return f"needs a {kinds} device, running on {stack.device_kind}"
        n, kind = stack.device_count, stack.device_kind
        if n < self.min_device_count:
            return f"needs {self.min_device_count} {kind} devices, found {n}"
        want, cc = self.min_compute_capability, stack.compute_capability
        if want is not None and (cc is None or cc < want):
            found = f"{cc[0]}.{cc[1]}" if cc else f"none ({stack.device_kind} device)"
            return f"needs compute capability >= {want[0]}.{want[1]}, found {found}"
        for pkg, spec in self.packages:
            found_v = stack.version(pkg)
            if found_v is None:
                target = repr(f"{pkg}{spec}") if spec else pkg
                return f"{pkg} not installed (pip install {target})"
            try:
                ok = SpecifierSet(spec, prereleases=True).contains(Version(found_v))
            except InvalidVersion:
                return f"cannot check {pkg}{spec}: version {found_v!r} is not PEP 440"
            if not ok:
                return f"needs {pkg}{spec}, found {found_v}"
        for module in self.python_modules:
            if not _module_available(module):
                return f"module {module} not importable"
        for fn in self.custom:
            try:
                reason = fn(stack)
            except Exception as exc:
                return f"check {getattr(fn, '__name__', fn)!s} failed: {type(exc).__name__}: {exc}"
            if reason:
                return reason
        return None

    def merge(self, other: Requirements) -> Requirements:
        """Requirements of two stacked techniques: both must hold."""
        kinds = self.device_kinds & other.device_kinds
        if self.device_kinds and other.device_kinds and not kinds:
            mine, theirs = ("/".join(sorted(r.device_kinds)) for r in (self, other))
            raise ValueError(
                f"contradictory requirements: {self._label()} needs {mine}, {other._label()} needs {theirs}"
            )
        specs: dict[str, tuple[str, list[str]]] = {}
        for pkg, spec in self.packages + other.packages:
            parts = specs.setdefault(_norm(pkg), (pkg, []))[1]
            parts += [x for x in (y.strip() for y in spec.split(",")) if x and x not in parts]
        caps = [c for c in (self.min_compute_capability, other.min_compute_capability) if c]
        return Requirements(
            device_kinds=kinds or self.device_kinds or other.device_kinds,
            min_compute_capability=max(caps) if caps else None,
            packages=tuple((name, ",".join(parts)) for name, parts in specs.values()),
            min_device_count=max(self.min_device_count, other.min_device_count),
            custom=tuple(dict.fromkeys(self.custom + other.custom)),
            python_modules=tuple(dict.fromkeys(self.python_modules + other.python_modules)),
            name=" + ".join(n for n in (self.name, other.name) if n),
        )

    def _label(self) -> str:
        return self.name or f"({self.describe()})"

    def describe(self) -> str:
        parts = ["|".join(sorted(self.device_kinds))] if self.device_kinds else []
        if self.min_device_count > 1:
            parts.append(f"{self.min_device_count} devices")
        if self.min_compute_capability:
            parts.append(f"sm>={_cc_str(self.min_compute_capability)}")
        parts += [f"{p}{s}" for p, s in self.packages]
        parts += [f"module {m}" for m in self.python_modules]
        parts += [f"check {getattr(fn, '__name__', 'custom')}" for fn in self.custom]
        return ", ".join(parts) or "any device"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device_kinds": sorted(self.device_kinds),
            "min_compute_capability": _cc_str(self.min_compute_capability),
            "packages": [[p, s] for p, s in self.packages],
            "min_device_count": self.min_device_count,
            "python_modules": list(self.python_modules),
            "custom": [str(getattr(fn, "__qualname__", fn)) for fn in self.custom],
        }


def _module_available(name: str) -> bool:
    """Whether ``name`` can be imported, without executing any package ``__init__``."""
    if name in sys.modules:
        return True
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for i in range(1, len(parts)):
            locations = None if spec is None else spec.submodule_search_locations
            if locations is None:
                return False
            loaded = sys.modules.get(".".join(parts[: i + 1]))
            spec = loaded.__spec__ if loaded else PathFinder.find_spec(parts[i], list(locations))
    except (ImportError, ValueError, AttributeError):
        return False
    return spec is not None

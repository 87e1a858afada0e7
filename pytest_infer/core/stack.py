"""The stack fingerprint (:class:`Stack`: device, host, package versions), its keys, and values chosen per stack
(:class:`ByStack`, :func:`stack_key_specificity`). Detection lives in :mod:`pytest_infer.core.detect`."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform as _platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from pytest_infer.core.errors import TechniqueError

T = TypeVar("T")

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
    cpu_capability: str | None = None  # the vector ISA torch dispatches CPU kernels to (avx2, avx512, ...)

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
            "cpu_capability": self.cpu_capability,
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
        """Short filesystem-safe key of this stack, software included (<= 80 chars): the hardware (see
        :meth:`stack_class`), CUDA/ROCm, torch and transformers. It separates benchmark baselines and names the
        columns of ``pytest-infer merge`` and ``compare``: two torch or transformers versions never share one."""
        torch_v, tf_v = self.version("torch"), self.version("transformers")
        tail = "-torch" + (_slug(torch_v.split("+")[0], 20) if torch_v else "none")
        tail += "-tf" + (_slug(tf_v, 20) if tf_v else "none")
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

    def stack_class(self) -> str:
        """The hardware this stack's numbers belong to, without software versions (goldens are keyed by it, and
        ``pytest-infer compare`` pairs reports by it): a GPU by its name and compute capability (an H100 run
        finds another H100's goldens, never an A10's); a CPU by its architecture and the vector ISA torch
        dispatches its kernels to (``cpu-x86_64-avx2``), or its model name where that is unknown."""
        if self.device_kind == "cpu":
            isa = self.cpu_capability
            tail = _slug(isa, 16) if isa else _slug(_CPU_NOISE.sub(" ", self.device_name), 24)
            return f"cpu-{_slug(self.machine, 16)}-{tail}"
        cc = self.compute_capability
        cap = f"-sm{cc[0]}{cc[1]}" if cc is not None and self.device_kind == "cuda" else ""
        return f"{self.device_kind}-{_slug(self.device_name, 60)}{cap}"

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


def _probe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


def stack_key_specificity(key: str, stack: Stack) -> int:
    """How well ``key`` ("default", "cuda", "cuda:9", "cuda:9.0") matches ``stack``: -1 no match, 0..3."""
    if key in ("default", "*", ""):
        return 0
    kind, _, cap = key.partition(":")
    if kind != stack.device_kind:
        return -1
    cc = stack.compute_capability
    if not cap:
        return 1
    if cc is not None and cap == f"{cc[0]}.{cc[1]}":
        return 3
    if cc is not None and cap == str(cc[0]):
        return 2
    return -1


class ByStack(Generic[T]):
    """Values that differ by stack, best match wins (like ``transformers.testing_utils.Expectations``).

    Example::

        ByStack({"default": Tolerance(max_abs=0.5), "cuda:9.0": Tolerance(max_abs=0.8)})
    """

    def __init__(self, values: Mapping[str, T]) -> None:
        if not values:
            raise TechniqueError("ByStack needs at least one stack key")
        self.values = dict(values)

    def select(self, stack: Stack) -> T | None:
        scored = [(stack_key_specificity(k, stack), v) for k, v in self.values.items()]
        scored = [(s, v) for s, v in scored if s >= 0]
        return max(scored, key=lambda sv: sv[0])[1] if scored else None

    def __repr__(self) -> str:
        return f"ByStack({self.values!r})"


def stack_key_problem(key: Any) -> str | None:

    if key is None:
        return None  # everywhere
    if not isinstance(key, str):
        return f"stack={key!r} must be a string such as 'cuda', 'cuda:9' or 'cuda:9.0'"
    if key in ("default", "*", ""):
        return None
    kind, _, cap = key.partition(":")
    if kind not in DEVICE_KINDS or (cap and not re.fullmatch(r"\d+(\.\d+)?", cap)):
        return (
            f"stack={key!r} matches no stack: use a device kind ({', '.join(DEVICE_KINDS)}), optionally with a "
            "compute capability ('cuda:9', 'cuda:9.0'), or 'default'"
        )
    return None

"""NVML, the NVIDIA driver's management library, through NVIDIA's binding nvidia-ml-py (optional:
``pip install 'pytest-infer[nvml]'``): the driver version and the GPU count, without initializing CUDA, importing
torch or starting ``nvidia-smi``.

nvidia-ml-py's module is named ``pynvml``, the name of the deprecated third-party ``pynvml`` package too (which
warns at import, and an old one shadows NVIDIA's module): the import here is quiet, and :func:`binding` names
the distribution that answered. Everything degrades to None — no binding, no driver (a machine without an NVIDIA
GPU), any NVML error — and the callers fall back to ``/proc`` or ``nvidia-smi``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def _module() -> Any | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecated `pynvml` distribution's FutureWarning at import
        try:
            import pynvml  # nvidia-ml-py's module
        except ImportError:
            return None
    return pynvml


def binding() -> str | None:
    """The installed NVML binding: ``nvidia-ml-py 13.580.82``, ``pynvml 11.5.3 (deprecated: pip install
    nvidia-ml-py)``, or None."""
    for dist, note in (("nvidia-ml-py", ""), ("pynvml", " (deprecated: pip install nvidia-ml-py)")):
        try:
            return f"{dist} {importlib.metadata.version(dist)}{note}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


@contextlib.contextmanager
def _initialized(nvml: Any) -> Iterator[Any]:
    nvml.nvmlInit()
    try:
        yield nvml
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _ask(query: Callable[[Any], T]) -> T | None:
    nvml = _module()
    if nvml is None:
        return None
    try:
        with _initialized(nvml):
            return query(nvml)
    except Exception:  # NVMLError_LibraryNotFound (no driver), NVMLError_DriverNotLoaded, ...
        return None


def driver_version() -> str | None:
    """The NVIDIA driver version (``580.95.05``), or None."""
    value = _ask(lambda nvml: nvml.nvmlSystemGetDriverVersion())
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_count() -> int | None:
    """The NVIDIA GPUs the driver sees (all of them: ``CUDA_VISIBLE_DEVICES`` does not apply to NVML), or None."""
    count = _ask(lambda nvml: nvml.nvmlDeviceGetCount())
    return None if count is None else int(count)

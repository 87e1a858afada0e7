"""The dtypes a run can use, their aliases (``bf16``...), and their torch objects (torch imported on use)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pytest_infer.core.errors import ConfigError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
HALF = ("float16", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


def is_dtype(name: str) -> bool:
    """Whether ``name`` names a dtype (``bfloat16``, ``bf16``, ``torch.float16``...)."""
    n = name.strip().lower().removeprefix("torch.")
    return n in DTYPES or n in DTYPE_ALIASES


def normalize_dtype(name: str) -> str:
    """``"bf16"`` -> ``"bfloat16"``; raises :class:`ConfigError` listing the valid names."""
    n = name.strip().lower().removeprefix("torch.")
    n = DTYPE_ALIASES.get(n, n)
    if n not in DTYPES:
        raise ConfigError(
            f"unknown dtype {name!r}; valid choices: {', '.join(DTYPES)} (aliases: {', '.join(DTYPE_ALIASES)})"
        )
    return n


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


DtypeCheck = Callable[[str, str], "str | None"]  # (device kind, dtype) -> why it cannot run, or None


def half_only(what: str) -> DtypeCheck:
    """A technique's dtype check: ``what`` runs float16/bfloat16 only."""

    def check(device_kind: str, dtype: str) -> str | None:
        return None if dtype in HALF else f"{what} runs float16/bfloat16 only, not {dtype}"

    return check


def half_only_on(kind: str, what: str) -> DtypeCheck:
    """A technique's dtype check: ``what`` runs float16/bfloat16 only on device kind ``kind``."""

    def check(device_kind: str, dtype: str) -> str | None:
        if device_kind == kind and dtype not in HALF:
            return f"{what} runs float16/bfloat16 only on {kind}, not {dtype}"
        return None

    return check

"""How numbers and texts are shown in messages: one helper each, shared by every result's message."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pytest_infer.core.errors import ConfigError


def number(x: float | None, spec: str = ".3g") -> str:
    """``x`` in ``spec`` format, or ``n/a`` when it is unknown (None or NaN)."""
    return "n/a" if x is None or math.isnan(x) else format(x, spec)


def shorten(text: str, n: int = 40) -> str:
    """``text`` quoted, cut to ``n`` characters with an ellipsis (prompts named in a message)."""
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def parse_bool(value: str | bool, what: str) -> bool:
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{what}: expected true or false, got {value!r}")


def split_list(values: str | Sequence[str], sep: str = ",") -> list[str]:
    """``"a, b" / ["a,b", "c"]`` -> ``["a", "b", "c"]`` (repeated flags and comma lists both work)."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:  # an item of a TOML array may be a number (infer_new_tokens = [16, 64])
        out.extend(p.strip() for p in str(item).replace("\n", sep).split(sep) if p.strip())
    return out

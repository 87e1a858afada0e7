"""How numbers and texts are shown in messages: one helper each, shared by every result's message."""

from __future__ import annotations

import math


def number(x: float | None, spec: str = ".3g") -> str:
    """``x`` in ``spec`` format, or ``n/a`` when it is unknown (None or NaN)."""
    return "n/a" if x is None or math.isnan(x) else format(x, spec)


def shorten(text: str, n: int = 40) -> str:
    """``text`` quoted, cut to ``n`` characters with an ellipsis (prompts named in a message)."""
    return repr(text if len(text) <= n else text[: n - 1] + "…")

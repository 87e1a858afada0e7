"""Numbers as users write them (options, ini values, specs, environment variables): one rule for all of them.

Python's ``int()`` and ``float()`` accept more than a person means: ``int('٣')`` is 3 (Arabic-Indic digits),
``int('1_000')`` is 1000, ``float('inf')``, ``float('nan')`` and ``float('1e999')`` (infinity) are numbers,
and ``'²'.isdigit()`` is True while ``int('²')`` raises. Here a number is written with the ASCII digits
``0-9`` only (an optional sign; for a real number a decimal point and an exponent), it is finite, and it is
never longer than :data:`MAX_DIGITS` digits (a value past any sane bound is refused before Python builds a
huge integer). Anything else is a :class:`NumberError` whose text says what was wrong; the caller adds which
option it was and the bounds that apply.
"""

from __future__ import annotations

import math
import re

MAX_DIGITS = 18  # beyond every bound below and within a C int64; longer is refused as text
MAX_TOKENS = 1_000_000  # new tokens or pad tokens, where the model's positions are not known yet (a hub id)

_INT = re.compile(r"[+-]?[0-9]+")
_REAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


class NumberError(ValueError):
    """Not a number in the accepted form; the message says why (no option name: the caller adds it)."""


def _non_ascii_digits(text: str) -> bool:
    return any(ch.isdigit() or ch.isdecimal() or ch.isnumeric() for ch in text if not ch.isascii())


def _explain(text: str, kind: str) -> str:
    if _non_ascii_digits(text):
        return f"{text!r} is not written with the ASCII digits 0-9, the only ones pytest-infer reads"
    if "_" in text:
        return f"{text!r}: write {kind}s without '_' separators"
    return f"{text!r} is not {'an' if kind == 'integer' else 'a'} {kind}"


def parse_int(raw: object) -> int:
    """``raw`` (a string, or an int) as an integer written with ASCII digits; :class:`NumberError` otherwise."""
    if isinstance(raw, bool):
        raise NumberError(f"{raw!r} is not an integer")
    if isinstance(raw, int):
        return raw
    text = str(raw).strip()
    if not _INT.fullmatch(text):
        raise NumberError(_explain(text, "integer"))
    if len(text.lstrip("+-")) > MAX_DIGITS:
        raise NumberError(f"a {len(text.lstrip('+-'))}-digit number is too large")
    return int(text)


def parse_real(raw: object) -> float:
    """``raw`` as a finite real number written with ASCII digits (``inf``/``nan`` refused)."""
    if isinstance(raw, bool):
        raise NumberError(f"{raw!r} is not a number")
    if isinstance(raw, (int, float)):
        value = float(raw)
    else:
        text = str(raw).strip()
        if not _REAL.fullmatch(text):
            if text.lower().lstrip("+-") in ("inf", "infinity", "nan"):
                raise NumberError(f"{text!r} is not a finite number")
            raise NumberError(_explain(text, "number"))
        if len(text.split("e")[0].split("E")[0].lstrip("+-").replace(".", "")) > MAX_DIGITS * 2:
            raise NumberError(f"{text[:12]}... ({len(text)} characters) is too long for a number")
        value = float(text)
    if not math.isfinite(value):
        raise NumberError(f"{raw!r} is not a finite number (it overflows a float)")
    return value


def why(exc: NumberError) -> str:
    """`` (detail)`` for a refusal that needs explaining (non-ASCII digits, not finite, too large), "" for plain
    text that is simply not a number."""
    text = str(exc)
    return "" if text.endswith(("is not an integer", "is not a number")) else f" ({text})"


def bounded(value: float, minimum: float | None, maximum: float | None) -> str | None:
    """What is wrong with ``value`` against its bounds (None: within them)."""
    if minimum is not None and value < minimum:
        return f"must be at least {_show(minimum)}, got {_show(value)}"
    if maximum is not None and value > maximum:
        return f"must be at most {_show(maximum)}, got {_show(value)}"
    return None


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)

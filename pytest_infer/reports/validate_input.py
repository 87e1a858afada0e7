"""What the ``pytest-infer`` CLI reads, checked before it is used: a report file of a sane size and depth whose
every field ``merge``, ``plot`` and ``compare`` read has the type the schema gives it (docs/report-schema.md).
A :class:`InputError` names the file and the field (``r.json: results[3].metrics.speedup: expected a number or
null, got a string``); the CLI prints it and exits 2. Nothing here imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MAX_BYTES = 256 * 1024 * 1024  # a run of every technique on every dtype writes a few MB
MAX_DEPTH = 32  # the schema nests 6 levels; results carry details a few levels deeper

Check = Callable[[Any], bool]


class InputError(Exception):
    """A file the CLI reads cannot be used; the message names it, the field, and what was expected."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _opt(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _kind(v: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(v), "a number" if _is_number(v) else type(v).__name__)


STACK_FIELDS: dict[str, tuple[Check, str]] = {
    **{
        k: (_opt(_str), "a string or null")
        for k in (
            "key",
            "device_kind",
            "device_name",
            "compute_capability",
            "driver_version",
            "cuda_version",
            "rocm_version",
            "cudnn_version",
            "python",
            "platform",
            "machine",
            "cpu_name",
        )
    },
    **{
        k: (_opt(_is_int), "an integer or null")
        for k in ("device_count", "device_memory_bytes", "cpu_count", "host_memory_bytes")
    },
}
TEST_FIELDS: dict[str, tuple[Check, str]] = {
    "nodeid": (_str, "a string"),
    "outcome": (_str, "a string"),
    "duration_s": (_opt(_is_number), "a number or null"),
    "reason": (_opt(_str), "a string or null"),
}
RESULT_FIELDS: dict[str, tuple[Check, str]] = {
    **{
        k: (_opt(_str), "a string or null")
        for k in (
            "technique",
            "device",
            "dtype",
            "check",
            "kind",
            "variant",
            "scenario",
            "scenario_key",
            "verdict",
            "baseline",
            "reference",
        )
    },
    "passed": (_opt(lambda v: isinstance(v, bool)), "true, false or null"),
}
REQUIRED_TEST = ("nodeid", "outcome")


def _depth(data: Any, limit: int) -> int:
    """How deep ``data`` nests (stops counting past ``limit``), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, level = stack.pop()
        if level > limit:
            return level
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def read_json(path: str | Path, what: str = "a JSON report") -> Any:
    """The JSON in ``path``, refused with an :class:`InputError` when it is not a readable file of at most
    :data:`MAX_BYTES`, not UTF-8, not JSON, or nested deeper than :data:`MAX_DEPTH`."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise InputError(f"{path}: is a directory, expected {what} file")
        if size > MAX_BYTES:
            raise InputError(
                f"{path}: {size / 2**20:,.0f} MiB; {what} is at most {MAX_BYTES // 2**20} MiB: is it the right file?"
            )
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected {what}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); expected {what} written "
            "by `pytest --infer-report PATH`"
        ) from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to read; expected {what}") from None
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise InputError(f"{path}: JSON nested more than {MAX_DEPTH} levels deep; expected {what}")
    return data


def _fields(
    path: str, where: str, entry: Any, fields: Mapping[str, tuple[Check, str]], required: tuple[str, ...] = ()
) -> None:
    if not isinstance(entry, dict):
        raise InputError(f"{path}: {where}: expected an object, got {_kind(entry)}")
    for key in required:
        if key not in entry:
            raise InputError(f"{path}: {where}: no {key!r}")
    for key, (check, expected) in fields.items():
        if key in entry and not check(entry[key]):
            raise InputError(f"{path}: {where}.{key}: expected {expected}, got {_kind(entry[key])}")


def validate_report(path: str, doc: Mapping[str, Any]) -> None:
    """Every field of a run report that the CLI reads has its schema type; :class:`InputError` names the first
    that does not (``results[3].metrics.speedup``). Fields the CLI does not read are not checked."""
    version = doc.get("schema_version")
    if not _is_int(version):
        raise InputError(f"{path}: schema_version: expected an integer, got {_kind(version)}")
    for key, kind in (("results", list), ("tests", list), ("stack", dict)):
        if key not in doc:
            raise InputError(
                f"{path}: report has no {key!r} {'object' if kind is dict else 'list'}; the file is truncated or "
                "not a pytest-infer report"
            )
        if not isinstance(doc[key], kind):
            raise InputError(
                f"{path}: {key}: expected {'an object' if kind is dict else 'a list'}, got {_kind(doc[key])}"
            )
    for key, expected, check in (
        ("tool", "an object", lambda v: isinstance(v, dict)),
        ("config", "an object", lambda v: isinstance(v, dict)),
        ("duration_s", "a number", _is_number),
        ("interrupted", "true or false", lambda v: isinstance(v, bool)),
    ):
        if key in doc and not check(doc[key]):
            raise InputError(f"{path}: {key}: expected {expected}, got {_kind(doc[key])}")
    _fields(path, "stack", doc["stack"], STACK_FIELDS)
    packages = doc["stack"].get("packages", {})
    if not isinstance(packages, dict):
        raise InputError(f"{path}: stack.packages: expected an object, got {_kind(packages)}")
    for name, version_text in packages.items():
        if version_text is not None and not isinstance(version_text, str):
            raise InputError(f"{path}: stack.packages.{name}: expected a string or null, got {_kind(version_text)}")
    for i, test in enumerate(doc["tests"]):
        _fields(path, f"tests[{i}]", test, TEST_FIELDS, REQUIRED_TEST)
    for i, result in enumerate(doc["results"]):
        _fields(path, f"results[{i}]", result, RESULT_FIELDS)
        metrics = result.get("metrics", {})
        if not isinstance(metrics, dict):
            raise InputError(f"{path}: results[{i}].metrics: expected an object, got {_kind(metrics)}")
        for name, value in metrics.items():
            if not (value is None or _is_number(value) or isinstance(value, str)):
                raise InputError(f"{path}: results[{i}].metrics.{name}: expected a number or null, got {_kind(value)}")

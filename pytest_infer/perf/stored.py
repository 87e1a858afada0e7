"""The pytest-benchmark runs stored on disk, per stack (``pytest-infer list``): pytest-infer stores them under
``.benchmarks/<stack key>/<machine id>/NNNN_*.json`` (:func:`pytest_infer.bench.stack_storage`), one folder deeper
than ``pytest-benchmark list`` looks, and each run's ``machine_info`` carries its stack key.

Only file storage is read (a folder, or ``file://PATH``); nothing here imports pytest or pytest-benchmark.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_STORAGE = "file://./.benchmarks"  # pytest-benchmark's default --benchmark-storage
_RUN = re.compile(r"\d{4}_.*\.json")  # what pytest-benchmark's --benchmark-save/--benchmark-autosave write
UNKNOWN_STACK = "(no stack key)"  # a run stored without pytest-infer's machine info


class StorageError(Exception):
    """The storage cannot be listed; the message says what to give instead."""


@dataclass(frozen=True)
class StoredRun:
    path: Path
    stack: str


@dataclass
class StoredRuns:
    root: Path
    runs: list[StoredRun] = field(default_factory=list)  # by stack key, then as pytest-benchmark orders: run number
    warnings: list[str] = field(default_factory=list)  # files that could not be read (skipped, as pytest-benchmark)


def storage_folder(storage: str) -> Path:
    """``file://./.benchmarks`` / ``.benchmarks`` -> ``Path(".benchmarks")``; other schemes are refused."""
    scheme, sep, rest = storage.partition("://")
    if not sep:
        return Path(storage)
    if scheme != "file":
        raise StorageError(
            f"{storage}: only file storage can be listed here (a folder or file://PATH); "
            "for other storages use pytest-benchmark list --storage"
        )
    return Path(rest)


def stored_runs(storage: str = DEFAULT_STORAGE, *, must_exist: bool | None = None) -> StoredRuns:
    """Every stored run under ``storage`` with its stack key. A storage that does not exist is empty when it is
    the default (nothing stored yet) and an error when it was named (a typo); a file is always an error."""
    root = storage_folder(storage)
    must_exist = storage != DEFAULT_STORAGE if must_exist is None else must_exist
    if root.exists() and not root.is_dir():
        raise StorageError(f"{storage}: is a file; give pytest-benchmark's storage folder (--benchmark-storage)")
    if not root.exists():
        if must_exist:
            raise StorageError(f"{storage}: no such folder; give pytest-benchmark's storage (--benchmark-storage)")
        return StoredRuns(root)
    found = StoredRuns(root)
    for path in sorted(p for p in root.rglob("*.json") if _RUN.fullmatch(p.name)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            key = (data.get("machine_info") or {}).get("infer_stack_key") if isinstance(data, dict) else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            found.warnings.append(f"{path}: skipped, not a readable JSON run ({exc})")
            continue
        found.runs.append(StoredRun(path, str(key) if key else UNKNOWN_STACK))
    found.runs.sort(key=lambda r: (r.stack, r.path.name, str(r.path.parent)))
    return found

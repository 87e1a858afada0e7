"""The versioned JSON report document (``--infer-report``), the JSON Schema it follows (shipped in the package:
:func:`schema_file`), and writing it atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
# where the report's JSON Schema ships: this path inside the package (and the repository); the report names it
SCHEMA_REF = f"pytest_infer/schema/report-v{SCHEMA_VERSION}.json"


def schema_file() -> Path:
    """The JSON Schema of the report (``pytest_infer/schema/report-v1.json``, installed with the package): the
    contract for dashboards (docs/report-schema.md)."""
    return Path(__file__).resolve().parents[1] / "schema" / f"report-v{SCHEMA_VERSION}.json"


def report_document(
    stack: Mapping[str, Any],
    config: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    outcomes: Sequence[Mapping[str, Any]],
    duration_s: float,
    versions: Mapping[str, str],
) -> dict[str, Any]:
    """The JSON report (schema version :data:`SCHEMA_VERSION`, documented in docs/report-schema.md and checked by
    the JSON Schema :data:`SCHEMA_REF` names)."""
    return {
        "$schema": SCHEMA_REF,
        "schema_version": SCHEMA_VERSION,
        "tool": dict(versions),
        "stack": dict(stack),
        "config": dict(config),
        "duration_s": round(duration_s, 3),
        "tests": list(outcomes),
        "results": list(results),
    }


def write_atomically(path: str | Path, document: Mapping[str, Any]) -> None:
    """Write JSON next to ``path`` and rename it into place: an interrupted run never leaves half a file."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=1, default=str, allow_nan=True)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""The report's JSON Schema (pytest_infer/schema/report-v1.json) as the tests use it: every report an inner session
writes is validated against it (``run_infer`` in conftest.py), so the shipped schema and the real reports cannot
drift apart."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # the dev extra: a test dependency only, the plugin does not need it

from pytest_infer.reports.document import schema_file


@cache
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(schema_file().read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(document: Any) -> list[str]:
    """Each way ``document`` breaks the schema, as 'path: message' (empty: it conforms)."""
    errors = sorted(validator().iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(document)'}: {e.message[:300]}" for e in errors]


def validate_report(path: Path) -> dict[str, Any]:
    document = json.loads(path.read_text(encoding="utf-8"))
    errors = schema_errors(document)
    assert not errors, f"{path} does not follow {document.get('$schema')}:\n" + "\n".join(errors[:20])
    return document

"""Where the bundled data lives: ``fixtures/`` and ``suites/``.

In a checkout (and an editable install) they sit beside the package; in a built wheel the build
backend maps them into the package (``pytest_infer/fixtures``, ``pytest_infer/suites``).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    inside = _PACKAGE / name
    if inside.is_dir():
        return inside
    return _PACKAGE.parent / name


def fixtures_dir() -> Path:
    return _find("fixtures")


def suites_dir() -> Path:
    return _find("suites")


def default_prompts_file() -> Path:
    return fixtures_dir() / "prompts" / "default.txt"

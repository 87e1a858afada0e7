"""Continuous batching: ``model.generate_batch`` with paged attention."""

from __future__ import annotations

from pytest_infer.technique import Technique


def builtin() -> list[Technique]:
    return []

"""Hub and local kernels through the ``kernels`` library (``kernelize`` with a kernel mapping)."""

from __future__ import annotations

from pytest_infer.technique import Technique


def builtin() -> list[Technique]:
    return []

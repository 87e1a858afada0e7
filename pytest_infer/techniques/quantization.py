"""Weight quantization through ``quantization_config`` in ``from_pretrained``."""

from __future__ import annotations

from pytest_infer.technique import Technique


def builtin() -> list[Technique]:
    return []

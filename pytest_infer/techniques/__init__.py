"""Built-in techniques, one module per family (kernels: a sub-package). Each family's ``builtin()`` lists its
variants; a family says only how to apply them and what they need."""

from __future__ import annotations

from pytest_infer.core.technique import Technique
from pytest_infer.techniques import attention, batching, caching, compilation, kernels, parallelism, quantization


def builtin_techniques() -> list[Technique]:
    families = (attention, compilation, kernels, quantization, caching, parallelism, batching)
    return [t for family in families for t in family.builtin()]

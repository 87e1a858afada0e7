"""Built-in techniques, one module per family. Each module's ``builtin()`` lists its variants."""

from __future__ import annotations

from pytest_infer.technique import Technique


def builtin_techniques() -> list[Technique]:
    from pytest_infer.techniques import (
        attention,
        batching,
        caching,
        compilation,
        kernels,
        parallelism,
        quantization,
    )

    families = (attention, compilation, kernels, quantization, caching, parallelism, batching)
    return [t for family in families for t in family.builtin()]

"""KV caches: ``cache_implementation=`` (and ``cache_config``) in ``generate``."""

from __future__ import annotations

from pytest_infer.stack import Requirements
from pytest_infer.technique import Lazy, Technique
from pytest_infer.techniques.compilation import max_cache_len


def _quantized(backend: str, nbits: int) -> dict[str, object]:
    # residual_length 16: generations here run past it, so the quantized part of the cache is exercised
    return {
        "cache_implementation": "quantized",
        "cache_config": {"backend": backend, "nbits": nbits, "residual_length": 16},
    }


def builtin() -> list[Technique]:
    cuda = Requirements(device_kinds=frozenset({"cuda"}))
    return [
        Technique(
            name="dynamic_cache",
            family="caching",
            description="DynamicCache (the default)",
            generate_kwargs={"cache_implementation": "dynamic"},
            runner="generate",
        ),
        Technique(
            name="static_cache",
            family="caching",
            description="StaticCache, not compiled",
            generate_kwargs={
                "cache_implementation": "static",
                "max_cache_len": Lazy(max_cache_len),
                "disable_compile": True,
            },
            runner="generate",
        ),
        Technique(
            name="offloaded_cache",
            family="caching",
            description="dynamic cache offloaded to CPU between layers",
            generate_kwargs={"cache_implementation": "offloaded"},
            requirements=cuda,
            runner="generate",
        ),
        Technique(
            name="offloaded_static_cache",
            family="caching",
            description="static cache offloaded to CPU",
            generate_kwargs={
                "cache_implementation": "offloaded_static",
                "max_cache_len": Lazy(max_cache_len),
                "disable_compile": True,
            },
            requirements=cuda,
            runner="generate",
        ),
        Technique(
            name="quantized_cache_quanto_4bit",
            family="caching",
            description="QuantizedCache, quanto, 4 bits",
            generate_kwargs=_quantized("quanto", 4),
            requirements=Requirements(packages=(("optimum-quanto", ">=0.2.5"),)),
            runner="generate",
        ),
        Technique(
            name="quantized_cache_quanto_2bit",
            family="caching",
            description="QuantizedCache, quanto, 2 bits",
            generate_kwargs=_quantized("quanto", 2),
            requirements=Requirements(packages=(("optimum-quanto", ">=0.2.5"),)),
            runner="generate",
        ),
        Technique(
            name="quantized_cache_hqq_4bit",
            family="caching",
            description="QuantizedCache, HQQ, 4 bits",
            generate_kwargs=_quantized("HQQ", 4),
            requirements=Requirements(packages=(("hqq", ""),)),
            runner="generate",
        ),
    ]

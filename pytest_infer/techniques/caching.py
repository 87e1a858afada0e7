"""KV caches: ``cache_implementation=`` (and ``cache_config``) in ``generate``."""

from __future__ import annotations

from pytest_infer.core.expectation import Expectation
from pytest_infer.core.requirements import Requirements
from pytest_infer.core.technique import Lazy, Technique
from pytest_infer.core.tolerance import Tolerance
from pytest_infer.runtime.kv_cache import max_cache_len


def _quantized(backend: str, nbits: int | None = None) -> dict[str, object]:
    # residual_length 16: generations here run past it, so the quantized part of the cache is exercised
    config: dict[str, object] = {"backend": backend}
    if nbits is not None:  # the fp8 backend is per-tensor, with no bits/groups/residual to set
        config.update(nbits=nbits, residual_length=16)
    return {"cache_implementation": "quantized", "cache_config": config}


def _lossy(min_greedy: float) -> dict[str, Tolerance]:
    """A quantized KV cache changes every attention read: generation is held to a greedy agreement bound
    (share of tokens matching the dynamic-cache reference before each row diverges), measured on the
    embedded model in float32 (docs/techniques.md) with margin; tie_margin as for float32."""
    t = Tolerance(min_greedy=min_greedy, tie_margin=1e-3)
    return dict.fromkeys(("float32", "bfloat16", "float16"), t)


def _kv(ratio: float) -> tuple[Expectation, ...]:
    """KV bytes held on the device vs. the dynamic cache at the same length (suites/test_caching.py)."""
    return (Expectation("kv_memory_ratio", "<=", ratio),)


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
            expectations=_kv(0.6),
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
            expectations=_kv(0.6),
            runner="generate",
        ),
        Technique(
            name="quantized_cache_quanto_4bit",
            family="caching",
            description="QuantizedCache, quanto, 4 bits",
            generate_kwargs=_quantized("quanto", 4),
            requirements=Requirements(packages=(("optimum-quanto", ">=0.2.5"),)),
            expectations=_kv(0.6),
            tolerances=_lossy(0.3),  # measured 0.51 (64 tokens), 0.71 (16)
            runner="generate",
        ),
        Technique(
            name="quantized_cache_quanto_2bit",
            family="caching",
            description="QuantizedCache, quanto, 2 bits",
            generate_kwargs=_quantized("quanto", 2),
            requirements=Requirements(packages=(("optimum-quanto", ">=0.2.5"),)),
            expectations=_kv(0.35),
            tolerances=_lossy(0.04),  # measured 0.076 (64 tokens), 0.29 (16): 2 bits barely track this model
            runner="generate",
        ),
        Technique(
            name="quantized_cache_hqq_4bit",
            family="caching",
            description="QuantizedCache, HQQ, 4 bits",
            generate_kwargs=_quantized("hqq", 4),
            requirements=Requirements(packages=(("hqq", ""),)),
            expectations=_kv(0.6),
            tolerances=_lossy(0.2),  # measured 0.385 (64 tokens), 0.59 (16)
            runner="generate",
        ),
        Technique(
            name="quantized_cache_fp8",
            family="caching",
            description="QuantizedCache, float8 e4m3 per tensor (no residual)",
            generate_kwargs=_quantized("fp8"),
            requirements=Requirements(custom=(_has_fp8_cache,)),
            expectations=_kv(0.6),
            tolerances=_lossy(0.3),  # measured 0.553 (64 tokens), 0.77 (16)
            runner="generate",
        ),
    ]


def _has_fp8_cache(stack: object) -> str | None:
    """The fp8 backend of QuantizedCache is recent; read the installed source (no import at collection)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return "transformers not installed"
    source = Path(next(iter(spec.submodule_search_locations))) / "cache_utils.py"
    if not source.is_file() or "class Fp8QuantizedLayer" not in source.read_text(encoding="utf-8"):
        return "this transformers has no fp8 QuantizedCache backend (Fp8QuantizedLayer)"
    return None

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


def _lossy() -> dict[str, Tolerance]:
    """A quantized KV cache changes every attention read after the prompt: generation parity keeps only a coarse net
    (it must generate; no agreement bound); the verdicts are test_cache_kernel_parity (the cache against its simulated
    twin) and test_cache_quality (perplexity ratio through the cache against its budget; docs/tolerances.md)."""
    t = Tolerance(min_greedy=0.0, tie_margin=1e-3)
    return dict.fromkeys(("float32", "bfloat16", "float16"), t)


def _kv(ratio: float, quality: float | None = None) -> tuple[Expectation, ...]:
    """KV bytes held on the device vs. the dynamic cache at the same length (suites/test_caching.py), and for a
    quantized cache its perplexity-ratio budget (test_cache_quality; docs/tolerances.md)."""
    budget = () if quality is None else (Expectation("perplexity_ratio", "<=", quality),)
    return (Expectation("kv_memory_ratio", "<=", ratio), *budget)


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
            expectations=_kv(0.6, 1.10),
            tolerances=_lossy(),
            runner="generate",
        ),
        Technique(
            name="quantized_cache_quanto_2bit",
            family="caching",
            description="QuantizedCache, quanto, 2 bits",
            generate_kwargs=_quantized("quanto", 2),
            requirements=Requirements(packages=(("optimum-quanto", ">=0.2.5"),)),
            expectations=_kv(0.35, 3.5),
            tolerances=_lossy(),
            runner="generate",
        ),
        Technique(
            name="quantized_cache_hqq_4bit",
            family="caching",
            description="QuantizedCache, HQQ, 4 bits",
            generate_kwargs=_quantized("hqq", 4),
            requirements=Requirements(packages=(("hqq", ""),)),
            expectations=_kv(0.6, 1.10),
            tolerances=_lossy(),
            runner="generate",
        ),
        Technique(
            name="quantized_cache_fp8",
            family="caching",
            description="QuantizedCache, float8 e4m3 per tensor (no residual)",
            generate_kwargs=_quantized("fp8"),
            requirements=Requirements(custom=(_has_fp8_cache,)),
            expectations=_kv(0.6, 1.03),
            tolerances=_lossy(),
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

"""Compilation: static cache with Transformers' auto-compile, and explicit ``torch.compile`` of the forward.

Transformers auto-compiles ``generate(cache_implementation="static")`` only on cuda/xpu unless the
``CompileConfig`` opts in to every device, through a private flag (``_compile_all_devices``). We set it only
where the installed ``CompileConfig`` declares it; where it does not, the static technique compiles the
forward itself (:func:`compile_forward`), so the technique still compiles on every version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_infer.core.expectation import Expectation
from pytest_infer.core.requirements import Requirements
from pytest_infer.core.technique import Lazy, Technique
from pytest_infer.runtime.kv_cache import max_cache_len


def auto_compile_supported() -> bool:
    from transformers import CompileConfig

    return hasattr(CompileConfig, "_compile_all_devices")


def compile_config(mode: str) -> Callable[..., Any]:
    def make() -> Any:
        from transformers import CompileConfig

        config = CompileConfig(mode=mode, fullgraph=False)
        if auto_compile_supported():
            config._compile_all_devices = True  # type: ignore[assignment]  # private, guarded above: compile on CPU too
        return config

    make.__name__ = f"CompileConfig(mode={mode!r})"
    return make


def compile_forward(
    mode: str, *, only_without_auto_compile: bool = False, dynamic: bool | None = True
) -> Callable[[Any], Any]:
    def prepare(model: Any) -> Any:
        import torch

        if only_without_auto_compile and auto_compile_supported():
            return model
        # dynamic=True: sequence lengths and cache lengths vary call by call; without it every first change of
        # a dimension recompiles (measured: 2 recompiles over 3 calls with new prompt lengths / max_new_tokens)
        model.forward = torch.compile(model.forward, mode=mode, dynamic=dynamic)
        return model

    return prepare


def builtin() -> list[Technique]:
    cuda = Requirements(device_kinds=frozenset({"cuda"}))
    static_kwargs = {"cache_implementation": "static", "max_cache_len": Lazy(max_cache_len, "fits the call")}
    return [
        Technique(
            name="static_compile",
            family="compilation",
            description="generate(cache_implementation='static') with Transformers' auto-compile (mode default), "
            "fixed max_cache_len",
            generate_kwargs={**static_kwargs, "compile_config": Lazy(compile_config("default"))},
            prepare=compile_forward("default", only_without_auto_compile=True),
            runner="generate",
            compiled=True,
        ),
        Technique(
            name="static_compile_reduce_overhead",
            family="compilation",
            description="static cache + auto-compile with mode reduce-overhead (CUDA graphs): Transformers' default on cuda",
            generate_kwargs={**static_kwargs, "compile_config": Lazy(compile_config("reduce-overhead"))},
            requirements=cuda,
            # held on an H200 (docs/stacks/h200.md): 5.3x decode over sdpa + dynamic cache on a 0.7 B Llama
            expectations=(Expectation("decode_speedup", ">=", 1.5, stacks=("cuda:9.0",)),),
            runner="generate",
            compiled=True,
        ),
        Technique(
            name="compile",
            family="compilation",
            description="torch.compile(model.forward, dynamic=True), mode default, dynamic cache",
            prepare=compile_forward("default"),
            compiled=True,
        ),
        Technique(
            name="compile_max_autotune",
            family="compilation",
            description="torch.compile(model.forward, mode='max-autotune-no-cudagraphs')",
            prepare=compile_forward("max-autotune-no-cudagraphs"),
            requirements=cuda,
            compiled=True,
        ),
    ]

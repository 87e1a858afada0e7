"""Continuous batching: ``model.generate_batch`` with paged attention.

Each technique loads the model with one attention implementation and runs under ``runner="generate_batch"``
(:func:`pytest_infer.generation.generate_batch`): Transformers' scheduler packs the requests into forwards of at
most ``max_batch_tokens`` tokens over a paged KV cache, whose budget the plugin always sets explicitly
(:data:`pytest_infer.batching.CB_BUDGET`). What runs is watched: the attention implementation of every forward
must be the one requested (``auto_switch_to_flash`` is off, so no silent switch to flash).

Transformers 5.x spells paged attention as the plain implementation (``sdpa``, ``flash_attention_2``...), which
reads the paged cache itself, except ``paged|eager``; the old ``paged|sdpa`` names still load, with a
FutureWarning. Each technique is loaded under the name the installed version wants (:func:`spelled_attention`).
"""

from __future__ import annotations

from pytest_infer.core.dtypes import half_only
from pytest_infer.core.requirements import Requirements
from pytest_infer.core.technique import Lazy, Technique
from pytest_infer.runtime.continuous_batching import spelled_attention

# technique name -> (description, requirements, half precision only)
_CUDA_FLASH = {
    "paged|flash_attention_2": (
        "paged attention through FlashAttention-2 (flash-attn package); flash_attn_with_kvcache decode fast path",
        Requirements(
            device_kinds=frozenset({"cuda"}), min_compute_capability=(8, 0), packages=(("flash-attn", ">=2.3.3"),)
        ),
    ),
    "paged|flash_attention_3": (
        "paged attention through FlashAttention-3 (Hopper, flash-attn-3 package)",
        Requirements(device_kinds=frozenset({"cuda"}), min_compute_capability=(9, 0), packages=(("flash-attn-3", ""),)),
    ),
}


def _attention(name: str) -> Lazy:
    def spelled() -> str:

        return spelled_attention(name)

    return Lazy(spelled, f"{name!r} as the installed Transformers spells it")


def paged_technique(name: str, description: str, requirements: Requirements | None = None, **kw: object) -> Technique:
    """A continuous-batching technique for ``name`` (``paged|sdpa``, ``paged|eager``, ``paged|flash_attention_2``...).

    After loading, the model's attention must be ``name`` or the name Transformers maps it to (``paged|sdpa`` ->
    ``sdpa`` on 5.x); during ``generate_batch`` every forward must run exactly that implementation.
    """
    return Technique(
        name=name,
        family="batching",
        description=description,
        load_kwargs={"attn_implementation": _attention(name)},
        requirements=requirements or Requirements(),
        runner="generate_batch",
        # paged|eager stays paged|eager; the other paged| names load as their plain implementation on 5.x
        effective_attention=frozenset({name} if name == "paged|eager" else {name, name.removeprefix("paged|")}),
        **kw,  # type: ignore[arg-type]
    )


def builtin() -> list[Technique]:
    techniques = [
        paged_technique("paged|sdpa", "continuous batching, paged KV cache read by SDPA"),
        paged_technique("paged|eager", "continuous batching, paged KV cache read by eager attention"),
    ]
    for name, (description, requirements) in _CUDA_FLASH.items():
        techniques.append(paged_technique(name, description, requirements, dtype_check=half_only(name)))
    return techniques

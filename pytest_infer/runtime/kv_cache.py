"""Checks of KV-cache techniques beyond token parity.

- **Requested == effective.** ``generate`` builds the cache from ``cache_implementation`` and
  ``cache_config``; names and backends have silently fallen back before (a deprecated name mapped to a
  different class, a quantized cache without its backend, a full cache on a sliding-window model). The
  cache ``generate`` returns is inspected: class, layer classes, offloading, bits, residual length.
- **Arguments are not mutated.** Two ``generate`` calls share one set of keyword arguments (one
  ``cache_config`` dict): both must give the same tokens and leave the arguments as they were
  (Transformers once consumed the dict's keys on the first call).
- **KV memory.** Bytes the cache holds on the device after a forced-length generation, against the
  dynamic cache at the same length (``kv_memory_ratio`` expectations: quantized and offloaded caches must
  hold less).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pytest_infer.core.technique import Technique, resolve_kwargs
from pytest_infer.runtime.generated import never_token
from pytest_infer.runtime.memory import storage_bytes

QUANTIZED_LAYERS = {"quanto": "QuantoQuantizedLayer", "hqq": "HQQQuantizedLayer", "fp8": "Fp8QuantizedLayer"}
DYNAMIC_LAYERS = frozenset({"DynamicLayer", "DynamicSlidingWindowLayer"})
STATIC_LAYERS = frozenset({"StaticLayer", "StaticSlidingWindowLayer"})


@dataclass(frozen=True)
class CacheSpec:
    """What a technique's ``generate`` arguments ask for."""

    implementation: str
    cache_class: str
    layers: frozenset[str]
    offloading: bool
    nbits: int | None = None
    residual_length: int | None = None


def expected_cache(generate_kwargs: dict[str, Any]) -> CacheSpec:
    impl = generate_kwargs.get("cache_implementation") or "dynamic"
    cfg = generate_kwargs.get("cache_config") or {}
    if impl in ("dynamic", "offloaded"):
        return CacheSpec(impl, "DynamicCache", DYNAMIC_LAYERS, impl == "offloaded")
    if impl in ("static", "offloaded_static"):
        return CacheSpec(impl, "StaticCache", STATIC_LAYERS, impl == "offloaded_static")
    if impl == "quantized":
        backend = str(cfg.get("backend", "quanto")).lower()
        layer = QUANTIZED_LAYERS.get(backend, f"<unknown backend {backend!r}>")
        return CacheSpec(
            impl, "QuantizedCache", frozenset({layer}), False, cfg.get("nbits"), cfg.get("residual_length")
        )
    return CacheSpec(impl, "?", frozenset(), False)


def _layer_tensors(layer: Any) -> list[Any]:
    import torch

    out: list[Any] = []
    for value in vars(layer).values():
        if isinstance(value, torch.Tensor):
            out.append(value)
        elif isinstance(value, (tuple, list)):
            out.extend(v for v in value if isinstance(v, torch.Tensor))
    return out


def describe_cache(cache: Any, device_type: str) -> dict[str, Any]:

    layers = list(getattr(cache, "layers", []))
    tensors = [t for layer in layers for t in _layer_tensors(layer)]
    return {
        "class": type(cache).__name__,
        "layers": sorted({type(layer).__name__ for layer in layers}),
        "offloading": bool(getattr(cache, "offloading", False)),
        "nbits": sorted({n for layer in layers if (n := getattr(layer, "nbits", None)) is not None}),
        "residual_length": sorted(
            {n for layer in layers if (n := getattr(layer, "residual_length", None)) is not None}
        ),
        "kv_bytes": storage_bytes(tensors),
        "kv_device_bytes": storage_bytes(tensors, device_type=device_type),
    }


def generate_with_cache(
    model: Any, tokenizer: Any, batch: Any, technique: Technique, new_tokens: int, kwargs: dict[str, Any] | None = None
) -> tuple[list[list[int]], Any]:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens (unreachable EOS); (tokens, the cache it used).
    ``kwargs``: the technique's resolved generate arguments, passed as given (the same objects)."""

    needed = int(batch.input_ids.shape[1]) + new_tokens
    if kwargs is None:
        kwargs = resolve_kwargs(technique.generate_kwargs, needed_length=needed, device=str(batch.input_ids.device))
    with technique.no_grad(), technique.active():
        out = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=new_tokens,
            eos_token_id=never_token(model, tokenizer),
            do_sample=False,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    return out.sequences[:, batch.input_ids.shape[1] :].tolist(), cache


def is_sliding(model: Any) -> bool:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return bool(getattr(config, "sliding_window", None)) and "sliding_attention" in (
        getattr(config, "layer_types", None) or ["sliding_attention"]
    )


def snapshot(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the arguments for comparison (values that cannot be copied are compared by repr)."""
    out = {}
    for k, v in kwargs.items():
        try:
            out[k] = copy.deepcopy(v)
        except Exception:
            out[k] = repr(v)
    return out


CACHE_LEN = 256  # static cache length: fixed, so new prompt lengths / max_new_tokens do not recompile


def max_cache_len(needed_length: int = 0) -> int:
    """A fixed cache length that fits the call; grows in powers of two only when a call needs more."""
    size = CACHE_LEN
    while size < needed_length:
        size *= 2
    return size

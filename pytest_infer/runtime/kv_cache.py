"""KV caches as ``generate`` builds them: what a technique's arguments ask for (:func:`expected_cache`), what the
cache holds (:func:`describe_cache`: classes, bits, key/value bytes apart from recurrent-state bytes), the
generation that returns it, and the static cache length. The checks that use these: ``checks/caching.py``.

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

from pytest_infer.core.technique import Technique
from pytest_infer.runtime.generated import forced_generate, output_cache
from pytest_infer.runtime.memory import storage_bytes

QUANTIZED_LAYERS = {"quanto": "QuantoQuantizedLayer", "hqq": "HQQQuantizedLayer", "fp8": "Fp8QuantizedLayer"}
# cache layer classes by kind (Transformers' cache_utils): attention keys/values, recurrent state, both
KV_DYNAMIC = frozenset({"DynamicLayer", "DynamicSlidingWindowLayer", "DynamicIndexedLayer"})
KV_STATIC = frozenset({"StaticLayer", "StaticSlidingWindowLayer", "StaticIndexedLayer"})
STATE_LAYERS = frozenset({"LinearAttentionLayer"})  # conv and recurrent (SSM) state: no keys or values
HYBRID_DYNAMIC = frozenset({"LinearAttentionAndFullAttentionLayer", "LinearAttentionAndSlidingWindowAttentionLayer"})
HYBRID_STATIC = frozenset(
    {"LinearAttentionAndStaticFullAttentionLayer", "LinearAttentionAndStaticSlidingWindowAttentionLayer"}
)
NEUTRAL_LAYERS = frozenset({"DummyLayer"})  # layers that cache nothing (MoE / MLP-only / shared-KV layers)
STATE_ATTRIBUTES = ("conv_states", "recurrent_states")


@dataclass(frozen=True)
class CacheSpec:
    """What a technique's ``generate`` arguments ask for: the cache class, the layer classes it may hold, and those
    of which at least one must be there (the layers the request is about: a static cache on a model whose layers
    keep only recurrent state holds no static layer, and is not what was asked for)."""

    implementation: str
    cache_class: str
    layers: frozenset[str]
    offloading: bool
    nbits: int | None = None
    residual_length: int | None = None
    required: frozenset[str] = frozenset()


def expected_cache(generate_kwargs: dict[str, Any]) -> CacheSpec:
    impl = generate_kwargs.get("cache_implementation") or "dynamic"
    cfg = generate_kwargs.get("cache_config") or {}
    dynamic = KV_DYNAMIC | STATE_LAYERS | HYBRID_DYNAMIC | NEUTRAL_LAYERS
    if impl == "dynamic":
        return CacheSpec(impl, "DynamicCache", dynamic, False)
    if impl == "offloaded":
        return CacheSpec(impl, "DynamicCache", dynamic, True, required=KV_DYNAMIC | HYBRID_DYNAMIC)
    if impl in ("static", "offloaded_static"):
        static = KV_STATIC | STATE_LAYERS | HYBRID_STATIC | NEUTRAL_LAYERS
        return CacheSpec(impl, "StaticCache", static, impl == "offloaded_static", required=KV_STATIC | HYBRID_STATIC)
    if impl == "quantized":
        backend = str(cfg.get("backend", "quanto")).lower()
        layer = frozenset({QUANTIZED_LAYERS.get(backend, f"<unknown backend {backend!r}>")})
        return CacheSpec(
            impl, "QuantizedCache", layer, False, cfg.get("nbits"), cfg.get("residual_length"), required=layer
        )
    return CacheSpec(impl, "?", frozenset(), False)


def _layer_tensors(layer: Any) -> tuple[list[Any], list[Any]]:
    """(key/value tensors, recurrent-state tensors) a cache layer holds."""
    import torch

    kv: list[Any] = []
    state: list[Any] = []
    for name, value in vars(layer).items():
        into = state if name in STATE_ATTRIBUTES else kv
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else [value]
        into.extend(v for v in values if isinstance(v, torch.Tensor))
    return kv, state


def describe_cache(cache: Any, device_type: str) -> dict[str, Any]:
    """What a cache holds: its class, layer classes, offloading, bits, residual length, and bytes apart: key/value
    bytes (``kv_bytes``, on the device: ``kv_device_bytes``) and recurrent-state bytes (``state_bytes``)."""
    layers = list(getattr(cache, "layers", []))
    kv: list[Any] = []
    state: list[Any] = []
    for layer in layers:
        k, s_ = _layer_tensors(layer)
        kv.extend(k)
        state.extend(s_)
    return {
        "class": type(cache).__name__,
        "layers": sorted({type(layer).__name__ for layer in layers}),
        "offloading": bool(getattr(cache, "offloading", False)),
        "nbits": sorted({n for layer in layers if (n := getattr(layer, "nbits", None)) is not None}),
        "residual_length": sorted(
            {n for layer in layers if (n := getattr(layer, "residual_length", None)) is not None}
        ),
        "kv_bytes": storage_bytes(kv),
        "kv_device_bytes": storage_bytes(kv, device_type=device_type),
        "state_bytes": storage_bytes(state),
    }


def generate_with_cache(
    model: Any, tokenizer: Any, batch: Any, technique: Technique, new_tokens: int, kwargs: dict[str, Any] | None = None
) -> tuple[list[list[int]], Any]:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens (unreachable EOS); (tokens, the cache it used).
    ``kwargs``: the technique's resolved generate arguments, passed as given (the same objects)."""

    out = forced_generate(model, tokenizer, batch, technique, new_tokens, kwargs)
    cache = output_cache(out)
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

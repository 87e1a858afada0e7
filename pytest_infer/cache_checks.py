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
from dataclasses import dataclass, field
from typing import Any

from pytest_infer.technique import Technique, resolve_kwargs

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
    from pytest_infer.measure import storage_bytes

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


def cache_problems(spec: CacheSpec, seen: dict[str, Any], sliding_model: bool) -> list[str]:
    problems = []
    if seen["class"] != spec.cache_class:
        problems.append(f"cache class {seen['class']}, expected {spec.cache_class}")
    unexpected = set(seen["layers"]) - spec.layers
    if unexpected:
        problems.append(f"layers {', '.join(sorted(unexpected))}, expected only {', '.join(sorted(spec.layers))}")
    if seen["offloading"] != spec.offloading:
        problems.append(f"offloading {seen['offloading']}, expected {spec.offloading}")
    if spec.nbits is not None and seen["nbits"] != [spec.nbits]:
        problems.append(f"{seen['nbits'] or 'no'} bits per value, expected {spec.nbits}")
    if spec.residual_length is not None and seen["residual_length"] != [spec.residual_length]:
        problems.append(f"residual length {seen['residual_length'] or 'none'}, expected {spec.residual_length}")
    full_window = not any("Sliding" in name for name in seen["layers"])
    if sliding_model and full_window and spec.implementation in ("dynamic", "static", "offloaded", "offloaded_static"):
        problems.append("the model has a sliding window but no cache layer slides: it keeps every position")
    return problems


@dataclass
class CacheCheckResult:
    technique: str
    device: str
    dtype: str
    variant: str  # "effective" | "arguments unchanged" | "kv memory"
    problems: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    kind: str = "cache_check"

    @property
    def passed(self) -> bool:
        return not self.problems

    def headline(self) -> str:
        if self.variant == "kv memory" and "kv_memory_ratio" in self.details:
            return f"{self.details['kv_memory_ratio']:.3f}x KV bytes"
        return "ok" if self.passed else "; ".join(self.problems)

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [f"cache check ({self.variant}) {verdict}: {self.technique} ({self.dtype}) on {self.device}"]
        lines += [f"  - {p}" for p in self.problems]
        lines += [f"  {k}: {v}" for k, v in self.details.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        metrics = {
            k: float(v) for k, v in self.details.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return {
            "kind": self.kind,
            "check": "cache",
            "variant": self.variant,
            "technique": self.technique,
            "device": self.device,
            "dtype": self.dtype,
            "passed": self.passed,
            "metrics": metrics,
            "details": {k: v for k, v in self.details.items() if k not in metrics},
            "failures": list(self.problems),
        }


def generate_with_cache(
    model: Any, tokenizer: Any, batch: Any, technique: Technique, new_tokens: int, kwargs: dict[str, Any] | None = None
) -> tuple[list[list[int]], Any]:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens (unreachable EOS); (tokens, the cache it used).
    ``kwargs``: the technique's resolved generate arguments, passed as given (the same objects)."""
    from pytest_infer.generation import never_token

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

"""The simulated twin of Transformers' ``QuantizedCache``: a cache that stores the quantize-then-dequantize values of
the same scheme in float, with its own state machine written from the specification of ``QuantizedLayer.update``
(so the real cache is checked against an independent implementation, residual window included):

* first update (prefill): the prompt's keys/values are quantized; the call returns them unquantized;
* each later update with ``n`` tokens returns ``cat(deq(Q), R, new)``; when ``len(R) + n >= residual_length`` the
  whole of it is quantized again (the old part from its dequantized values) and ``R`` emptied, else ``R`` grows.
* fp8 (no residual): a per-tensor scale frozen at the first update; every state stored as ``float8_e4m3fn``.

Quantize-dequantize: quanto's groups (axis 0: runs of ``q_group_size`` contiguous elements of the flattened
``[batch, heads, seq, dim]`` tensor; min/max scale and float shift) and fp8 are written out here; HQQ's groups go
through hqq's own ``Quantizer`` (its proximal optimizer is not re-implemented: for hqq the check covers the cache's
state machine and storage, not the optimizer). ``fault='no_residual'`` plants the defect of a cache that drops its
residual window (for the tests that show the check catches it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_infer.core.technique import resolve_kwargs
from pytest_infer.runtime.generated import cache_kwarg, forced_generate

if TYPE_CHECKING:
    import torch

QDQ = Callable[["torch.Tensor"], "torch.Tensor"]


class NotSimulated(Exception):
    """This cache configuration has no simulated twin (the reason is the message)."""


def quanto_qdq(x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """optimum-quanto's MaxOptimizer int quantization along axis 0, quantized and dequantized in float."""
    import torch

    groups = x.reshape(-1, group_size)
    low = groups.amin(dim=1, keepdim=True)
    high = groups.amax(dim=1, keepdim=True)
    scale = (high - low) / (2**bits - 1)
    shift = -low
    q = torch.clamp(torch.round((groups + shift) / scale), 0, 2**bits - 1)
    q = torch.nan_to_num(q, nan=0.0)  # a constant group (zero pad keys) is 0/0, which quanto stores as code 0
    return (scale * q - shift).reshape(x.shape).to(x.dtype)


def hqq_qdq(x: torch.Tensor, bits: int, group_size: int, axis: int) -> torch.Tensor:
    from hqq.core.quantize import Quantizer

    q, meta = Quantizer.quantize(
        x, axis=axis, device=str(x.device), compute_dtype=x.dtype, nbits=bits, group_size=group_size, bitpack=False
    )
    meta["compute_dtype"] = x.dtype
    return Quantizer.dequantize(q, meta).to(x.dtype)


def fp8_qdq(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    import torch

    return ((x.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


def _fp8_scale(x: torch.Tensor) -> torch.Tensor:
    import torch

    top = torch.finfo(torch.float8_e4m3fn).max
    return (x.abs().amax().float() / top).clamp(min=torch.finfo(torch.float32).tiny)


def _layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class SimulatedQuantizedLayer(DynamicLayer):  # type: ignore[misc, valid-type]
        """Holds Q as float (already dequantized) and the full-precision residual R (DynamicLayer's keys/values)."""

        def __init__(self, qdq_key: QDQ | None, qdq_value: QDQ | None, residual: int, fault: str | None) -> None:
            super().__init__()
            self.qdq_key, self.qdq_value, self.residual, self.fault = qdq_key, qdq_value, residual, fault
            self.cumulative_length = 0
            self.qk: Any = None
            self.qv: Any = None
            self.scales: tuple[Any, Any] | None = None  # fp8

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            import torch

            self.cumulative_length += key_states.shape[-2]
            if self.qdq_key is None:  # fp8: a per-tensor scale frozen at the first update, no residual
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                    self.scales = (_fp8_scale(key_states), _fp8_scale(value_states))
                    self.qk, self.qv = fp8_qdq(key_states, self.scales[0]), fp8_qdq(value_states, self.scales[1])
                    return key_states, value_states
                assert self.scales is not None
                self.qk = torch.cat([self.qk, fp8_qdq(key_states, self.scales[0])], dim=-2)
                self.qv = torch.cat([self.qv, fp8_qdq(value_states, self.scales[1])], dim=-2)
                return self.qk, self.qv
            assert self.qdq_value is not None
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.qk, self.qv = self.qdq_key(key_states.contiguous()), self.qdq_value(value_states.contiguous())
                return key_states, value_states
            assert self.keys is not None and self.values is not None
            keys = torch.cat([self.qk, self.keys, key_states], dim=-2)
            values = torch.cat([self.qv, self.values, value_states], dim=-2)
            held = self.keys.shape[-2] if self.keys.dim() == 4 else 0
            if self.fault == "no_residual" or held + key_states.shape[-2] >= self.residual:
                self.qk, self.qv = self.qdq_key(keys.contiguous()), self.qdq_value(values.contiguous())
                self.keys = key_states.new_empty(0)
                self.values = value_states.new_empty(0)
                if self.fault == "no_residual":
                    return self.qk, self.qv
            else:
                self.keys = torch.cat([self.keys, key_states], dim=-2)
                self.values = torch.cat([self.values, value_states], dim=-2)
            return keys, values

        def get_seq_length(self) -> int:
            return self.cumulative_length

    return SimulatedQuantizedLayer


def _qdq_for(layer: Any, axis: int) -> QDQ:
    name = type(layer).__name__
    bits, group = int(layer.nbits), int(layer.q_group_size)
    if name == "QuantoQuantizedLayer":
        if axis != 0:
            raise NotSimulated(f"quanto's grouping along axis {axis} is not simulated (only axis 0, the default)")
        return lambda x: quanto_qdq(x, bits, group)
    if name == "HQQQuantizedLayer":
        return lambda x: hqq_qdq(x, bits, group, axis)
    raise NotSimulated(f"no simulated twin of the quantized cache layer {name}")


def simulated_cache(real: Any, fault: str | None = None) -> Any:
    """A fresh cache with the layers of ``real`` (an unused ``QuantizedCache``): each quantized layer replaced by its
    simulated twin with the same bits, axes, group size and residual length; other layers kept as they are."""
    from transformers.cache_utils import Cache

    cls = _layer_class()
    layers = []
    for layer in real.layers:
        name = type(layer).__name__
        if name == "Fp8QuantizedLayer":
            layers.append(cls(None, None, 0, fault))
        elif hasattr(layer, "residual_length") and hasattr(layer, "q_group_size"):
            key, value = _qdq_for(layer, int(layer.axis_key)), _qdq_for(layer, int(layer.axis_value))
            layers.append(cls(key, value, int(layer.residual_length), fault))
        elif "Quantized" in name:
            raise NotSimulated(f"no simulated twin of the quantized cache layer {name}")
        else:
            layers.append(layer)
    return Cache(layers=layers)


def quantized_cache(model: Any, cache_config: dict[str, Any]) -> Any:
    """The ``QuantizedCache`` that ``generate(cache_implementation="quantized", cache_config=...)`` builds."""
    from transformers.cache_utils import QuantizedCache

    return QuantizedCache(config=model.config, **cache_config)


def generate_logits(
    model: Any, tokenizer: Any, batch: Any, technique: Any, new_tokens: int, past_key_values: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy ``generate`` of ``new_tokens`` tokens with the technique's generation arguments: (tokens ``[B, T]``, raw
    logits ``[B, T, vocab]`` float32). With ``past_key_values`` (a simulated cache), the technique's own cache
    arguments are left out and that cache is used instead."""
    import torch

    needed = int(batch.input_ids.shape[1]) + new_tokens
    kwargs = resolve_kwargs(technique.generate_kwargs, needed_length=needed, device=str(batch.input_ids.device))
    if past_key_values is not None:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("cache_implementation", "cache_config")}
        kwargs[cache_kwarg(model)] = past_key_values
    out = forced_generate(model, tokenizer, batch, technique, new_tokens, kwargs, output_logits=True)
    tokens = out.sequences[:, batch.input_ids.shape[1] :]
    return tokens, torch.stack([step.float() for step in out.logits], dim=1)

"""What a quantized layer's kernel is meant to compute: the layer's weight decoded from what its format stores
(bitsandbytes 8-bit and 4-bit decoded here from codes, code table and scales, independently of the backend's
kernels; torchao int8 from its int8 data and scales; the backend's own dequantize where the format is not simple),
and the quantize-dequantize of the layer's input for the schemes that quantize activations too (bitsandbytes
LLM.int8(), torchao int8 dynamic). Backend packages are imported only for models that use them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BNB_INT8_SCALE = 6.200124e-05  # bitsandbytes rescales the int32 product by this, where 1/127**2 = 6.2000124e-05


def quantized_kind(module: Any) -> str | None:
    """Which quantized-linear kind ``module`` is (bnb_int8, bnb_4bit, torchao, quanto, hqq), or None."""
    cls, where = type(module).__name__, type(module).__module__
    if where.startswith("bitsandbytes") and cls == "Linear8bitLt":
        return "bnb_int8"
    if where.startswith("bitsandbytes") and cls in ("Linear4bit", "LinearNF4", "LinearFP4"):
        return "bnb_4bit"
    if where.startswith("optimum.quanto") and cls == "QLinear":
        return "quanto"
    if where.startswith("hqq") and cls == "HQQLinear":
        return "hqq"
    weight = getattr(module, "weight", None)
    if weight is not None and type(weight).__module__.startswith("torchao"):
        return "torchao"
    return None


def quantized_layers(model: Any) -> dict[str, Any]:
    return {name: m for name, m in model.named_modules() if quantized_kind(m) is not None}


def _bnb_4bit_decode(packed: torch.Tensor, state: Any) -> torch.Tensor:
    """bitsandbytes' 4-bit format decoded in plain torch: two codes a byte (high nibble first), value = code table
    [code] x absmax[block] over the flattened weight; a nested absmax is itself 8-bit blockwise with an offset."""
    import copy

    import bitsandbytes.functional as F
    import torch

    if getattr(state, "packing_format_for_cpu", False):  # AVX512-BF16 CPUs repack at the first forward
        # the inverse rewrites the QuantState it is given (it returns the same object): on the layer's own state it
        # would mark the still-repacked weights as unpacked, and the next forward would repack them again (garbage)
        packed, state = F._convert_weight_packed_for_cpu_inverse(packed, copy.copy(state))
    absmax = state.absmax
    if state.nested:
        inner = state.state2
        values = inner.code.float()[absmax.long()]
        pad = (-values.numel()) % inner.blocksize
        values = torch.nn.functional.pad(values, (0, pad)).view(-1, inner.blocksize) * inner.absmax.float().view(-1, 1)
        absmax = values.view(-1)[: state.absmax.numel()] + state.offset
    raw = packed.reshape(-1).view(torch.uint8)
    codes = torch.stack([raw >> 4, raw & 0xF], dim=1).reshape(-1).long()
    n = int(torch.Size(state.shape).numel())
    values = F.get_4bit_type(state.quant_type, device=raw.device).float()[codes][:n]
    size = state.blocksize
    pad = (-n) % size
    values = torch.nn.functional.pad(values, (0, pad)).view(-1, size) * absmax.float()[: (n + pad) // size].view(-1, 1)
    return values.reshape(-1)[:n].view(state.shape)


def dequantized_weight(module: Any) -> torch.Tensor:
    """The float weight ``[out, in]`` that ``module``'s kernel is meant to multiply by (float32)."""
    kind = quantized_kind(module)
    if kind == "bnb_int8":
        weight = module.weight
        scb = getattr(weight, "SCB", None)
        scb = module.state.SCB if scb is None else scb
        return weight.data.float() * (scb.float().view(-1, 1) / 127.0)
    if kind == "bnb_4bit":
        return _bnb_4bit_decode(module.weight.data, module.weight.quant_state)
    if kind == "torchao":
        weight = module.weight
        if type(weight).__name__ == "Int8Tensor" and weight.block_size[-1] == weight.qdata.shape[-1]:
            data = weight.qdata.float()
            if weight.zero_point is not None:
                data = data - weight.zero_point.float().view(-1, 1)
            return data * weight.scale.float().view(-1, 1)
        return weight.dequantize().float()  # float8, int4, grouped int8: the subclass' own decode
    if kind == "quanto":
        return module.qweight.dequantize().float()
    if kind == "hqq":
        return module.dequantize().float()
    raise TypeError(f"not a quantized linear layer: {type(module).__name__}")


def torchao_int8_activation(x: torch.Tensor, per_row: bool, symmetric: bool, reduce_range: bool) -> torch.Tensor:
    """torchao's int8 activation quantize-dequantize (choose_qparams_affine + quantize_affine), written out: symmetric
    scale = absmax / 127.5; q = clamp(round(x * (1 / scale))) (x * (1/scale), as torchao: x / scale rounds ties the
    other way)."""
    import torch

    qmin, qmax = (-64, 63) if reduce_range else (-128, 127)
    xf = x.float()
    dims = (-1,) if per_row else tuple(range(xf.dim()))
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = (xf.abs().amax(dim=dims, keepdim=True) / ((qmax - qmin) / 2)).clamp(min=eps)
        return (torch.clamp(torch.round(xf * (1.0 / scale)), qmin, qmax) * scale).to(x.dtype)
    low = xf.amin(dim=dims, keepdim=True).clamp(max=0)
    high = xf.amax(dim=dims, keepdim=True).clamp(min=0)
    scale = ((high - low) / (qmax - qmin)).clamp(min=eps)
    zero = torch.clamp(qmin - torch.round(low / scale), qmin, qmax)
    q = torch.clamp(torch.round(xf * (1.0 / scale)) + zero, qmin, qmax)
    return ((q - zero) * scale).to(x.dtype)


def bnb_int8_activation(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """bitsandbytes LLM.int8()'s activation path on CPU: the input cast to float16; columns with any |a| >= threshold
    kept in the input dtype (outliers); the rest quantized per row (token) by absmax / 127, rescaled by bitsandbytes'
    own constant; an all-zero row (a pad position) quantizes to 0."""
    import torch

    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    half = rows.to(torch.float16)
    outliers = None
    if threshold > 0.0:
        big = half.abs() >= threshold
        if bool(big.any()):
            outliers = big.any(dim=0)
            half = half.masked_fill(big, 0)
    absmax = half.abs().amax(dim=1).float()
    q = torch.nan_to_num(torch.round(half * (127.0 / absmax.unsqueeze(-1))), nan=0.0).clamp(-127, 127)
    out = q * (absmax.unsqueeze(-1) * (BNB_INT8_SCALE * 127.0))
    if outliers is not None:
        out[:, outliers] = rows[:, outliers].float()
    return out.to(x.dtype).reshape(shape)


def activation_quantizer(module: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The quantize-dequantize ``module`` applies to its input, or None for a weight-only scheme."""
    kind = quantized_kind(module)
    if kind == "torchao":
        kw = getattr(module.weight, "act_quant_kwargs", None)
        if kw is None:
            return None
        per_row = type(kw.granularity).__name__ == "PerRow"
        symmetric = kw.mapping_type.name == "SYMMETRIC"
        reduce = bool(getattr(kw, "reduce_range", False))
        return lambda x: torchao_int8_activation(x, per_row, symmetric, reduce)
    if kind == "bnb_int8":
        threshold = float(module.state.threshold)
        return lambda x: bnb_int8_activation(x, threshold)
    if kind == "quanto" and getattr(module, "activation_qtype", None) is not None:
        raise NotImplementedError("quanto's activation quantization is not simulated: kernel parity cannot judge it")
    return None

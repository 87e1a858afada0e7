"""Where a loaded model's weight bytes are, and which of them a quantization scheme really stores quantized
(:func:`weight_coverage`): embeddings, lm_head, linear layers, fused 3-D expert parameters (mixture-of-experts
models keep most of their weights there, and Linear-only quantizers leave them in full precision), routers, other."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

CATEGORIES = (
    "embeddings",
    "lm_head",
    "linear_quantized",
    "linear_full",
    "experts_quantized",
    "experts_full",
    "router",
    "other",
)
BODY = ("linear_quantized", "linear_full", "experts_quantized", "experts_full")  # what a weight format claims to cover
LINEAR_CLASSES = ("Linear8bitLt", "Linear4bit", "QLinear", "HQQLinear", "Conv1D")  # linear layers that are no nn.Linear


@dataclass
class Coverage:
    """Per category: stored bytes (tensor subclasses unwrapped, side tensors added, shared storage once) and
    logical bytes (the same parameters unquantized, at the model's float element size)."""

    stored: dict[str, int] = field(default_factory=dict)
    logical: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def covered_fraction(self) -> float:
        """Logical bytes of the linear and fused-expert weights stored quantized, over all of them: 1.0 when a
        scheme quantizes every weight it claims to cover, 0.11 for a Linear-only int8 on a tiny Mixtral."""
        body = sum(self.logical.get(c, 0) for c in BODY)
        done = sum(self.logical.get(c, 0) for c in ("linear_quantized", "experts_quantized"))
        return done / body if body else 0.0

    @property
    def quantized_ratio(self) -> float | None:
        """Stored bytes of the quantized linear and expert weights (scales included) over the same weights
        unquantized: a property of the scheme (biases and norms apart), None when nothing is quantized."""
        cats = ("linear_quantized", "experts_quantized")
        logical = sum(self.logical.get(c, 0) for c in cats)
        return sum(self.stored.get(c, 0) for c in cats) / logical if logical else None

    @property
    def unquantized(self) -> dict[str, int]:
        """Logical bytes left in full precision, by category (what the report names)."""
        return {c: n for c in ("linear_full", "experts_full", "embeddings", "lm_head") if (n := self.logical.get(c, 0))}

    def to_dict(self) -> dict[str, Any]:
        return {
            "stored": dict(self.stored),
            "logical": dict(self.logical),
            "covered_fraction": self.covered_fraction,
            "examples": dict(self.examples),
        }


def is_quantized(t: Any) -> bool:
    """Stored as something other than a plain floating tensor (a tensor subclass, int data, bitsandbytes state)."""
    if type(t).__name__ not in ("Tensor", "Parameter") and hasattr(t, "__tensor_flatten__"):
        return True
    if getattr(t, "SCB", None) is not None or getattr(t, "quant_state", None) is not None:
        return True
    return not t.dtype.is_floating_point


def _inner(t: Any) -> list[Any]:
    """The plain tensors holding ``t``'s storage (torchao / quanto subclasses unwrapped, bitsandbytes side tensors)."""
    names = None
    if type(t).__name__ not in ("Tensor", "Parameter") and hasattr(t, "__tensor_flatten__"):
        try:
            names, _ = t.__tensor_flatten__()
        except Exception:  # an odd subclass: its nominal size
            names = None
    if names is not None:
        return [inner for n in names for inner in _inner(getattr(t, n))]
    out = [getattr(t, "data", t)]
    if getattr(t, "SCB", None) is not None:
        out.append(t.SCB)
    state = getattr(t, "quant_state", None)
    while state is not None:
        out.extend(s for name in ("absmax", "code", "offset") if (s := getattr(state, name, None)) is not None)
        state = getattr(state, "state2", None)
    return out


def _category(module: Any, pname: str, p: Any, emb_in: Any, emb_out: Any) -> str:
    import torch

    quantized = is_quantized(p)
    if module is emb_out and pname == "weight":
        return "lm_head"
    if isinstance(module, torch.nn.Embedding) or module is emb_in:
        return "embeddings"
    if (isinstance(module, torch.nn.Linear) or type(module).__name__ in LINEAR_CLASSES) and pname == "weight":
        return "linear_quantized" if quantized else "linear_full"
    if p.dim() == 3 and not isinstance(module, torch.nn.modules.conv._ConvNd):
        return "experts_quantized" if quantized else "experts_full"
    if "Router" in type(module).__name__:
        return "router"
    return "other"


def weight_coverage(model: Any) -> Coverage:
    """Every parameter of ``model`` filed by category (tied parameters and shared storage counted once)."""
    float_size = next((p.element_size() for p in model.parameters() if not is_quantized(p)), 4)
    emb_in = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    emb_out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    stored: dict[str, int] = defaultdict(int)
    logical: dict[str, int] = defaultdict(int)
    examples: dict[str, str] = {}
    seen_params: set[int] = set()
    seen_storage: set[int] = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen_params:
                continue
            seen_params.add(id(p))
            category = _category(module, pname, p, emb_in, emb_out)
            nbytes = 0
            for t in _inner(p):
                try:
                    key = t.untyped_storage().data_ptr()
                except Exception:
                    key = id(t)
                if key and key in seen_storage:
                    continue  # tied or shared storage
                seen_storage.add(key)
                nbytes += t.numel() * t.element_size()
            stored[category] += nbytes
            logical[category] += p.numel() * float_size if nbytes else 0
            examples.setdefault(category, f"{mname}.{pname}" if mname else pname)
    return Coverage(dict(stored), dict(logical), examples)

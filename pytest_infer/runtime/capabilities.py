"""Reading a model's capabilities before loading its weights (:func:`read_facts`: its config, its class and a
meta-device instance, which holds no memory), and recognising the errors Transformers raises for an architecture
reason at load or run time (:func:`architecture_reason`), so both become a skip with the reason, not a failure of
the technique."""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any

from pytest_infer.core.model_facts import ModelFacts
from pytest_infer.runtime.generated import output_cache
from pytest_infer.runtime.loading import ModelSource

# messages Transformers (and the cache backends) raise when an architecture cannot take a technique
ARCHITECTURE_ERRORS = (
    r"does not support an attention implementation through",
    r"does not support Flash Attention",
    r"is only supported for models with only full attention layers",
    r"Group size \(\d+\) must be a divisor of",
    r"group_size should be divisble by the total tensor dimensions",
    r"Invalid layer type:",
    r"is not supported for continuous batching",
    r"has no `?tp_plan`?",
    r"No available kernel",
)
_ARCH = re.compile("|".join(ARCHITECTURE_ERRORS))


def architecture_reason(exc: BaseException) -> str | None:
    """The first line of ``exc`` (or of the exception it wraps) when it is Transformers refusing this architecture
    for a technique (an attention backend it does not support, a cache its layers cannot hold...), else None."""
    for candidate in (exc, getattr(exc, "cause", None), exc.__cause__):
        if candidate is None:
            continue
        text = " ".join(str(candidate).split())
        if _ARCH.search(text):
            return f"{type(candidate).__name__}: {text[:400]}"
    return None


def read_facts(source: ModelSource) -> ModelFacts | None:
    """The facts of ``source``'s model from its config (offline: local files, or the hub cache), or None when the
    config cannot be read here (then only the load-time net applies)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(
            source.name_or_path, trust_remote_code=source.trust_remote_code, local_files_only=not source.is_local
        )
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=source.trust_remote_code)
    except Exception:  # an unreadable or exotic config: the load-time net still recognises architecture errors
        return None
    cls = type(model)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    source_code = _module_source(cls)
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    kv_heads, head_dim = _cached_kv_dims(model, text, heads)
    experts, body, example = _expert_bytes(model)
    linear, conv1d = _projection_weights(model)
    plan = {**(getattr(cls, "_tp_plan", None) or {}), **(getattr(text, "base_model_tp_plan", None) or {})}
    return ModelFacts(
        class_name=cls.__name__,
        model_type=str(getattr(config, "model_type", "")),
        layer_types=_layer_types(text),
        supports_sdpa=bool(getattr(cls, "_supports_sdpa", False)),
        supports_flex=bool(getattr(cls, "_supports_flex_attn", False)),
        supports_flash=bool(getattr(cls, "_supports_flash_attn", False)),
        attention_backend=bool(getattr(cls, "_supports_attention_backend", False)),
        stateful=bool(getattr(cls, "_is_stateful", False)),
        default_dynamic_cache=_default_dynamic_cache(cls),
        tp_plan=tuple(plan),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        calls_sdpa_itself="scaled_dot_product_attention" in source_code
        and "ALL_ATTENTION_FUNCTIONS" not in source_code,
        alibi=bool(getattr(text, "alibi", False)),
        softcapping=getattr(text, "attn_logit_softcapping", None) is not None,
        paged_update_without_kwargs=bool(
            re.search(r"\.update\(\s*key_states,\s*value_states,\s*self\.layer_idx\s*\)", source_code)
        ),
        own_linear_forward=_own_linear_forward(model),
        weight_matmul=_weight_matmul(model, source_code),
        parameters=sum(p.numel() for p in model.parameters()),
        linear_weights=linear,
        conv1d_weights=conv1d,
        expert_share=experts / body if body else 0.0,
        expert_example=example,
        max_positions=getattr(text, "max_position_embeddings", None),
    )


def _module_source(cls: type) -> str:
    try:
        return inspect.getsource(sys.modules[cls.__module__])
    except (OSError, TypeError, KeyError):
        return ""


def _layer_types(text: Any) -> tuple[str, ...]:
    """What DynamicCache / StaticCache build per layer (Transformers' get_layer_types_and_kwargs)."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs

        types, _ = get_layer_types_and_kwargs(text)
        return tuple(str(t) for t in types)
    except Exception:  # older Transformers: the config's own list, else full attention
        declared = getattr(text, "layer_types", None)
        layers = int(getattr(text, "num_hidden_layers", 0) or 0)
        return tuple(declared) if declared else ("full_attention",) * layers


def _default_dynamic_cache(cls: type) -> bool:
    probe = getattr(cls, "_supports_default_dynamic_cache", None)
    try:
        return bool(probe()) if callable(probe) else True
    except Exception:
        return True


def _cached_kv_dims(model: Any, text: Any, heads: int) -> tuple[int, int]:
    """(key/value heads, head dim) as cached: a 4-token forward on the meta device reads the first key tensor's shape
    (Falcon multi-query caches one head whatever its config says); the config where that forward cannot run."""
    import torch

    try:
        with torch.no_grad():
            out = model(input_ids=torch.zeros(1, 4, dtype=torch.long, device="meta"), use_cache=True)
        cache = output_cache(out)
        for layer in getattr(cache, "layers", []):
            keys = getattr(layer, "keys", None)
            if keys is not None and keys.dim() == 4:
                return int(keys.shape[1]), int(keys.shape[3])
    except Exception:  # some models call .item() or kernels with no meta implementation
        pass
    kv = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or (getattr(text, "hidden_size", 0) // max(1, heads)))
    return kv, head_dim


def _expert_bytes(model: Any) -> tuple[int, int, str]:
    """(elements in fused 3-D expert parameters, elements in linear + expert weights, an expert parameter's name).
    The output embedding (lm_head) is not counted: quantizers leave it in full precision by design."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    experts = body = 0
    example = ""
    for name, module in model.named_modules():
        if module is head or isinstance(module, torch.nn.modules.conv._ConvNd):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(module, torch.nn.Linear) and pname == "weight":
                body += p.numel()
            elif p.dim() == 3:
                experts += p.numel()
                body += p.numel()
                example = example or f"{name}.{pname}"
    return experts, body, example


def _projection_weights(model: Any) -> tuple[int, int]:
    """(elements in nn.Linear weights, in Transformers' Conv1D weights), the output embedding apart."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linear = conv1d = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if module is head or weight is None:
            continue
        if isinstance(module, torch.nn.Linear):
            linear += weight.numel()
        elif type(module).__name__ == "Conv1D":
            conv1d += weight.numel()
    return linear, conv1d


def _own_linear_forward(model: Any) -> tuple[str, ...]:
    """``nn.Linear`` subclasses that compute with their weight themselves (a quantizer that swaps only the weight
    tensor and keeps the class breaks there: Falcon's ``input @ self.weight.T``)."""
    import torch

    found = {
        type(m).__name__
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
        and type(m) is not torch.nn.Linear
        and type(m).forward is not torch.nn.Linear.forward
    }
    return tuple(sorted(found))


def _weight_matmul(model: Any, source_code: str) -> tuple[str, ...]:
    """``self.<linear>.weight @ ...`` in the modeling code: a linear's weight used outside ``nn.Linear.forward``
    (Mamba's ``self.dt_proj.weight @ time_step``), which int8 parameters and tensor subclasses do not support."""
    import torch

    linears = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    used = set(re.findall(r"self\.(\w+)\.weight\s*@", source_code))
    return tuple(sorted(f"self.{a}.weight @ ..." for a in used & linears))

"""Does a technique apply to this model? Decided before loading from what the technique sets (its attention
implementation, its cache, its runner) and the model's facts (:class:`~pytest_infer.core.model_facts.ModelFacts`),
then the technique's own ``applies`` predicate. Every technique gets these rules, a model repository's too.

The reasons name the model class and what it lacks (``Gemma2ForCausalLM does not support attn_implementation='sdpa'
(_supports_sdpa=False)...``): the case is skipped with it, a failure only under ``--infer-strict``. The rules follow
Transformers 5.24 (docs/architectures.md has the matrix they were measured on).
"""

from __future__ import annotations

from typing import Any

from pytest_infer.core.model_facts import ModelFacts
from pytest_infer.core.stack import Stack
from pytest_infer.core.technique import Lazy, Technique, resolve_kwargs

CONTINUOUS_BATCHING_LAYERS = frozenset({"full_attention", "sliding_attention"})
# torch.compile of a model this large on a CPU takes minutes (measured: 147 s for the first call of a 0.6 B model on
# 2 cores, 40-350 s for tiny models of other architectures): only when the technique is asked for by name
COMPILE_CPU_PARAMETERS = 100_000_000
DEFAULT_Q_GROUP_SIZE = 64  # QuantizedCache's default q_group_size (quanto and hqq backends)


def model_reason(technique: Technique, facts: ModelFacts | None, stack: Stack) -> str | None:
    """Why ``technique`` does not apply to the model ``facts`` describe (None: it does, or nothing is known)."""
    if facts is None:
        return None
    reason = (
        _attention_reason(technique, facts)
        or _batching_reason(technique, facts)
        or _cache_reason(technique, facts)
        or (technique.applies(facts, stack) if technique.applies is not None else None)
    )
    return reason


def _attention(technique: Technique) -> str | None:
    value = technique.load_kwargs.get("attn_implementation")
    if isinstance(value, Lazy):
        try:
            value = value.resolve()
        except Exception:  # a factory that needs its backend installed: decided at load
            return None
    return None if value is None else str(value)


def _attention_reason(technique: Technique, facts: ModelFacts) -> str | None:
    impl = _attention(technique)
    if impl is None:
        return None
    base = impl.removeprefix("paged|")
    name = facts.class_name
    if base != "eager" and not facts.has_kv:
        return (
            f"{name} has no attention layers (layer_types: {facts.layers_summary()}): attn_implementation={impl!r} "
            "has nothing to act on"
        )
    if base == "sdpa" and not facts.supports_sdpa:
        why = " (attention logit softcapping, which SDPA cannot express)" if facts.softcapping else ""
        return f"{name} does not support attn_implementation='sdpa' (_supports_sdpa=False){why}"
    if base == "flex_attention" and not facts.supports_flex:
        return f"{name} does not support attn_implementation='flex_attention' (_supports_flex_attn=False)"
    if base.startswith("flash_attention") and not facts.supports_flash:
        return f"{name} does not support attn_implementation={base!r} (_supports_flash_attn=False)"
    builtin = base in ("eager", "sdpa", "flex_attention") or base.startswith("flash_attention")
    if not builtin and not facts.attention_backend:  # a registered or hub function is called only through the interface
        return (
            f"{name} does not dispatch attention through AttentionInterface (_supports_attention_backend=False): "
            f"attn_implementation={impl!r} would never be called"
        )
    return None


def _batching_reason(technique: Technique, facts: ModelFacts) -> str | None:
    if technique.runner != "generate_batch":
        return None
    name = facts.class_name
    if facts.stateful or not facts.kinds <= CONTINUOUS_BATCHING_LAYERS:
        other = sorted(facts.kinds - CONTINUOUS_BATCHING_LAYERS)
        return (
            "continuous batching pages only full and sliding attention keys and values (Transformers raises "
            f"'Invalid layer type'); {name} has {', '.join(other) or 'recurrent state'} layers"
        )
    if not facts.attention_backend:
        return (
            f"{name} does not dispatch attention through AttentionInterface (_supports_attention_backend=False): it "
            "would neither read the paged cache nor know the paged attention functions"
        )
    if facts.paged_update_without_kwargs:
        return (
            f"{name}'s attention calls cache.update(key, value, layer_idx) without the kwargs the paged cache needs "
            "(every request would fail inside generate_batch)"
        )
    return None


def _cache_reason(technique: Technique, facts: ModelFacts) -> str | None:
    kwargs: dict[str, Any] = resolve_kwargs(technique.generate_kwargs, needed_length=1, device="cpu")
    impl = kwargs.get("cache_implementation")
    if impl is None:
        return None
    name = facts.class_name
    if not facts.default_dynamic_cache:
        return f"{name} builds its own cache: Transformers ignores cache_implementation={impl!r}"
    if impl != "dynamic" and not facts.has_kv:
        if impl == "quantized":
            return f"QuantizedCache quantizes keys and values; {name} keeps none ({facts.layers_summary()})"
        return (
            f"{name} keeps no key/value cache (layer_types: {facts.layers_summary()}): cache_implementation={impl!r} "
            "builds the same recurrent state as the dynamic cache"
        )
    if impl == "sliding_window" and not facts.sliding:
        return (
            f"{name} has no sliding-window layers (layer_types: {facts.layers_summary()}): the deprecated "
            "'sliding_window' cache is a plain StaticCache here"
        )
    if impl == "quantized":
        other = sorted(facts.kinds - {"full_attention"})
        if other:
            return f"QuantizedCache supports only full-attention layers; {name} has {', '.join(other)} layers"
        config = kwargs.get("cache_config") or {}
        backend = str(config.get("backend", "quanto")).lower()
        group = int(config.get("q_group_size", DEFAULT_Q_GROUP_SIZE))
        width = facts.kv_heads * facts.head_dim
        if backend in ("quanto", "hqq") and width and width % group:
            return (
                f"QuantizedCache({backend}, q_group_size={group}) quantizes each cached {name} [batch, "
                f"kv_heads={facts.kv_heads}, "
                f"seq, head_dim={facts.head_dim}] tensor in groups of {group}: kv_heads*head_dim={width} is not a "
                f"multiple of {group}, so it fails at prompt lengths where kv_heads*seq*head_dim is not "
                f"('Group size ({group}) must be a divisor of ...'); set cache_config q_group_size to a divisor of {width}"
            )
    return None


def size_reason(technique: Technique, facts: ModelFacts | None, stack: Stack, *, named: bool) -> str | None:
    """A compiled technique on a CPU with a model over :data:`COMPILE_CPU_PARAMETERS` parameters, unless selected by
    name (``named``): the compile alone takes minutes there."""
    if facts is None or named or not technique.compiled or stack.device_kind != "cpu":
        return None
    if facts.parameters <= COMPILE_CPU_PARAMETERS:
        return None
    return (
        f"compile of a {facts.parameters / 1e6:,.0f}M-parameter model on CPU takes minutes; "
        f"pass --infer-technique {technique.name} to force"
    )

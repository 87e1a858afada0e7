"""What a model's config and class say before any weight loads (:class:`ModelFacts`): its layer kinds, attention
backends, cache, tensor-parallel plan, head counts as cached, size, fused experts; read by
:func:`pytest_infer.runtime.capabilities.read_facts`, judged by each technique's ``applies`` predicate."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

# layer types as Transformers' caches see them (cache_utils: DYNAMIC_LAYER_TYPE_MAPPING / STATIC_LAYER_TYPE_MAPPING)
KV_LAYER_TYPES = frozenset({"full_attention", "sliding_attention", "chunked_attention", "indexed_attention"})
STATE_LAYER_TYPES = frozenset({"linear_attention", "conv"})  # conv + recurrent state, no key/value
HYBRID_LAYER_TYPES = frozenset({"hybrid", "hybrid_sliding"})  # state and key/value in one layer
SLIDING_LAYER_TYPES = frozenset({"sliding_attention", "chunked_attention", "hybrid_sliding"})


@dataclass(frozen=True)
class ModelFacts:
    """Facts of one model (class, config, a meta-device instance: no weights), as plain values."""

    class_name: str
    model_type: str
    layer_types: tuple[str, ...] = ()
    supports_sdpa: bool = True
    supports_flex: bool = True
    supports_flash: bool = True
    attention_backend: bool = True  # _supports_attention_backend: attention dispatched through AttentionInterface
    stateful: bool = False  # _is_stateful: recurrent state (assisted generation, continuous batching refuse it)
    default_dynamic_cache: bool = True  # False: the model builds its own cache; cache_implementation is ignored
    tp_plan: tuple[str, ...] = ()  # the keys of the tensor-parallel plan
    heads: int = 0
    kv_heads: int = 0  # as cached (Falcon multi-query caches one head whatever num_kv_heads says)
    head_dim: int = 0
    calls_sdpa_itself: bool = False  # its attention calls F.scaled_dot_product_attention, not AttentionInterface
    alibi: bool = False
    softcapping: bool = False  # attention logit softcapping (SDPA cannot express it)
    paged_update_without_kwargs: bool = False  # cache.update(k, v, layer_idx) without the kwargs paged caches need
    own_linear_forward: tuple[str, ...] = ()  # nn.Linear subclasses with a forward of their own (own matmul)
    weight_matmul: tuple[str, ...] = ()  # modeling code using a linear's .weight outside nn.Linear.forward
    parameters: int = 0
    linear_weights: int = 0  # elements in nn.Linear weights (lm_head apart)
    conv1d_weights: int = 0  # elements in Transformers' Conv1D projections (GPT-2): no nn.Linear
    expert_share: float = 0.0  # share of linear + fused-expert weights held in fused 3-D expert parameters
    expert_example: str = ""
    max_positions: int | None = None

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self.layer_types)

    @property
    def has_kv(self) -> bool:
        """Whether any layer keeps keys and values (attention has something to act on)."""
        return bool(self.kinds & (KV_LAYER_TYPES | HYBRID_LAYER_TYPES))

    @property
    def sliding(self) -> bool:
        return bool(self.kinds & SLIDING_LAYER_TYPES)

    def layers_summary(self) -> str:
        """``full_attention x2`` / ``linear_attention x24`` (what the caches will build)."""
        return ", ".join(f"{t} x{n}" for t, n in Counter(self.layer_types).items()) or "unknown"

"""Upstream defects our checks found, recorded as strict xfails keyed to the affected stacks.

Strict: when an upstream fix lands, the case XPASSes and fails the run, telling us to retire the entry.
Versions are keyed narrowly (the versions we saw it on); on any other version the check runs as usual
and fails if the defect is still there, which is the alert we want.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_infer.core.detect import cpu_flags
from pytest_infer.core.requirements import Requirements
from pytest_infer.core.stack import Stack

ModelConfig = Mapping[str, Any]

# suite test function -> the check it runs
CHECKS = {
    "test_logit_parity": "logits",
    "test_padded_batches": "padding",
    "test_generation_parity": "generation",
    # goldens compare what the same call produced: a defect of that call is theirs too
    "test_logits_golden": "logits",
    "test_generation_golden": "generation",
    "test_no_recompiles_after_warmup": "recompile",
    "test_weight_storage": "storage",
    "test_inference_mode": "inference_mode",
    "test_budget_exceeding_parity": "batching",
    "test_repeated_generate_batch": "batching",
    "test_manager_api": "batching",
    "test_cache_is_the_one_requested": "cache",
    "test_cache_arguments_not_mutated": "cache_arguments",
    "test_kv_cache_memory": "cache",
    "test_rank_agreement": "ranks",
    # lossy techniques (issue 17): a forward with the quantized layers / generation through the quantized cache
    "test_kernel_parity": "kernel",
    "test_quality": "quality",
    "test_cache_kernel_parity": "cache_kernel",
    "test_cache_quality": "quality",
    # the stability suite (issue 19): forwards at batch placements, sampled and repeated generations
    "test_batch_invariance": "invariance",
    "test_sampling_reproducible": "sampling",
    "test_memory_stability": "memory_stability",
    # the perf suite: timed generate / forward calls of the technique
    "test_decode_speed": "decode",
    "test_memory": "decode",
    "test_prefill_latency": "prefill",
    "test_time_to_first_token": "prefill",
    "test_model_load": "load",
}


@dataclass(frozen=True)
class KnownIssue:
    technique: str  # a technique name; matches stacks containing it
    check: str | tuple[str, ...]  # logits | padding | generation | recompile | storage | inference_mode
    affected: Requirements  # the stacks it is known on (device kinds, package versions)
    reason: str
    evidence: str
    model: Callable[[ModelConfig], bool] | None = None  # the models it is known on (their config.json)

    def applies(self, components: tuple[str, ...], check: str, stack: Stack, model_config: ModelConfig) -> bool:
        return (
            self.technique in components
            and check in ((self.check,) if isinstance(self.check, str) else self.check)
            and self.affected.check(stack) is None
            and (self.model is None or self.model(model_config))
        )


def _bnb_cpu_packing_applies(stack: Stack) -> str | None:
    """bitsandbytes repacks 4-bit weights for CPUs with AVX512-BF16 (``has_avx512bf16``)."""

    return None if "avx512_bf16" in cpu_flags() else "CPU without avx512_bf16: bitsandbytes does not repack"


def _fused_experts(config: ModelConfig) -> bool:
    """A mixture-of-experts config (Mixtral, Qwen3-MoE, GraniteMoE...): Transformers 5 fuses its experts."""
    return any(config.get(k) for k in ("num_local_experts", "num_experts"))


WEIGHT_QUANTIZATION = (
    "bnb_8bit",
    "bnb_nf4",
    "bnb_fp4",
    "torchao_int8_weight_only",
    "torchao_int8_dynamic",
    "torchao_int4_weight_only",
    "torchao_float8_weight_only",
    "quanto_int8",
    "quanto_int4",
    "hqq_4bit",
)


def _in_features_not_multiple_of_64(config: ModelConfig) -> bool:
    """A linear layer whose input size is not a multiple of bitsandbytes' 4-bit block size (64)."""
    sizes = [config.get("hidden_size"), config.get("intermediate_size")]
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if heads and head_dim:
        sizes.append(heads * head_dim)  # o_proj's input
    return any(isinstance(n, int) and n % 64 for n in sizes)


KNOWN_ISSUES: tuple[KnownIssue, ...] = (
    *(
        KnownIssue(
            technique=name,
            check="storage",
            affected=Requirements(packages=(("transformers", ">=5.24,<5.25"),)),
            model=_fused_experts,
            reason=(
                "transformers 5.24 stores a mixture of experts' experts as fused 3-D parameters "
                "(experts.gate_up_proj / experts.down_proj) and its bitsandbytes, torchao, quanto and HQQ integrations "
                "quantize nn.Linear layers only: the experts, most of the weights, stay in full precision"
            ),
            evidence="scripts/repro/moe_fused_experts_unquantized.py; docs/known-issues.md",
        )
        for name in WEIGHT_QUANTIZATION
    ),
    KnownIssue(
        technique="flex_attention",
        # the perf suite's decode and memory scenarios, and the stability suite's sampled and repeated generations,
        # run the same generate
        check=("generation", "sampling", "memory_stability", "decode"),
        affected=Requirements(device_kinds=frozenset({"cpu"}), packages=(("torch", ">=2.13,<2.14"),)),
        reason=(
            "torch 2.13 inductor (CPU): flex_attention in generate() on a left-padded batch emits C++ that does "
            "not compile ('cur_kvSplitSize0' was not declared in this scope)"
        ),
        evidence="scripts/repro/flex_cpu_padded_generate.py; docs/known-issues.md",
    ),
    *(
        KnownIssue(
            technique=name,
            # every check that runs a forward
            check=(
                "logits",
                "padding",
                "generation",
                "inference_mode",
                "kernel",
                "quality",
                "invariance",
                "sampling",
                "memory_stability",
                "decode",
                "prefill",
            ),
            affected=Requirements(
                device_kinds=frozenset({"cpu"}),
                packages=(("bitsandbytes", ">=0.48,<=0.50.2"),),
                custom=(_bnb_cpu_packing_applies,),
            ),
            model=_in_features_not_multiple_of_64,
            reason=(
                "bitsandbytes <=0.50.2 on CPUs with AVX512-BF16: the first 4-bit forward repacks the weights and "
                "reshapes absmax to [out, in // 64], which fails when a layer's input size is not a multiple of "
                "64 (RuntimeError: shape '[128, 5]' is invalid for input of size 704 on the embedded model's down_proj)"
            ),
            evidence="scripts/repro/bnb_cpu_4bit_packing.py; docs/known-issues.md",
        )
        for name in ("bnb_nf4", "bnb_fp4")
    ),
    *(
        KnownIssue(
            technique=name,
            check="kernel",
            affected=Requirements(
                device_kinds=frozenset({"cpu"}),
                packages=(("bitsandbytes", ">=0.48,<=0.50.2"),),
                custom=(_bnb_cpu_packing_applies,),
            ),
            model=lambda config: not _in_features_not_multiple_of_64(config),  # the others fail to repack (above)
            reason=(
                "bitsandbytes <=0.50.2 on CPUs with AVX512-BF16 computes 4-bit layers in bfloat16 whatever "
                "bnb_4bit_compute_dtype asks (its CPU gemv casts the input and the scales to bfloat16): relative error "
                "~3e-3 against the float32 product of the input and the layer's own decoded weights, 1000x the bound"
            ),
            evidence="scripts/repro/bnb_cpu_4bit_after_repack.py; docs/known-issues.md",
        )
        for name in ("bnb_nf4", "bnb_fp4")
    ),
    KnownIssue(
        technique="quanto_int4",
        check="inference_mode",
        affected=Requirements(packages=(("optimum-quanto", ">=0.2.5,<=0.2.7"),)),
        reason=(
            "optimum-quanto <=0.2.7: a forward of int4 (packed QBits) weights under torch.inference_mode() raises "
            "'RuntimeError: Cannot set version_counter for inference tensor' (qbits.py); no_grad works"
        ),
        evidence="scripts/repro/quanto_int4_inference_mode.py; docs/known-issues.md",
    ),
    KnownIssue(
        technique="kernels_use_kernels_local",
        # every check: each one loads the model
        check=(
            "logits",
            "padding",
            "generation",
            "inference_mode",
            "invariance",
            "sampling",
            "memory_stability",
            "decode",
            "prefill",
            "load",
        ),
        affected=Requirements(packages=(("transformers", "==5.24.0"),)),
        reason=(
            "transformers 5.24: from_pretrained(use_kernels=True, kernel_config=KernelConfig(..., "
            "use_local_kernel=True)) raises AttributeError: 'tuple' object has no attribute 'split' "
            "(register_kernel_replacements_and_fusions rewrites the mapping to (repo, metadata) tuples; "
            "KernelConfig.create_compatible_mapping's local branch splits them as strings)"
        ),
        evidence="tests/test_kernels.py::test_transformers_local_kernel_config_defect; docs/kernels.md",
    ),
    *(
        KnownIssue(
            technique=name,
            check="cache_arguments",
            affected=Requirements(packages=(("transformers", ">=5.17,<5.18"),)),
            reason=(
                "transformers 5.17: generate() builds a QuantizedCache from the caller's cache_config dict itself, "
                "popping 'backend' and adding 'config' (fixed later: 5.24 deep-copies it)"
            ),
            evidence="docs/stacks/h200.md (run of 2026-11-26, cache check 'arguments unchanged'); docs/known-issues.md",
        )
        for name in ("quantized_cache_quanto_4bit", "quantized_cache_quanto_2bit", "quantized_cache_hqq_4bit")
    ),
)


def known_issue(
    components: tuple[str, ...], check: str, stack: Stack, model_config: ModelConfig | None = None
) -> KnownIssue | None:
    config = model_config or {}
    return next((k for k in KNOWN_ISSUES if k.applies(components, check, stack, config)), None)

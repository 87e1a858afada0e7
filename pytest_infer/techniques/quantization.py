"""Weight quantization through ``quantization_config`` in ``from_pretrained``: bitsandbytes, torchao,
quanto, HQQ.

Each technique loads with ``device_map`` set to the run's device (quantized weights cannot be moved with
``.to()`` afterwards) and, where the scheme has one, a compute dtype equal to the run's dtype: the dtype in
the case id (``cpu-bfloat16-bnb_nf4``) is the compute dtype, and :func:`check_compute_dtype` verifies after
loading that the quantized layers really compute in it (bitsandbytes defaults 4-bit layers to float32
compute, a silent slow path).

Tolerances are fixed per scheme (quantization is lossy: the noise floor of the reference does not
apply) and come from measurement on the embedded model (docs/quantization.md, ``scripts/measure_quantization.py``).
Expectations bound the real weight storage (quantized tensor subclasses unwrapped, see
:func:`pytest_infer.measure.weight_bytes`) as a ratio of the unquantized model's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pytest_infer.core.expectation import Expectation
from pytest_infer.core.model_facts import ModelFacts
from pytest_infer.core.requirements import Requirements
from pytest_infer.core.stack import Stack
from pytest_infer.core.technique import Lazy, Technique
from pytest_infer.core.tolerance import Tolerance

QUANTIZED_TOLERANCE_METRICS = ("max_kl", "mean_kl", "min_top1")


def _device_map(device: str) -> str:
    return device


def _dtype(dtype: str) -> Any:
    import torch

    return getattr(torch, dtype)


def _bnb(bits: int, quant_type: str = "nf4", double_quant: bool = False) -> Lazy:
    def config(dtype: str) -> Any:
        from transformers import BitsAndBytesConfig

        if bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_compute_dtype=_dtype(dtype),
            bnb_4bit_use_double_quant=double_quant,
        )

    return Lazy(config, f"BitsAndBytesConfig({bits}-bit{'' if bits == 8 else ' ' + quant_type})")


def _torchao(config_name: str, **kwargs: Any) -> Lazy:
    def config() -> Any:
        import torchao.quantization as q
        from transformers import TorchAoConfig

        return TorchAoConfig(getattr(q, config_name)(**kwargs))

    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return Lazy(config, f"TorchAoConfig({config_name}({args}))")


def _quanto(weights: str) -> Lazy:
    def config() -> Any:
        from transformers import QuantoConfig

        return QuantoConfig(weights=weights)

    return Lazy(config, f"QuantoConfig(weights={weights!r})")


def _hqq(nbits: int) -> Lazy:
    def config() -> Any:
        from transformers import HqqConfig

        return HqqConfig(nbits=nbits)

    return Lazy(config, f"HqqConfig(nbits={nbits})")


def hqq_usable(stack: Stack) -> str | None:
    """The Transformers side first (it is the blocker on 5.x), then the hqq package."""
    reason = transformers_supports_hqq_weights(stack)
    if reason is None and stack.version("hqq") is None:
        reason = "hqq not installed (pip install hqq)"
    return reason


def transformers_supports_hqq_weights(stack: Stack) -> str | None:
    """Transformers 5.x rewrote weight loading; its HQQ quantizer has no loading ops yet and raises
    ``NotImplementedError: hqq is not available yet``. Read from the installed source (no import)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return "transformers not installed"
    source = Path(next(iter(spec.submodule_search_locations))) / "quantizers" / "quantizer_hqq.py"
    if not source.is_file():
        return f"transformers {stack.version('transformers')} has no HQQ quantizer"
    if "def get_quantize_ops" not in source.read_text(encoding="utf-8"):
        return (
            f"transformers {stack.version('transformers')} does not implement HQQ weight loading "
            "(HqqHfQuantizer has no get_quantize_ops: from_pretrained raises NotImplementedError)"
        )
    return None


def torchao_int4_ready(stack: Stack) -> str | None:
    """torchao 0.18's int4 weight-only layout calls into the separate ``mslk`` kernels package
    (seen on the H200 run: ``ImportError: Requires mslk >= 1.0.0`` for every linear layer)."""
    from packaging.version import Version

    version = stack.version("torchao")
    if version is not None and Version(version) >= Version("0.18") and stack.version("mslk") is None:
        return f"torchao {version} int4 weight-only needs mslk>=1.0.0 (pip install mslk)"
    return None


def check_compute_dtype(model: Any) -> Any:
    """Fail the load when a bitsandbytes 4-bit layer computes in another dtype than the model runs in."""
    wanted = model.dtype
    for name, module in model.named_modules():
        compute = getattr(module, "compute_dtype", None)
        if type(module).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4") and compute not in (None, wanted):
            raise AssertionError(
                f"{name}: bitsandbytes 4-bit layer computes in {compute} while the model runs in {wanted} "
                "(bnb_4bit_compute_dtype not applied: a silent slow path)"
            )
    return model


def _tol(max_kl: float, mean_kl: float, min_top1: float, tie_margin: float, min_greedy: float) -> dict[str, Any]:
    """One lossy bound for every dtype: quantization error dominates the dtype's own noise."""
    base = Tolerance(max_kl=max_kl, mean_kl=mean_kl, min_top1=min_top1, tie_margin=tie_margin, min_greedy=min_greedy)
    return dict.fromkeys(("float32", "bfloat16", "float16"), base)


COVERED = 0.9  # the share of linear + fused-expert weights a weight format must really store quantized


def _storage(float32: float, half: float) -> tuple[Expectation, ...]:
    """Bytes of the quantized layers (scales included) vs. the same layers unquantized in the same dtype:
    a property of the scheme, not of the model (embeddings and lm_head stay unquantized, so the
    whole-model ratio depends on their share: reported as weight_memory_ratio); and the share of the linear and
    fused-expert weights stored quantized (``covered_fraction``: a Linear-only scheme leaves a mixture of experts'
    fused expert parameters, most of its weights, in full precision)."""
    return (
        Expectation("quantized_layers_ratio", "<=", float32, dtypes=("float32",)),
        Expectation("quantized_layers_ratio", "<=", half, dtypes=("bfloat16", "float16")),
        Expectation("covered_fraction", ">=", COVERED),
    )


def _weight_used_outside_linear(facts: ModelFacts, stack: Stack) -> str | None:
    """bitsandbytes and HQQ replace each nn.Linear by a module of their own: code that reads a linear's weight
    outside its forward (Mamba's ``self.dt_proj.weight @ time_step``) gets int8 or packed data."""
    if facts.weight_matmul:
        return (
            f"{facts.class_name} uses a linear layer's weight outside its forward ({', '.join(facts.weight_matmul)}): "
            "the quantized weight this scheme stores there is not a float matrix"
        )
    return None


def _linear_only(facts: ModelFacts, stack: Stack) -> str | None:
    """torchao, quanto and HQQ quantize nn.Linear layers only: GPT-2's projections are Transformers' Conv1D modules
    (bitsandbytes converts those too), so nothing would be quantized."""
    if facts.conv1d_weights and not facts.linear_weights:
        return (
            f"{facts.class_name}'s projections are Transformers Conv1D modules, not nn.Linear: this scheme quantizes "
            "nn.Linear layers only, so it would quantize nothing"
        )
    return None


def _quanto_applies(facts: ModelFacts, stack: Stack) -> str | None:
    return _linear_only(facts, stack)


def _hqq_applies(facts: ModelFacts, stack: Stack) -> str | None:
    return _linear_only(facts, stack) or _weight_used_outside_linear(facts, stack)


def _weight_swapped_in_place(facts: ModelFacts, stack: Stack) -> str | None:
    """torchao keeps each module's class and swaps its weight for a tensor subclass that implements what
    ``nn.Linear.forward`` needs (linear), not a module's own matmul (Falcon's ``input @ self.weight.T``)."""
    if facts.own_linear_forward:
        return (
            f"{facts.class_name}'s linear layers compute with their weight themselves "
            f"({', '.join(facts.own_linear_forward)}.forward): torchao's quantized weight supports nn.Linear.forward only"
        )
    return _linear_only(facts, stack) or _weight_used_outside_linear(facts, stack)


def builtin() -> list[Technique]:
    bnb = Requirements(packages=(("bitsandbytes", ">=0.46"),), device_kinds=frozenset({"cpu", "cuda", "xpu"}))
    torchao = Requirements(packages=(("torchao", ">=0.12"),))
    torchao_cuda = Requirements(
        packages=(("torchao", ">=0.12"),), device_kinds=frozenset({"cuda"}), custom=(torchao_int4_ready,)
    )
    quanto = Requirements(packages=(("optimum-quanto", ">=0.2.5"),))
    placed = {"device_map": Lazy(_device_map, "the run's device")}
    # Storage of the quantized layers vs. unquantized (float32 / 16-bit), measured on the embedded model:
    # int8 0.257 / 0.513 (bnb, torchao, quanto), 4-bit 0.141 / 0.283 (bnb nf4/fp4), 0.152 / 0.277 (quanto)
    # Bounds: measured on the embedded model (docs/quantization.md) x ~2.5, top-1 over decisive positions.
    # int8 measured (max over schemes, fp32/bf16): max_kl 0.056, mean_kl 0.0048, top-1 1.0, greedy 1.0
    int8 = _tol(max_kl=0.15, mean_kl=0.015, min_top1=0.95, tie_margin=1.0, min_greedy=0.9)
    # int4 measured (quanto int4): max_kl 1.44, mean_kl 0.19, top-1 0.667, greedy agreement 0.678 at 64 tokens
    int4 = _tol(max_kl=4.0, mean_kl=0.5, min_top1=0.5, tie_margin=1.0, min_greedy=0.5)
    return [
        Technique(
            name="bnb_8bit",
            family="quantization",
            description="bitsandbytes LLM.int8() linear layers",
            load_kwargs={"quantization_config": _bnb(8), **placed},
            requirements=bnb,
            tolerances=int8,
            expectations=_storage(0.27, 0.53),
            applies=_weight_used_outside_linear,
        ),
        Technique(
            name="bnb_nf4",
            family="quantization",
            description="bitsandbytes 4-bit NF4, compute in the run's dtype",
            load_kwargs={"quantization_config": _bnb(4, "nf4"), **placed},
            requirements=bnb,
            tolerances=int4,
            expectations=_storage(0.16, 0.30),
            prepare=check_compute_dtype,
            applies=_weight_used_outside_linear,
        ),
        Technique(
            name="bnb_fp4",
            family="quantization",
            description="bitsandbytes 4-bit FP4, compute in the run's dtype",
            load_kwargs={"quantization_config": _bnb(4, "fp4"), **placed},
            requirements=bnb,
            tolerances=int4,
            expectations=_storage(0.16, 0.30),
            prepare=check_compute_dtype,
            applies=_weight_used_outside_linear,
        ),
        Technique(
            name="torchao_int8_weight_only",
            family="quantization",
            description="torchao int8 weight-only (per-channel)",
            load_kwargs={"quantization_config": _torchao("Int8WeightOnlyConfig"), **placed},
            requirements=torchao,
            tolerances=int8,
            expectations=_storage(0.27, 0.53),
            applies=_weight_swapped_in_place,
        ),
        Technique(
            name="torchao_int8_dynamic",
            family="quantization",
            description="torchao int8 weights, int8 dynamic activations",
            load_kwargs={"quantization_config": _torchao("Int8DynamicActivationInt8WeightConfig"), **placed},
            requirements=torchao,
            tolerances=int8,
            expectations=_storage(0.27, 0.53),
            applies=_weight_swapped_in_place,
        ),
        Technique(
            name="torchao_int4_weight_only",
            family="quantization",
            description="torchao int4 weight-only, group size 64 (CUDA kernels)",
            load_kwargs={"quantization_config": _torchao("Int4WeightOnlyConfig", group_size=64), **placed},
            requirements=torchao_cuda,
            tolerances=int4,
            expectations=_storage(0.16, 0.32),  # packed int4 + bf16 scale and zero per 64: 0.281 of bf16
            applies=_weight_swapped_in_place,
        ),
        Technique(
            name="torchao_float8_weight_only",
            family="quantization",
            description="torchao float8 (e4m3) weight-only",
            load_kwargs={"quantization_config": _torchao("Float8WeightOnlyConfig"), **placed},
            requirements=Requirements(
                packages=(("torchao", ">=0.12"),), device_kinds=frozenset({"cuda"}), min_compute_capability=(8, 9)
            ),
            tolerances=int8,
            expectations=_storage(0.27, 0.53),
            applies=_weight_swapped_in_place,
        ),
        Technique(
            name="quanto_int8",
            family="quantization",
            description="optimum-quanto int8 weights",
            load_kwargs={"quantization_config": _quanto("int8"), **placed},
            requirements=quanto,
            tolerances=int8,
            expectations=_storage(0.27, 0.53),
            applies=_quanto_applies,
        ),
        Technique(
            name="quanto_int4",
            family="quantization",
            description="optimum-quanto int4 weights (group size 128)",
            load_kwargs={"quantization_config": _quanto("int4"), **placed},
            requirements=quanto,
            tolerances=int4,
            expectations=_storage(0.16, 0.30),
            # quanto's packed int4 weights fail under torch.inference_mode (known issue; the inference-mode
            # check keeps testing it): parity runs under no_grad, as generate() does
            inference_mode=False,
            applies=_quanto_applies,
        ),
        Technique(
            name="hqq_4bit",
            family="quantization",
            description="HQQ 4-bit weights",
            load_kwargs={"quantization_config": _hqq(4), **placed},
            requirements=Requirements(custom=(hqq_usable,)),
            tolerances=int4,
            expectations=_storage(0.16, 0.30),
            applies=_hqq_applies,
        ),
    ]

"""Kernel parity of a quantized model: does each quantized layer compute what its format stores?

During one forward of the prompt batch, a hook on every quantized layer computes, on the very input the layer got,
the exact product of that input (quantize-dequantized first where the scheme quantizes activations) with the
layer's weight decoded from its stored codes and scales (:mod:`pytest_infer.runtime.dequantize`), in float64. The
layer's real output must stay within ``FLOOR_MULTIPLE`` times the float noise of the same product computed in the
run's dtype (never below that dtype's epsilon): a faithful kernel does, whatever the format's loss; a kernel that
adds, drops or mis-scales anything does not, and the failure names the layer. Layer by layer, because schemes that
round activations amplify float noise end to end (a 1e-6 difference moves a value across an int8 step). How lossy
the format itself is, is the quality check's question (:mod:`pytest_infer.parity.quality`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_infer.core.text import number
from pytest_infer.runtime.dequantize import activation_quantizer, dequantized_weight, quantized_kind, quantized_layers

FLOOR_MULTIPLE = 10.0


@dataclass
class LayerParity:
    name: str
    kind: str  # bnb_int8, bnb_4bit, torchao, quanto, hqq
    relative_error: float  # max |real - exact| / max |exact|
    floor: float  # max |run-dtype product - exact| / max |exact|: the float noise of this product
    activations: bool  # the scheme quantizes this layer's input too (simulated)

    @property
    def bound(self) -> float:
        return FLOOR_MULTIPLE * self.floor


@dataclass
class KernelParityResult:
    technique: str
    device: str
    dtype: str
    layers: list[LayerParity] = field(default_factory=list)
    kind: str = "kernel_parity"

    @property
    def worst(self) -> LayerParity | None:
        return max(self.layers, key=lambda layer: layer.relative_error / layer.bound, default=None)

    @property
    def failures(self) -> list[str]:
        if not self.layers:
            return ["no quantized layer in the model: nothing computes a quantized format (was it applied?)"]
        return [
            f"the kernel does not compute what its format stores: layer {layer.name} ({layer.kind}"
            f"{', activations quantized' if layer.activations else ''}): relative error {number(layer.relative_error)}"
            f" > bound {number(layer.bound)} ({FLOOR_MULTIPLE:g} x this product's float noise in {self.dtype})"
            for layer in sorted(self.layers, key=lambda x: -x.relative_error / x.bound)
            if not layer.relative_error <= layer.bound
        ][:5]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def metrics(self) -> dict[str, float]:
        worst = self.worst
        return {
            "layers": float(len(self.layers)),
            "max_relative_error": worst.relative_error if worst else float("nan"),
            "bound": worst.bound if worst else float("nan"),
            "floor": worst.floor if worst else float("nan"),
        }

    def headline(self) -> str:
        worst = self.worst
        if worst is None:
            return "no quantized layer"
        return f"{len(self.layers)} layers, worst {number(worst.relative_error)} (bound {number(worst.bound)})"

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"kernel parity {verdict}: {self.technique} ({self.dtype}) on {self.device}: each quantized layer against "
            f"its own dequantized weights: {self.headline()}"
        ]
        lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": "kernel",
            "variant": "",
            "technique": self.technique,
            "device": self.device,
            "dtype": self.dtype,
            "passed": self.passed,
            "metrics": self.metrics,
            "failures": self.failures,
            "layers": [
                {
                    "name": x.name,
                    "kind": x.kind,
                    "relative_error": x.relative_error,
                    "floor": x.floor,
                    "bound": x.bound,
                    "activations": x.activations,
                }
                for x in self.layers
            ],
        }


def kernel_parity(
    model: Any, run: Callable[[], object], *, technique: str, device: str, dtype: str
) -> KernelParityResult:
    """Run ``run()`` (a forward of ``model``) with every quantized layer compared, on its own input, with the exact
    product of that input and its dequantized weight (nothing is stored but the per-layer figures)."""
    import torch

    result = KernelParityResult(technique, device, dtype)
    found: dict[str, LayerParity] = {}
    handles = []
    for name, module in quantized_layers(model).items():
        weight = dequantized_weight(module)
        bias = getattr(module, "bias", None)
        quantize = activation_quantizer(module)

        def hook(_m: Any, args: Any, out: Any, name: str = name, weight: Any = weight, bias: Any = bias,
                 quantize: Any = quantize, kind: str = str(quantized_kind(module))) -> None:  # fmt: skip
            x = args[0]
            xq = quantize(x) if quantize is not None else x
            b64 = None if bias is None else bias.detach().double()
            exact = torch.nn.functional.linear(xq.double(), weight.to(xq.device).double(), b64)
            b_run = None if bias is None else bias.detach().to(xq.dtype)
            in_dtype = torch.nn.functional.linear(xq, weight.to(device=xq.device, dtype=xq.dtype), b_run)
            scale = float(exact.abs().max()) or 1.0
            eps = float(torch.finfo(xq.dtype).eps)
            error = float((out.double() - exact).abs().max()) / scale
            floor = max(float((in_dtype.double() - exact).abs().max()) / scale, eps)
            seen = found.get(name)
            if seen is None or error / floor > seen.relative_error / seen.floor:
                found[name] = LayerParity(name, kind, error, floor, quantize is not None)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    result.layers = [found[name] for name in found]
    return result


@dataclass
class CacheKernelResult:
    """A quantized KV cache against its simulated twin (the same scheme's quantize-dequantize values stored in float,
    the same residual window): greedy generation with each, raw logits compared step by step up to each row's first
    token divergence (both have read the same tokens until then)."""

    technique: str
    device: str
    dtype: str
    simulated: str  # what the twin simulates: "quanto 4-bit, group 64, residual 16"
    relative_error: float  # max |real - simulated| / max |simulated| over the compared steps
    floor: float  # the reference's noise in this dtype relative to max |logit|, at least the dtype's epsilon
    compared_steps: int
    new_tokens: int
    rows: int
    diverged_rows: int
    kind: str = "cache_kernel_parity"

    @property
    def bound(self) -> float:
        return FLOOR_MULTIPLE * self.floor

    @property
    def failures(self) -> list[str]:
        if self.compared_steps == 0:
            return ["no decode step compared: the generation produced no logits"]
        if self.relative_error <= self.bound:
            return []
        return [
            f"the cache does not compute what its format stores: logits differ from the simulated cache ({self.simulated}) "
            f"by {number(self.relative_error)} of max |logit| > bound {number(self.bound)} ({FLOOR_MULTIPLE:g} x the "
            f"{self.dtype} noise floor); {self.diverged_rows}/{self.rows} rows chose another token"
        ]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "max_relative_error": self.relative_error,
            "bound": self.bound,
            "floor": self.floor,
            "compared_steps": float(self.compared_steps),
            "diverged_rows": float(self.diverged_rows),
        }

    def headline(self) -> str:
        return f"{number(self.relative_error)} (bound {number(self.bound)}) over {self.compared_steps} steps"

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"cache kernel parity {verdict}: {self.technique} ({self.dtype}) on {self.device} against its simulated "
            f"cache ({self.simulated}), {self.new_tokens} greedy tokens x {self.rows} prompts: {self.headline()}"
        ]
        lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": "kernel",
            "variant": "kv cache",
            "technique": self.technique,
            "device": self.device,
            "dtype": self.dtype,
            "passed": self.passed,
            "simulated": self.simulated,
            "metrics": self.metrics,
            "failures": self.failures,
        }


def compare_cache_runs(
    real: tuple[Any, Any],
    simulated: tuple[Any, Any],
    *,
    technique: str,
    device: str,
    dtype: str,
    what: str,
    floor: float,
) -> CacheKernelResult:
    """(tokens, logits) of the real cache's generation against the simulated cache's (see :class:`CacheKernelResult`)."""
    tokens, logits = real
    sim_tokens, sim_logits = simulated
    rows, steps = int(tokens.shape[0]), int(tokens.shape[1])
    worst, scale, compared, diverged = 0.0, 0.0, 0, 0
    for b in range(rows):
        differ = (tokens[b] != sim_tokens[b]).nonzero()
        last = int(differ[0]) if len(differ) else steps - 1  # the first divergent step still read the same tokens
        diverged += bool(len(differ))
        a, s = logits[b, : last + 1].double(), sim_logits[b, : last + 1].double()
        worst = max(worst, float((a - s).abs().max()))
        scale = max(scale, float(s.abs().max()))
        compared += last + 1
    return CacheKernelResult(
        technique, device, dtype, what, worst / (scale or 1.0), floor, compared, steps, rows, diverged
    )

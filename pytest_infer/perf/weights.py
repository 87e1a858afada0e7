"""Real weight storage of a technique's model against the unquantized reference's.

``model.get_memory_footprint()`` counts each parameter's nominal ``numel * element_size``: for torchao
and quanto, whose quantized weights are tensor subclasses wrapping int8/int4 data, it reports the full
float size (1.0x). :func:`pytest_infer.runtime.memory.weight_bytes` unwraps the subclasses and counts the bytes
actually stored; this module turns that into a result with the technique's ``weight_memory_ratio``
and ``quantized_layers_ratio`` expectations decided on it by the claims rule (:mod:`pytest_infer.perf.claims`;
bytes are deterministic: the interval is the single value).

``quantized_layers_ratio`` compares only the layers that were quantized with the same layers unquantized:
it depends on the scheme, not on how much of a model is embeddings (41 % of the embedded model, ~3 % of a
7B model), so the built-in techniques state their expectations with it; ``weight_memory_ratio`` (whole
model) is reported and can be asserted per model with ``@pytest.mark.infer_memory``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_infer.core.expectation import Expectation
from pytest_infer.perf.claims import holds
from pytest_infer.runtime.coverage import Coverage, weight_coverage
from pytest_infer.runtime.memory import weight_bytes


@dataclass
class WeightStorageResult:
    technique: str
    baseline: str
    device: str
    dtype: str
    weight_bytes: int
    baseline_weight_bytes: int
    footprint_bytes: int | None  # what Transformers' get_memory_footprint() says
    baseline_footprint_bytes: int | None
    expectations: list[Expectation] = field(default_factory=list)
    quantized_modules: list[str] = field(default_factory=list)
    require_quantized: bool = True
    quantized_layer_bytes: int = 0  # the quantized weights as stored (scales included)...
    baseline_layer_bytes: int = 0  # ...and the same weights unquantized, in the run dtype
    coverage: Coverage | None = None  # where the candidate's bytes are, quantized or not (fused experts apart)
    kind: str = "weight_storage"

    @property
    def ratio(self) -> float:
        return self.weight_bytes / max(1, self.baseline_weight_bytes)

    @property
    def footprint_ratio(self) -> float | None:
        if not self.footprint_bytes or not self.baseline_footprint_bytes:
            return None
        return self.footprint_bytes / self.baseline_footprint_bytes

    @property
    def layers_ratio(self) -> float | None:
        return self.quantized_layer_bytes / self.baseline_layer_bytes if self.baseline_layer_bytes else None

    @property
    def covered_fraction(self) -> float | None:
        return None if self.coverage is None else self.coverage.covered_fraction

    def measured(self, metric: str) -> float | None:
        return {
            "weight_memory_ratio": self.ratio,
            "quantized_layers_ratio": self.layers_ratio,
            "covered_fraction": self.covered_fraction,
        }.get(metric)

    @property
    def broken(self) -> list[Expectation]:
        return [e for e in self.expectations if not holds(e, self.measured(e.metric))]

    @property
    def passed(self) -> bool:
        if self.require_quantized and not self.quantized_modules:
            return False
        return not self.broken

    def headline(self) -> str:
        layers = f", layers {self.layers_ratio:.3f}x" if self.layers_ratio is not None else ""
        return f"{self.ratio:.3f}x storage{layers}"

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        fp = self.footprint_ratio
        lines = [
            f"weight storage {verdict}: {self.technique} ({self.dtype}) holds {self.weight_bytes:,} bytes of weights "
            f"vs {self.baseline_weight_bytes:,} for {self.baseline} ({self.dtype}) on {self.device}: "
            f"{self.ratio:.3f}x",
        ]
        if self.layers_ratio is not None:
            lines.append(
                f"  the {len(self.quantized_modules)} quantized layers alone: {self.layers_ratio:.3f}x "
                f"({self.quantized_layer_bytes:,} vs {self.baseline_layer_bytes:,} bytes)"
            )
        for e in self.expectations:
            m = self.measured(e.metric)
            state = "BROKEN" if e in self.broken else "holds"
            shown = "n/a" if m is None else f"{m:.3f}"
            lines.append(f"  expected {e.metric} {e.op} {e.value:g}: measured {shown}, {state}")
        if self.coverage is not None and self.covered_fraction is not None and self.covered_fraction < 1.0:
            left = self.coverage.unquantized
            body = sum(left.get(c, 0) for c in ("linear_full", "experts_full"))
            if body:
                parts = ", ".join(
                    f"{c.replace('_full', '')} {n:,} bytes" for c, n in left.items() if c.endswith("_full")
                )
                example = self.coverage.examples.get("experts_full") or self.coverage.examples.get("linear_full", "")
                lines.append(
                    f"  {1 - self.covered_fraction:.1%} of the linear and fused-expert weights stay in full precision "
                    f"({parts} unquantized; e.g. {example})"
                )
        if fp is not None and abs(fp - self.ratio) > 0.01:
            lines.append(
                f"  (get_memory_footprint() says {fp:.3f}x: it counts quantized tensors at their nominal size)"
            )
        if self.require_quantized and not self.quantized_modules:
            lines.append("  no module holds quantized weights: the quantization config was not applied")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": "storage",
            "variant": "",
            "technique": self.technique,
            "reference": self.baseline,
            "device": self.device,
            "dtype": self.dtype,
            "passed": self.passed,
            "metrics": {
                "weight_bytes": float(self.weight_bytes),
                "baseline_weight_bytes": float(self.baseline_weight_bytes),
                "weight_memory_ratio": self.ratio,
                "footprint_ratio": self.footprint_ratio,
                "quantized_layers_ratio": self.layers_ratio,
                "covered_fraction": self.covered_fraction,
            },
            "coverage": None if self.coverage is None else self.coverage.to_dict(),
            "expectations": [
                {"metric": e.metric, "op": e.op, "value": e.value, "holds": e not in self.broken}
                for e in self.expectations
            ],
            "quantized_modules": len(self.quantized_modules),
            "failures": [] if self.passed else [line.strip() for line in self.message().splitlines()[1:]],
        }


def quantized_modules(model: Any) -> list[str]:
    """Names of modules whose weight is stored quantized (a tensor subclass, or a non-float dtype)."""
    import torch

    names = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        data = getattr(weight, "data", weight)
        if type(data) not in (torch.Tensor, torch.nn.Parameter) or not data.dtype.is_floating_point:
            names.append(name)
    return names


def measure_weight_storage(
    model: Any,
    baseline: Any,
    *,
    technique: str,
    baseline_name: str,
    device: str,
    dtype: str,
    expectations: list[Expectation],
) -> WeightStorageResult:

    def footprint(m: Any) -> int | None:
        try:
            return int(m.get_memory_footprint())
        except Exception:  # not every model class has it; the real bytes are what we assert
            return None

    names = quantized_modules(model)
    coverage = weight_coverage(model)
    quantized = ("linear_quantized", "experts_quantized")
    return WeightStorageResult(
        # the quantized weights (scales included) vs the same weights unquantized: biases and norms apart
        quantized_layer_bytes=sum(coverage.stored.get(c, 0) for c in quantized),
        baseline_layer_bytes=sum(coverage.logical.get(c, 0) for c in quantized),
        technique=technique,
        baseline=baseline_name,
        device=device,
        dtype=dtype,
        weight_bytes=weight_bytes(model),
        baseline_weight_bytes=weight_bytes(baseline),
        footprint_bytes=footprint(model),
        baseline_footprint_bytes=footprint(baseline),
        expectations=expectations,
        quantized_modules=names,
        coverage=coverage,
    )

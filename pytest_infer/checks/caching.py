"""The KV-cache checks beyond token parity: the cache ``generate`` used is the one requested, two calls sharing
one set of arguments leave them unchanged, KV bytes against the dynamic cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_infer.checks.models import CaseModels
from pytest_infer.core.case import Case
from pytest_infer.core.expectation import select_expectations
from pytest_infer.core.technique import Technique, resolve_kwargs
from pytest_infer.perf.claims import holds
from pytest_infer.runtime.kv_cache import (
    CacheSpec,
    describe_cache,
    expected_cache,
    generate_with_cache,
    is_sliding,
    snapshot,
)


def cache_problems(spec: CacheSpec, seen: dict[str, Any], sliding_model: bool) -> list[str]:
    """What differs between the cache a technique asked for and the one ``generate`` used, by layer kind (key/value
    layers, recurrent state, both): an unexpected class or layer, none of the layers the request is about,
    offloading, bits, residual length, a full window on a sliding-window model."""
    problems = []
    if seen["class"] != spec.cache_class:
        problems.append(f"cache class {seen['class']}, expected {spec.cache_class}")
    unexpected = set(seen["layers"]) - spec.layers
    if unexpected:
        problems.append(f"layers {', '.join(sorted(unexpected))}, expected only {', '.join(sorted(spec.layers))}")
    if spec.required and not set(seen["layers"]) & spec.required:
        problems.append(
            f"no {' or '.join(sorted(spec.required))} among its layers ({', '.join(seen['layers']) or 'none'}): "
            f"the {spec.implementation} cache asked for is not what this model got"
        )
    if seen["offloading"] != spec.offloading:
        problems.append(f"offloading {seen['offloading']}, expected {spec.offloading}")
    if spec.nbits is not None and seen["nbits"] != [spec.nbits]:
        problems.append(f"{seen['nbits'] or 'no'} bits per value, expected {spec.nbits}")
    if spec.residual_length is not None and seen["residual_length"] != [spec.residual_length]:
        problems.append(f"residual length {seen['residual_length'] or 'none'}, expected {spec.residual_length}")
    full_window = not any("Sliding" in name for name in seen["layers"])
    if sliding_model and full_window and spec.implementation in ("dynamic", "static", "offloaded", "offloaded_static"):
        problems.append("the model has a sliding window but no cache layer slides: it keeps every position")
    return problems


@dataclass
class CacheCheckResult:
    technique: str
    device: str
    dtype: str
    variant: str  # "effective" | "arguments unchanged" | "kv memory"
    problems: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    kind: str = "cache_check"

    @property
    def passed(self) -> bool:
        return not self.problems

    def headline(self) -> str:
        if self.variant == "kv memory" and "kv_memory_ratio" in self.details:
            return f"{self.details['kv_memory_ratio']:.3f}x KV bytes"
        return "ok" if self.passed else "; ".join(self.problems)

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [f"cache check ({self.variant}) {verdict}: {self.technique} ({self.dtype}) on {self.device}"]
        lines += [f"  - {p}" for p in self.problems]
        lines += [f"  {k}: {v}" for k, v in self.details.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        metrics = {
            k: float(v) for k, v in self.details.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return {
            "kind": self.kind,
            "check": "cache",
            "variant": self.variant,
            "technique": self.technique,
            "device": self.device,
            "dtype": self.dtype,
            "passed": self.passed,
            "metrics": metrics,
            "details": {k: v for k, v in self.details.items() if k not in metrics},
            "failures": list(self.problems),
        }


class CacheChecks:
    """The cache checks of one test, on its :class:`~pytest_infer.checks.models.CaseModels`."""

    def __init__(self, models: CaseModels) -> None:
        self.models = models
        self.ctx = models.ctx

    def run(self, case: Case, technique: Technique | None = None) -> tuple[list[list[int]], dict[str, Any]]:
        """(tokens, cache description) of one forced-length generation, computed once per case."""
        ctx = self.ctx
        technique = technique or case.technique
        n = max(ctx.config.new_tokens)
        key = ("cache", ctx.source, technique.name, case.dtype, case.device, ctx.prompts, n)

        def compute() -> tuple[list[list[int]], dict[str, Any]]:
            batch = self.models.batch(case.device)
            on = case if technique is case.technique else ctx.ref_case(case.device, case.dtype)
            tokens, cache = generate_with_cache(self.models.model(on), ctx.tokenizer, batch, technique, n)
            return tokens, describe_cache(cache, case.device.split(":")[0])

        return ctx.cache.tensor(key, compute)

    def effective(self, case: Case) -> CacheCheckResult:
        """The cache ``generate`` used is the one the technique asked for."""
        spec = expected_cache(resolve_kwargs(case.technique.generate_kwargs, needed_length=1, device=case.device))
        _, seen = self.run(case)
        problems = cache_problems(spec, seen, is_sliding(self.models.model(case)))
        details = {"requested": spec.implementation, **{k: v for k, v in seen.items() if not k.startswith("kv")}}
        return self.models.record(
            CacheCheckResult(case.technique.name, case.device, case.dtype, "effective", problems, details)
        )

    def arguments(self, case: Case) -> CacheCheckResult:
        """Two ``generate`` calls sharing one set of arguments: same tokens, arguments left unchanged."""
        ctx = self.ctx
        batch = self.models.batch(case.device)
        n = min(ctx.config.new_tokens)
        kwargs = resolve_kwargs(
            case.technique.generate_kwargs, needed_length=int(batch.input_ids.shape[1]) + n, device=case.device
        )
        before = snapshot(kwargs)
        model = self.models.model(case)
        first, _ = generate_with_cache(model, ctx.tokenizer, batch, case.technique, n, kwargs)
        second, _ = generate_with_cache(model, ctx.tokenizer, batch, case.technique, n, kwargs)
        problems = [
            f"generate changed its argument {k}: {before[k]!r} -> {kwargs.get(k)!r}"
            for k in before
            if snapshot({k: kwargs.get(k)})[k] != before[k]
        ]
        problems += [
            f"row {b}: the second call generated {t2[:8]}... where the first generated {t1[:8]}..."
            for b, (t1, t2) in enumerate(zip(first, second, strict=False))
            if t1 != t2
        ]
        details = {"arguments": {k: repr(v) for k, v in before.items()}, "calls": 2, "new_tokens": n}
        return self.models.record(
            CacheCheckResult(case.technique.name, case.device, case.dtype, "arguments unchanged", problems, details),
            case,
        )

    def kv_memory(self, case: Case) -> CacheCheckResult:
        """KV bytes held on the device against the dynamic cache at the same (forced) length."""
        ctx = self.ctx
        _, seen = self.run(case)
        _, base = self.run(case, ctx.registry.get("dynamic_cache"))
        ratio = seen["kv_device_bytes"] / max(1, base["kv_device_bytes"])
        problems = []
        details: dict[str, Any] = {
            "kv_device_bytes": seen["kv_device_bytes"],
            "kv_bytes": seen["kv_bytes"],
            "dynamic_kv_device_bytes": base["kv_device_bytes"],
            "kv_memory_ratio": ratio,
            "state_bytes": seen.get("state_bytes", 0),
        }
        if not base["kv_bytes"] or not seen["kv_bytes"]:  # a measurement of nothing is an error, never a pass
            holder, layers = (
                (case.technique.name, seen["layers"]) if base["kv_bytes"] else ("the dynamic cache", base["layers"])
            )
            problems.append(
                f"measured no key/value bytes: {holder} holds layers {', '.join(layers) or 'none'} "
                f"({seen.get('state_bytes', 0):,} bytes of recurrent state): there is no KV memory to compare here"
            )
        for e in select_expectations(case.technique.expectations, ctx.stack_for(case.device), case.dtype):
            if e.metric == "kv_memory_ratio":
                details["expected"] = f"kv_memory_ratio {e.op} {e.value:g}"
                if not holds(e, ratio):
                    problems.append(
                        f"holds {seen['kv_device_bytes']:,} KV bytes on {case.device} vs {base['kv_device_bytes']:,} "
                        f"for the dynamic cache: {ratio:.3f}x, expected {e.op} {e.value:g}"
                    )
        return self.models.record(
            CacheCheckResult(case.technique.name, case.device, case.dtype, "kv memory", problems, details)
        )

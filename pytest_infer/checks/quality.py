"""The two verdicts on a lossy technique, kept apart: ``kernel`` (does it compute exactly what its format stores:
each quantized layer against its own dequantized weights, a quantized KV cache against its simulated twin) and
``quality`` (what the format costs: perplexity ratio on a held-out text and greedy agreement, against a budget)."""

from __future__ import annotations

import math
from typing import Any

from pytest_infer.checks import verdict
from pytest_infer.checks.models import CaseModels
from pytest_infer.core.case import Case
from pytest_infer.core.expectation import Expectation
from pytest_infer.core.resources import quality_text
from pytest_infer.core.technique import resolve_kwargs
from pytest_infer.parity.kernel import CacheKernelResult, KernelParityResult, compare_cache_runs, kernel_parity
from pytest_infer.parity.quality import QualityResult, paired_ratio
from pytest_infer.perf.claims import expectations_for
from pytest_infer.perf.gate import parse_compare_fail, regressions
from pytest_infer.runtime.batch import forward_logits
from pytest_infer.runtime.generation import greedy_generate
from pytest_infer.runtime.likelihood import Chunks, decode_nll, forward_nll, text_chunks
from pytest_infer.runtime.simulated_cache import NotSimulated, generate_logits, quantized_cache, simulated_cache

CACHE_KERNEL_TOKENS = 48  # past the residual window (16 in the built-in techniques) three times
# the budget of a technique that declares none: lossless, so its ratio is 1 up to float noise in the run's dtype
LOSSLESS_BUDGET = {"float32": 1.001, "bfloat16": 1.01, "float16": 1.01}


def greedy_agreement(tokens: list[list[int]], reference: list[list[int]]) -> float:
    """Mean over rows of the share of new tokens equal to the reference's before the row's first difference."""
    shares = []
    for a, b in zip(tokens, reference, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        shares.append(same / max(len(b), 1))
    return sum(shares) / max(len(shares), 1)


class QualityChecks:
    """Kernel parity and quality of one test's cases (the models and references shared through ``models``)."""

    def __init__(self, models: CaseModels) -> None:
        self.models = models
        self.ctx = models.ctx

    # --- kernel: exact to its format -----------------------------------------------------------------
    def kernel(self, case: Case) -> KernelParityResult:
        """Each quantized layer of the case's model on the prompt batch against its own dequantized weights."""
        models = self.models
        model, batch = models.model(case), models.batch(case.device)
        with models.step(case, "each quantized layer against its dequantized weights"):
            result = kernel_parity(
                model,
                lambda: forward_logits(model, batch, case.technique),
                technique=case.technique.name,
                device=case.device,
                dtype=case.dtype,
            )
        return models.record(result, case)

    def cache_kernel(self, case: Case) -> CacheKernelResult:
        """The technique's quantized cache against its simulated twin, generating from the prompt batch."""
        models, t = self.models, case.technique
        kwargs = resolve_kwargs(t.generate_kwargs, needed_length=1, device=case.device)
        if kwargs.get("cache_implementation") != "quantized":
            verdict.skip(
                f"{t.name} does not quantize its cache: nothing to simulate (its exactness is generation parity's verdict)"
            )
        model, batch = models.model(case), models.batch(case.device)
        config = dict(kwargs.get("cache_config") or {})
        try:
            twin = simulated_cache(quantized_cache(model, config))
        except NotSimulated as exc:
            verdict.skip(f"{t.name}: {exc}")
        layer = next((x for x in twin.layers if hasattr(x, "residual")), None)
        what = ", ".join(f"{k} {v}" for k, v in config.items()) or "defaults"
        what += f" (residual {layer.residual})" if layer is not None and "residual_length" not in config else ""
        tokens = CACHE_KERNEL_TOKENS
        with models.step(case, f"generate {tokens} tokens with the real and the simulated cache"):
            real = generate_logits(model, self.ctx.tokenizer, batch, t, tokens)
            simulated = generate_logits(model, self.ctx.tokenizer, batch, t, tokens, past_key_values=twin)
        import torch

        _, floor = models.tolerance(case)
        ref, _ = models.reference_logits(case.device, case.dtype)
        relative_floor = (floor.max_abs if floor is not None else 0.0) / (float(ref.abs().max()) or 1.0)
        eps = float(torch.finfo(getattr(torch, case.dtype)).eps)
        result = compare_cache_runs(
            real, simulated, technique=t.name, device=case.device, dtype=case.dtype, what=what,
            floor=max(relative_floor, eps),
        )  # fmt: skip
        return models.record(result, case)

    # --- quality: what the format costs ----------------------------------------------------------------
    def budget(self, case: Case) -> tuple[Expectation, str]:
        """The perplexity-ratio budget: ``--infer-quality-budget`` (technique, then family), an ``infer_quality``
        marker, the technique's own expectation for this stack and dtype; else the lossless default."""
        ctx = self.ctx
        stack = ctx.stack_for(case.device)
        chosen = {e.metric: (e, src) for e, src in expectations_for(
            case.technique.expectations, stack, case.dtype, "quality", ctx.markers
        )}  # fmt: skip
        names = [case.technique.name, *case.technique.name.split("+"), case.technique.family]
        for spec in ctx.config.quality_budget:
            name, _, value = spec.partition("=")
            if name.strip() in names:
                return Expectation("perplexity_ratio", "<=", float(value)), f" (--infer-quality-budget {spec})"
        if "perplexity_ratio" in chosen:
            return chosen["perplexity_ratio"]
        default = LOSSLESS_BUDGET.get(case.dtype, 1.01)
        return Expectation("perplexity_ratio", "<=", default), " (no budget declared: the lossless default)"

    def chunks(self, device: str) -> Chunks:
        ctx = self.ctx
        text, source = quality_text(ctx.config.quality_text)
        return ctx.cache.tensor(
            ("quality-chunks", source, device), lambda: text_chunks(ctx.tokenizer, text, source, device)
        )

    def nll(self, case: Case, mode: str, benchmark: Any | None = None) -> list[float]:
        """Per-chunk mean NLL of the case on the quality text (``forward`` or ``decode`` through its cache), computed
        once per session; with an active ``benchmark`` the scoring pass is its one timed round."""
        models, ctx = self.models, self.ctx
        chunks = self.chunks(case.device)

        def score() -> list[float]:
            model = models.model(case)
            with models.step(case, f"scoring {chunks.ids.shape[0]} chunks of the quality text ({mode})"):
                if mode == "forward":
                    return [float(x) for x in forward_nll(model, chunks, case.technique)]
                return [float(x) for x in decode_nll(model, ctx.tokenizer, chunks, case.technique)]

        def compute() -> list[float]:
            if benchmark is None:
                return score()
            models.model(case)  # loaded outside the timed round
            out: list[float] = benchmark.pedantic(score, rounds=1, warmup_rounds=0, iterations=1)
            return out

        key = ("quality-nll", models.key(case), case.technique.name, chunks.source, mode)
        return ctx.cache.tensor(key, compute)

    def greedy(self, case: Case, new_tokens: int) -> list[list[int]]:
        models, ctx = self.models, self.ctx

        def compute() -> list[list[int]]:
            model = models.model(case)
            with models.step(case, f"generate {new_tokens} tokens for greedy agreement"):
                batch = models.batch(case.device)
                return greedy_generate(model, ctx.tokenizer, batch, case.technique, new_tokens, scores=False).tokens

        return ctx.cache.tensor(("quality-greedy", models.key(case), case.technique.name, new_tokens), compute)

    def quality(self, case: Case, mode: str, benchmark: Any | None = None) -> QualityResult:
        """Perplexity ratio of the case against the reference in the same dtype on the quality text, paired by
        chunk, and greedy agreement over the longest ``--infer-new-tokens``; decided on the budget."""
        ctx, models = self.ctx, self.models
        t = case.technique
        if t.runner in ("multiprocess", "generate_batch"):
            verdict.skip(
                f"{t.name}: the quality check scores in this process through generate(); {t.runner} runs elsewhere"
            )
        ref = ctx.ref_case(case.device, case.dtype)
        chunks = self.chunks(case.device)
        ref_nll = self.nll(ref, mode)
        active = benchmark is not None and not getattr(benchmark, "disabled", False)
        nll = self.nll(case, mode, benchmark if active else None)
        if benchmark is not None and not active:  # disabled: one untimed call, so that it does not warn "not used"
            benchmark.pedantic(lambda: None, rounds=1, warmup_rounds=0, iterations=1)
        new_tokens = max(ctx.config.new_tokens)
        agreement = greedy_agreement(self.greedy(case, new_tokens), self.greedy(ref, new_tokens))
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        budget, source = self.budget(case)
        result = QualityResult(
            technique=t.name,
            reference=ref.technique.name,
            device=case.device,
            dtype=case.dtype,
            mode=mode,
            text=chunks.source,
            tokens=chunks.tokens,
            perplexity=math.exp(mean(nll)),
            reference_perplexity=math.exp(mean(ref_nll)),
            interval=paired_ratio(nll, ref_nll),
            greedy_agreement=agreement,
            greedy_tokens=new_tokens,
            budget=budget,
            budget_source=source,
        )
        self._store(result, benchmark)
        return models.record(result, case)

    def _store(self, result: QualityResult, benchmark: Any | None) -> None:
        """The figures as pytest-benchmark ``extra_info`` (stored with ``--benchmark-autosave``) and our regression
        gate (``--infer-compare-fail perplexity_ratio:1%``) against the stored run."""
        ctx = self.ctx
        if benchmark is None or getattr(benchmark, "disabled", False):
            result.notes.append("pytest-benchmark off: the figures are in the JSON report only")
            return
        benchmark.group = f"quality {result.dtype} {result.device}"
        benchmark.extra_info["infer_scenario"] = "quality"
        benchmark.extra_info["infer_metrics"] = result.metrics
        benchmark.extra_info["infer_budget"] = result.to_dict()["budget"]
        stored = ctx.stored_runs.stored_metrics(benchmark.fullname) if ctx.stored_runs is not None else None
        if ctx.config.compare_fail and stored is not None:
            found = regressions(result.metrics, stored, parse_compare_fail(ctx.config.compare_fail), "quality")
            result.regressions.extend(found)

"""The parity checks a test runs for a case (the ``infer_parity`` fixture): logit parity, padded batches,
generation parity and inference mode here; KV caches, the recompile guard, weight storage and ranks delegated to
their modules. Each returns a result object; ``assert_*`` fail the test with the result's message."""

from __future__ import annotations

import dataclasses
from typing import Any

from pytest_infer.checks import verdict
from pytest_infer.checks.caching import CacheChecks
from pytest_infer.checks.compilation import RecompileResult, recompile_guard
from pytest_infer.checks.context import CheckContext
from pytest_infer.checks.golden import GoldenChecks
from pytest_infer.checks.models import CaseModels
from pytest_infer.checks.quality import QualityChecks
from pytest_infer.checks.quantization import weight_storage
from pytest_infer.checks.ranks import RankChecks
from pytest_infer.checks.stability import StabilityChecks
from pytest_infer.core.case import Case
from pytest_infer.parity.bounds import default_tolerance
from pytest_infer.parity.generation import GenerationParityResult, compare_generations
from pytest_infer.parity.golden_compare import GoldenResult
from pytest_infer.parity.invariance import BatchInvarianceResult, batch_invariance, invariance_bound
from pytest_infer.parity.localize import first_divergence
from pytest_infer.parity.logits import LogitParityResult, compare_logits
from pytest_infer.parity.padding import padding_parity, parse_sweep
from pytest_infer.perf.weights import WeightStorageResult
from pytest_infer.runtime.batch import Batch, forward_logits
from pytest_infer.runtime.generated import Generated
from pytest_infer.runtime.generation import greedy_generate


class ParityChecks:
    """Bound to one test (its markers shape the tolerance, its report receives the results)."""

    def __init__(self, ctx: CheckContext) -> None:
        self.ctx = ctx
        self.models = CaseModels(ctx)
        self.caches = CacheChecks(self.models)
        self.ranks = RankChecks(self.models)
        self.golden = GoldenChecks(self.models)
        self.lossy = QualityChecks(self.models)
        self.stability = StabilityChecks(self.models)

    @property
    def tokenizer(self) -> Any:
        return self.ctx.tokenizer

    @property
    def prompts(self) -> tuple[str, ...]:
        return self.ctx.prompts

    def model(self, case: Case) -> Any:
        """The case's model, loaded once per session (technique applied)."""
        return self.models.model(case)

    # --- checks ---------------------------------------------------------------------------------------
    def logits(self, case: Case, model: Any | None = None) -> LogitParityResult:
        """Run ``case`` on the padded prompt batch and compare with the reference."""
        ctx, models = self.ctx, self.models
        tolerance, floor = models.tolerance(case)
        ref, mask = models.reference_logits(case.device)
        logits = self._candidate_logits(case, models.batch(case.device), model)
        if model is None:
            self.golden.observe_logits(case, logits, mask)  # the golden test compares these, no second forward
        result = compare_logits(
            ref,
            logits,
            mask,
            tolerance,
            technique=case.technique.name,
            reference_name=ctx.reference.name,
            device=case.device,
            dtype=case.dtype,
            reference_dtype=ctx.config.reference_dtype,
            prompts=ctx.prompts,
        )
        result.floor = floor.to_dict() if floor else None
        result.same_as_reference = self._is_reference(case)
        if not result.passed:
            result.localization = self._localize(case, model)
        return models.record(result, case)

    def _is_reference(self, case: Case) -> bool:
        """Whether ``case`` is the reference itself (its comparison with the reference proves nothing)."""
        return case.technique.name == self.ctx.reference.name and case.dtype == self.ctx.config.reference_dtype

    def padding(self, case: Case) -> list[LogitParityResult]:
        """The padded-batch sweep: every padded row against the same prompt run alone by the reference."""
        ctx, models = self.ctx, self.models
        tolerance, floor = models.tolerance(case)
        pairs = padding_parity(
            models.reference_solo(case.device),
            lambda batch: models.forward(case, batch),
            ctx.tokenizer,
            ctx.prompts,
            case.technique,
            tolerance,
            parse_sweep(ctx.padding or ctx.config.padding),
            reference_name=ctx.reference.name,
            device=case.device,
            dtype=case.dtype,
            reference_dtype=ctx.config.reference_dtype,
        )
        results = []
        for _, result in pairs:
            result.floor = floor.to_dict() if floor else None
            results.append(models.record(result, case))
        return results

    def batch_invariance(self, case: Case) -> BatchInvarianceResult:
        """One prompt alone vs. in batches of 2-8 at the first, a middle and the last row (see
        :mod:`pytest_infer.parity.invariance`): the technique against itself, bounded by the batch noise floor."""
        ctx, models = self.ctx, self.models
        _, floor = models.tolerance(case)
        table = default_tolerance(case.dtype, case.device).max_abs
        bound, source = invariance_bound(table if table is not None else float("inf"), floor)
        result = batch_invariance(
            lambda batch: models.forward(case, batch),
            ctx.tokenizer,
            ctx.prompts,
            bound=bound,
            bound_source=source,
            bitwise=case.technique.batch_invariant,
            technique=case.technique.name,
            device=case.device,
            dtype=case.dtype,
        )
        return models.record(result, case)

    def generation(self, case: Case) -> list[GenerationParityResult]:
        """Greedy generation at each configured length vs. the reference's, token by token; with ``--infer-context``
        also the long prompts, generated up to the context length (the longest ``--infer-new-tokens``)."""
        ctx, models = self.ctx, self.models
        lengths = ctx.config.new_tokens
        runs = [(models.batch(case.device), n, 0) for n in lengths]
        if ctx.config.context:
            runs.append((models.long_batch(case.device), max(lengths), ctx.config.context))
        tolerance, _ = models.tolerance(case)
        results = []
        for batch, n, context in runs:
            reference = models.reference_generation(case.device, max(lengths), batch)
            candidate = self._candidate_generate(case, batch, n)
            result = compare_generations(
                reference,
                candidate,
                ctx.tokenizer,
                near_tie=tolerance.tie_margin,
                new_tokens=n,
                technique=case.technique.name,
                reference_name=ctx.reference.name,
                device=case.device,
                dtype=case.dtype,
                reference_dtype=ctx.config.reference_dtype,
                prompts=[f"…{p[-80:]}" for p in batch.prompts] if context else ctx.prompts,
                min_greedy=tolerance.min_greedy,
            )
            result.same_as_reference = self._is_reference(case)
            result.context = context
            results.append(models.record(result, case))
            if n == max(lengths) and not context:
                self.golden.observe_generation(case, candidate)
        return results

    def golden_logits(self, case: Case) -> GoldenResult:
        """The case's logits against its stored golden (``--infer-golden``: see :mod:`pytest_infer.checks.golden`)."""
        models = self.models
        batch = models.batch(case.device)
        return self.golden.logits(case, lambda: (self._candidate_logits(case, batch), batch.attention_mask))

    def golden_generation(self, case: Case) -> GoldenResult:
        """The case's greedy tokens (the longest ``--infer-new-tokens``) against its stored golden."""
        batch = self.models.batch(case.device)
        longest = max(self.ctx.config.new_tokens)
        return self.golden.generation(case, lambda: self._candidate_generate(case, batch, longest))

    def inference_mode(self, case: Case) -> LogitParityResult:
        """The case's logits under ``torch.inference_mode()`` against its own logits under ``no_grad``: a
        technique whose tensors break in inference mode (what serving code uses) fails here."""
        models = self.models
        batch = models.batch(case.device)
        model = models.model(case)
        plain = forward_logits(model, batch, dataclasses.replace(case.technique, inference_mode=False))
        inference = forward_logits(model, batch, dataclasses.replace(case.technique, inference_mode=True))
        result = compare_logits(
            plain,
            inference,
            batch.attention_mask,
            default_tolerance(case.dtype, case.device),
            technique=case.technique.name,
            reference_name=f"{case.technique.name} under no_grad",
            device=case.device,
            dtype=case.dtype,
            reference_dtype=case.dtype,
            prompts=self.ctx.prompts,
        )
        result.check, result.variant = "inference_mode", "torch.inference_mode vs no_grad"
        return models.record(result)

    def storage(self, case: Case) -> WeightStorageResult:
        """Real weight bytes against the reference's in the same dtype (:mod:`pytest_infer.checks.quantization`)."""
        return weight_storage(self.models, case)

    def recompiles(self, case: Case) -> RecompileResult:
        """The recompile guard (see :mod:`pytest_infer.checks.compilation`) on a fresh load of the case's model."""
        models = self.models
        self.ctx.cache.discard(models.key(case))  # warm-up must start from an uncompiled model
        model = models.model(case)
        with models.step(case, "the recompile guard's warm-up and varied calls"):
            result = recompile_guard(
                model, self.ctx.tokenizer, self.ctx.prompts, case.technique, case.device, case.dtype
            )
        return models.record(result)

    # KV caches (see :mod:`pytest_infer.checks.caching`)
    def cache_effective(self, case: Case) -> Any:
        return self.caches.effective(case)

    def cache_arguments(self, case: Case) -> Any:
        return self.caches.arguments(case)

    def kv_memory(self, case: Case) -> Any:
        return self.caches.kv_memory(case)

    # --- assertions: fail the test with the failed results' messages ----------------------------------------
    def assert_logits(self, case: Case, model: Any | None = None) -> LogitParityResult:
        return self.models.decided(case, lambda: [self.logits(case, model)])[0]

    def assert_padding(self, case: Case) -> list[LogitParityResult]:
        return self.models.decided(case, lambda: self.padding(case))

    def assert_batch_invariance(self, case: Case) -> BatchInvarianceResult:
        return self.models.decided(case, lambda: [self.batch_invariance(case)])[0]

    def assert_sampling(self, case: Case) -> Any:
        return self.models.decided(case, lambda: [self.stability.sampling(case)])[0]

    def assert_memory_stability(self, case: Case) -> Any:
        return self.models.decided(case, lambda: [self.stability.memory(case)])[0]

    def assert_generation(self, case: Case) -> list[GenerationParityResult]:
        return self.models.decided(case, lambda: self.generation(case))

    def assert_inference_mode(self, case: Case) -> LogitParityResult:
        return self.models.decided(case, lambda: [self.inference_mode(case)])[0]

    def assert_storage(self, case: Case) -> WeightStorageResult:
        return self.models.decided(case, lambda: [self.storage(case)])[0]

    def assert_no_recompiles(self, case: Case) -> RecompileResult:
        return self.models.decided(case, lambda: [self.recompiles(case)])[0]

    def assert_cache_effective(self, case: Case) -> Any:
        return self.models.decided(case, lambda: [self.cache_effective(case)])[0]

    def assert_cache_arguments(self, case: Case) -> Any:
        return self.models.decided(case, lambda: [self.cache_arguments(case)])[0]

    def assert_kv_memory(self, case: Case) -> Any:
        return self.models.decided(case, lambda: [self.kv_memory(case)])[0]

    def assert_golden_logits(self, case: Case) -> GoldenResult:
        return self.models.decided(case, lambda: [self.golden_logits(case)])[0]

    def assert_golden_generation(self, case: Case) -> GoldenResult:
        return self.models.decided(case, lambda: [self.golden_generation(case)])[0]

    # lossy techniques: exact to their format, and what the format costs (see :mod:`pytest_infer.checks.quality`)
    def assert_kernel(self, case: Case) -> Any:
        return self.models.decided(case, lambda: [self.lossy.kernel(case)])[0]

    def assert_cache_kernel(self, case: Case) -> Any:
        return self.models.decided(case, lambda: [self.lossy.cache_kernel(case)])[0]

    def assert_quality(self, case: Case, mode: str = "forward", benchmark: Any | None = None) -> Any:
        """``mode``: ``forward`` (weights: every position in one forward) or ``decode`` (token by token through the
        technique's cache); an interval that straddles the budget is inconclusive (skipped, as a speed claim)."""
        with self.models.guard(case):
            result = self.lossy.quality(case, mode, benchmark)
            if result.verdict == "inconclusive":
                verdict.inconclusive(result.message())
            return verdict.passed([result])[0]

    def assert_rank_agreement(self, case: Case) -> Any:
        return self.ranks.assert_agreement(case)

    # the names docs/writing-techniques.md first gave the logit check
    check = logits
    assert_parity = assert_logits

    # --- internals --------------------------------------------------------------------------------------
    def _candidate_logits(self, case: Case, batch: Batch, model: Any | None = None) -> Any:
        """The case's logits on ``batch``: in this process, or gathered from its ranks (``multiprocess``)."""
        models = self.models
        if case.technique.runner == "multiprocess" and model is None:
            with models.step(case, "logits"):
                return self.ranks.logits(case, batch)
        return models.forward(case, batch, model)

    def _candidate_generate(self, case: Case, batch: Batch, new_tokens: int) -> Generated:
        """The case's greedy generation of ``new_tokens`` tokens (``multiprocess``: run by its ranks)."""
        models = self.models
        if case.technique.runner == "multiprocess":
            with models.step(case, f"generate {new_tokens} tokens"):
                return self.ranks.generate(case, batch, new_tokens)
        model = models.model(case)
        with models.step(case, f"generate {new_tokens} tokens x {batch.input_ids.shape[0]} prompts"):
            return greedy_generate(model, self.ctx.tokenizer, batch, case.technique, new_tokens)

    def _localize(self, case: Case, model: Any | None) -> str | None:
        if case.technique.runner == "multiprocess" and model is None:
            return "(not localized: the candidate runs in its ranks, not in this process)"
        ctx, models = self.ctx, self.models
        try:
            return first_divergence(
                models.model(ctx.ref_case(case.device)),
                ctx.reference,
                model if model is not None else models.model(case),
                case.technique,
                models.batch(case.device),
                case.dtype,
                reference_in_dtype=models.model(ctx.ref_case(case.device, case.dtype))
                if case.dtype != ctx.config.reference_dtype
                else None,
            )
        except Exception as exc:  # localization is a diagnosis: never let it hide the parity failure
            return f"(could not localize the divergence: {type(exc).__name__}: {exc})"

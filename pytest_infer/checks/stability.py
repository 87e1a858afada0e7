"""Checks of what stays put when nothing changes (issue 19): seeded sampling drawn again and against the reference
(:mod:`pytest_infer.parity.sampling`), and memory over repeated identical calls (:mod:`pytest_infer.parity.growth`).
Batch invariance, a forward check, is in :mod:`pytest_infer.checks.parity`."""

from __future__ import annotations

from pytest_infer.checks import verdict
from pytest_infer.checks.models import CaseModels
from pytest_infer.core.case import Case
from pytest_infer.parity.growth import CALLS, MemoryStabilityResult, memory_stability
from pytest_infer.parity.sampling import SamplingResult, departures, first_parting
from pytest_infer.runtime.generation import greedy_generate
from pytest_infer.runtime.memory import memory_after_calls
from pytest_infer.runtime.sampling import Sampled, sampled_generate

SEED = 1234
SAMPLED_TOKENS = 16
TEMPERATURE = 1.0  # the plain distribution: every token keeps its probability


class StabilityChecks:
    def __init__(self, models: CaseModels) -> None:
        self.models = models
        self.ctx = models.ctx

    def sampling(self, case: Case) -> SamplingResult:
        """The case sampled twice with one seed (same tokens), and against the reference sampled with it."""
        ctx, models, t = self.ctx, self.models, case.technique
        if t.runner in ("multiprocess", "generate_batch"):
            verdict.skip(
                f"{t.name} runs under {t.runner}: "
                + (
                    "its ranks sample in other processes"
                    if t.runner == "multiprocess"
                    else "its scheduler orders requests' draws its own way, not generate()'s"
                )
            )
        per_row = not t.padded_batches
        batch = models.batch(case.device)
        model = models.model(case)

        def draw() -> Sampled:
            return sampled_generate(
                model, ctx.tokenizer, batch, t, SAMPLED_TOKENS, seed=SEED, temperature=TEMPERATURE, per_row=per_row
            )

        with models.step(case, f"sampling {SAMPLED_TOKENS} tokens twice with seed {SEED}"):
            first, second = draw(), draw()
        draws, off_greedy = departures(first)
        result = SamplingResult(
            t.name, ctx.reference.name, case.device, case.dtype, SEED, TEMPERATURE, SAMPLED_TOKENS, len(batch.prompts),
            draws=draws, departures=off_greedy, repeat=first_parting(first, second, ctx.tokenizer),
        )  # fmt: skip
        if case.dtype != "float32" or ctx.config.reference_dtype != "float32":
            result.why_not = f"compared only in float32, where a technique can be exact (this case: {case.dtype})"
        else:
            reference = self.reference_sample(case.device, per_row)
            result.versus_reference = first_parting(reference, first, ctx.tokenizer)
        models.record(result, case)
        if result.inconclusive:
            verdict.inconclusive(result.message())
        return result

    def reference_sample(self, device: str, per_row: bool) -> Sampled:
        ctx, models = self.ctx, self.models
        ref = ctx.ref_case(device)
        key = ("sample", ctx.source, ref.technique.name, ref.dtype, device, ctx.prompts, SEED, per_row)

        def compute() -> Sampled:
            model = models.model(ref)
            batch = models.batch(device)
            return sampled_generate(
                model, ctx.tokenizer, batch, ref.technique, SAMPLED_TOKENS, seed=SEED, temperature=TEMPERATURE,
                per_row=per_row,
            )  # fmt: skip

        return ctx.cache.tensor(key, compute)

    def memory(self, case: Case) -> MemoryStabilityResult:
        """The case's generation repeated ``CALLS`` times: host RSS and device memory must level off."""
        ctx, models, t = self.ctx, self.models, case.technique
        if t.runner == "multiprocess":
            verdict.skip(f"{t.name} runs in its ranks' processes: this process's memory says nothing about them")
        batch, model = models.batch(case.device), models.model(case)
        tokens = min(ctx.config.new_tokens)
        what = f"generate {tokens} tokens x {len(batch.prompts)} prompts"
        with models.step(case, f"{CALLS} identical calls: {what}"):
            host, device = memory_after_calls(
                lambda: greedy_generate(model, ctx.tokenizer, batch, t, tokens, scores=False), case.device, CALLS
            )
        result = memory_stability(host, device, technique=t.name, device=case.device, dtype=case.dtype, call=what)
        return models.record(result, case)

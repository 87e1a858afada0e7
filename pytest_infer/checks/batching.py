"""The continuous-batching checks: every request of a prompt set larger than one batch against the reference's
per-prompt greedy ``generate``, two calls in a row, and the long-lived manager API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_infer.checks import verdict
from pytest_infer.checks.parity import ParityChecks
from pytest_infer.core.case import Case
from pytest_infer.parity.requests import BatchingResult, compare_requests
from pytest_infer.runtime.batch import encode
from pytest_infer.runtime.continuous_batching import (
    CB_BUDGET,
    BatchRun,
    manager_unsupported,
    run_generate_batch,
    run_manager,
)
from pytest_infer.runtime.generated import Generated, join_generated
from pytest_infer.runtime.generation import greedy_generate


class BatchingChecks:
    """The continuous-batching checks of one test, on top of its :class:`~pytest_infer.checks.parity.ParityChecks`
    (same session cache, tolerance, reference and report)."""

    def __init__(self, parity: ParityChecks) -> None:
        self.parity = parity
        self.models = parity.models
        self.ctx = parity.ctx
        self.tokenizer = parity.tokenizer

    # --- prompts and the per-prompt reference -------------------------------------------------------------
    def prompts(self) -> list[str]:
        """The session's prompts grown past one batch's token budget (see :func:`budget_prompts`)."""
        key = ("batching-prompts", self.ctx.source, tuple(self.parity.prompts))
        return self.ctx.cache.tensor(
            key, lambda: budget_prompts(self.parity.prompts, self.tokenizer, CB_BUDGET["max_batch_tokens"])
        )

    def inputs(self, prompts: Sequence[str]) -> list[list[int]]:
        return [list(self.tokenizer(p)["input_ids"]) for p in prompts]

    def reference(self, device: str, prompts: Sequence[str], new_tokens: int) -> Generated:
        """The reference's greedy tokens and margins, each prompt alone through ``generate`` (computed once)."""

        s = self.ctx
        ref = Case(s.reference, device, s.config.reference_dtype)
        key = ("solo-generate", s.source, ref.technique.name, ref.dtype, device, tuple(prompts), new_tokens)

        def compute() -> Generated:
            model = self.models.model(ref)
            parts = [
                greedy_generate(model, self.tokenizer, encode(self.tokenizer, [p], device), ref.technique, new_tokens)
                for p in prompts
            ]
            return join_generated(parts)

        return s.cache.tensor(key, compute)

    # --- checks -------------------------------------------------------------------------------------------
    def _result(self, check: str, case: Case, runs: list[BatchRun], prompts: list[str], n: int) -> BatchingResult:
        tolerance, _ = self.models.tolerance(case)
        reference = self.reference(case.device, prompts, n)
        rows = [
            r
            for run in runs
            for r in compare_requests(reference, run, self.tokenizer, prompts, tolerance.tie_margin, n)
        ]
        result = BatchingResult(
            check=check,
            technique=case.technique.name,
            reference=self.ctx.reference.name,
            device=case.device,
            dtype=case.dtype,
            reference_dtype=self.ctx.config.reference_dtype,
            new_tokens=n,
            near_tie=tolerance.tie_margin,
            budget=runs[0].budget,
            rows=rows,
            problems=[p for run in runs for p in run.problems()],  # missing requests are named there
            evidence=[run.evidence() for run in runs],
            api=runs[0].api,
        )
        return self.models.record(result)

    def budget_parity(self, case: Case) -> BatchingResult:
        """Every request of a prompt set larger than one batch (chunked prefill, several forwards) equals the
        reference's per-prompt greedy generation. The shortest configured length: the prompts (up to 120
        tokens, pages of 32) already cross pages and chunks; generation parity covers the longest length."""
        prompts, n = self.prompts(), min(self.ctx.config.new_tokens)
        run = run_generate_batch(self.models.model(case), self.tokenizer, self.inputs(prompts), case.technique, n)
        return self._result("budget_parity", case, [run], prompts, n)

    def repeat_calls(self, case: Case) -> BatchingResult:
        """Two ``generate_batch`` calls in a row on the same model: each returns every request with the reference's
        tokens, and each leaves the model's attention implementation as it found it."""
        prompts, n = self.prompts(), min(self.ctx.config.new_tokens)
        model, inputs = self.models.model(case), self.inputs(prompts)
        runs = [run_generate_batch(model, self.tokenizer, inputs, case.technique, n, call=c) for c in (1, 2)]
        return self._result("repeat_calls", case, runs, prompts, n)

    def manager_api(self, case: Case) -> BatchingResult:
        """The long-lived manager: requests added while it runs, every result collected, attention restored."""
        prompts, n = self.prompts(), min(self.ctx.config.new_tokens)
        run = run_manager(self.models.model(case), self.tokenizer, self.inputs(prompts), case.technique, n)
        return self._result("manager_api", case, [run], prompts, n)

    def assert_budget_parity(self, case: Case) -> BatchingResult:
        return self._assert(case, self.budget_parity)

    def assert_repeat_calls(self, case: Case) -> BatchingResult:
        return self._assert(case, self.repeat_calls)

    def assert_manager_api(self, case: Case) -> BatchingResult:
        reason = manager_unsupported(self.models.model(case))
        if reason:
            verdict.skip(reason)
        return self._assert(case, self.manager_api)

    def _assert(self, case: Case, check: Any) -> BatchingResult:

        return self.models.decided(case, lambda: [check(case)])[0]


def budget_prompts(prompts: Sequence[str], tokenizer: Any, max_batch_tokens: int) -> list[str]:
    """The prompt set grown past one batch: every prompt, then runs of consecutive prompts joined until each
    is longer than ``max_batch_tokens`` (prefilled in chunks); in all more than three batches of tokens."""
    base = [p for p in prompts if p.strip()]
    if not base:
        raise ValueError("budget_prompts needs at least one non-empty prompt")

    def length(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    out = list(base)
    longer = 0
    start = 0
    while longer < 2 or sum(map(length, out)) <= 3 * max_batch_tokens:
        joined = base[start % len(base)]
        k = start + 1
        while length(joined) <= max_batch_tokens + max_batch_tokens // 2:
            joined = f"{joined} {base[k % len(base)]}"
            k += 1
        out.append(joined)
        longer += 1
        start += 1
        if start > 4 * len(base) + 4:
            break
    return out

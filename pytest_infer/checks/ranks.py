"""Multi-process (tensor-parallel) cases: whether their ranks can run here, their launch (once per case, failures
cached too), what the parity checks take from them (rank 0's logits and generations), and the check that every
rank agrees."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from pytest_infer.checks import verdict
from pytest_infer.checks.models import CaseModels
from pytest_infer.core.case import Case
from pytest_infer.parity.ranks import RankAgreementResult, compare_ranks
from pytest_infer.runtime.batch import Batch
from pytest_infer.runtime.generated import Generated
from pytest_infer.runtime.launcher import LaunchFailure, RankResults, launch, preflight
from pytest_infer.runtime.loading import ModelSource
from pytest_infer.runtime.model_cache import ModelCache

if TYPE_CHECKING:
    import torch


def cached_preflight(cache: ModelCache, source: ModelSource, case: Case, tp_size: int, device_count: int) -> str | None:
    """Why ``case`` cannot run its ranks here (device count, backend, head counts), or None; asked once per
    session (collection asks it for the skip marks, the checks again before a launch)."""
    key: Hashable = ("ranks-preflight", source, case.technique.name, case.device, tp_size)
    return cache.tensor(key, lambda: preflight(source, case.device, tp_size, device_count))  # type: ignore[no-any-return]


class RankChecks:
    """The ranks of a test's multi-process cases, on its :class:`~pytest_infer.checks.models.CaseModels`."""

    def __init__(self, models: CaseModels) -> None:
        self.models = models
        self.ctx = models.ctx

    def require(self, case: Case) -> None:
        """Skip (or, under ``--infer-strict``, fail) a case whose ranks cannot run here."""
        ctx = self.ctx
        stack = ctx.stack_for(case.device)
        reason = cached_preflight(ctx.cache, ctx.source, case, ctx.config.tp_size, stack.device_count)
        if reason is not None:
            verdict.unsupported(f"{case.technique.name}: {reason}", ctx.config.strict)

    def launch(self, case: Case, batch: Batch, lengths: Sequence[int] | None = None) -> RankResults:
        """The launch for ``case`` on ``batch`` (cached in the session: failures too, so a hang costs one timeout)."""
        ctx = self.ctx
        self.require(case)
        cfg = ctx.config
        chosen = tuple(sorted(set(lengths or cfg.new_tokens)))
        shape = tuple(batch.input_ids.shape)
        key = (
            "ranks",
            ctx.source,
            case.technique.name,
            case.dtype,
            case.device,
            batch.prompts,
            shape,
            cfg.tp_size,
            chosen,
        )

        def run() -> RankResults | LaunchFailure:
            return launch(
                ctx.source, case, batch, chosen, tp_size=cfg.tp_size, timeout=cfg.rank_timeout, plugins=ctx.rank_plugins
            )

        outcome = ctx.cache.tensor(key, run)
        if isinstance(outcome, LaunchFailure):
            verdict.fail(outcome.message)
        return outcome  # type: ignore[no-any-return]

    def logits(self, case: Case, batch: Batch) -> torch.Tensor:
        """The candidate logits ``[batch, seq, vocab]`` on ``case.device``: rank 0's (every rank holds them)."""
        results = self.launch(case, batch)
        return results.logits[results.first].to(case.device)

    def generate(self, case: Case, batch: Batch, new_tokens: int) -> Generated:
        """Rank 0's greedy generation of ``new_tokens`` tokens (one launch serves every configured length)."""
        lengths = self.ctx.config.new_tokens
        results = self.launch(case, batch, lengths if new_tokens in lengths else (new_tokens,))
        return results.generated[results.first][new_tokens]

    def agreement(self, case: Case) -> RankAgreementResult:
        """Launch (or reuse) the ranks of ``case`` and compare them with each other; recorded like any check."""
        ctx = self.ctx
        batch = self.models.batch(case.device)
        results = self.launch(case, batch)
        bound, _ = self.models.tolerance(case, with_floor=False)
        result = compare_ranks(
            results,
            batch.attention_mask,
            ctx.tokenizer,
            device=case.device,
            dtype=case.dtype,
            prompts=ctx.prompts,
            logits_bound=bound.max_abs,
        )
        return self.models.record(result)

    def assert_agreement(self, case: Case) -> RankAgreementResult:
        if case.technique.runner != "multiprocess":
            verdict.skip(
                f"{case.technique.name} runs in one process (runner {case.technique.runner}): no ranks to compare"
            )
        return verdict.passed([self.agreement(case)])[0]

"""The models and reference computations every check shares, each computed once per session and kept in the
model cache: a case's model, the reference's logits on the padded batch and on each prompt alone, the noise floor,
and the bound of a case (decided by :func:`pytest_infer.parity.bounds.decide_bound`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from pytest_infer.checks import verdict
from pytest_infer.checks.context import CheckContext
from pytest_infer.core.case import Case
from pytest_infer.core.resources import quality_text
from pytest_infer.core.tolerance import Tolerance
from pytest_infer.parity.bounds import decide_bound
from pytest_infer.parity.floor import NoiseFloor, measure_floor
from pytest_infer.parity.logits import compare_logits
from pytest_infer.parity.padding import solo_logits
from pytest_infer.runtime.batch import Batch, encode, forward_logits
from pytest_infer.runtime.generated import Generated
from pytest_infer.runtime.generation import greedy_generate
from pytest_infer.runtime.loading import CheckpointError, load_model
from pytest_infer.runtime.long_context import long_batch

R = TypeVar("R")


class CaseModels:
    """A test's access to the session's models and reference tensors (cached across tests), and the two things
    every check does with a result: record it (session, JSON report, the test's report section) and decide it."""

    def __init__(self, ctx: CheckContext) -> None:
        self.ctx = ctx

    def key(self, case: Case) -> Hashable:
        return (self.ctx.source, case.technique.load_signature(), case.dtype, case.device)

    def model(self, case: Case) -> Any:
        ctx = self.ctx

        def load() -> Any:
            with ctx.step(f"loading {ctx.source.label} with {case.technique.name} ({case.dtype}, {case.device})"):
                return load_model(ctx.source, case.technique, case.dtype, case.device)

        refused = (ctx.source, case.dtype)
        if refused in ctx.cache.refused:  # a broken checkpoint is not loaded again for every technique
            raise CheckpointError(ctx.cache.refused[refused])
        try:
            return ctx.cache.model(self.key(case), load)
        except CheckpointError as exc:
            ctx.cache.refused[refused] = str(exc)
            raise

    def step(self, case: Case, what: str) -> AbstractContextManager[None]:
        """A progress step around a call of the case's technique (see :mod:`pytest_infer.progress`)."""
        t = case.technique
        if t.runner == "multiprocess":
            verb = f"running {t.name} on {self.ctx.config.tp_size} ranks"
        else:
            verb = f"{'compiling and running' if t.compiled else 'running'} {t.name}"
        return self.ctx.step(f"{verb} ({case.dtype}, {case.device}): {what}")

    def batch(self, device: str) -> Batch:
        return encode(self.ctx.tokenizer, self.ctx.prompts, device)

    def forward(self, case: Case, batch: Batch, model: Any | None = None, *, keep: bool = False) -> Any:
        """The case's logits on ``batch`` (its model, its technique's context), computed once for the checks of one
        technique that need the same input (the logit check's batch is the padding sweep's first point; an eager
        candidate in the reference dtype is the reference's own forward)."""
        if model is not None:  # a model the caller built: never cached
            return forward_logits(model, batch, case.technique)
        key = ("forward", self.key(case), case.technique.name, batch.digest())

        def compute() -> Any:
            model = self.model(case)
            shape = "x".join(str(n) for n in batch.input_ids.shape)
            with self.step(case, f"forward of [{shape}] tokens"):
                return forward_logits(model, batch, case.technique)

        return self.ctx.cache.tensor(key, compute) if keep else self.ctx.cache.recent(key, compute)

    # --- the reference, computed once ---------------------------------------------------------------
    def reference_logits(self, device: str, dtype: str | None = None) -> tuple[Any, Any]:
        """(logits, attention_mask) of the reference on the padded prompt batch, computed once."""
        case = self.ctx.ref_case(device, dtype)
        batch = self.batch(device)
        return self.forward(case, batch, keep=True), batch.attention_mask

    def reference_solo(self, device: str, dtype: str | None = None) -> list[Any]:
        """The reference's logits of each prompt as if run alone (one right-padded forward), computed once."""
        ctx = self.ctx
        case = ctx.ref_case(device, dtype)
        key = ("solo", ctx.source, case.technique.name, case.dtype, device, ctx.prompts)
        return ctx.cache.tensor(
            key,
            lambda: solo_logits(lambda batch: self.forward(case, batch, keep=True), ctx.tokenizer, ctx.prompts, device),
        )

    def reference_generation(self, device: str, new_tokens: int, batch: Batch | None = None) -> Generated:
        """The reference's greedy generation of ``new_tokens`` tokens on ``batch`` (default: the prompt batch),
        computed once."""
        ctx = self.ctx
        case = ctx.ref_case(device)
        batch = batch or self.batch(device)
        key = ("generate", ctx.source, case.technique.name, case.dtype, device, batch.digest(), new_tokens)
        return ctx.cache.tensor(
            key, lambda: greedy_generate(self.model(case), ctx.tokenizer, batch, case.technique, new_tokens)
        )

    def long_batch(self, device: str) -> Batch:
        """The long prompts of ``--infer-context``: cut from the quality text so that the longest
        ``--infer-new-tokens`` end at the context length (:mod:`pytest_infer.runtime.long_context`)."""
        ctx = self.ctx
        text, source = quality_text(ctx.config.quality_text)
        prompt_tokens = ctx.config.context - max(ctx.config.new_tokens)
        key = ("long-batch", source, device, prompt_tokens)
        return ctx.cache.tensor(key, lambda: long_batch(ctx.tokenizer, text, prompt_tokens, device))

    def noise_floor(self, device: str, dtype: str) -> NoiseFloor:
        """The reference's own noise in ``dtype`` on ``device`` (see :mod:`pytest_infer.parity.floor`)."""
        ctx = self.ctx

        def compute() -> NoiseFloor:
            import torch

            ref, mask = self.reference_logits(device)
            in_dtype, _ = self.reference_logits(device, dtype)
            common = dict(
                technique=ctx.reference.name,
                reference_name=ctx.reference.name,
                device=device,
                dtype=dtype,
                reference_dtype=ctx.config.reference_dtype,
            )
            loose = Tolerance(min_top1=None)
            solo = torch.zeros_like(in_dtype)
            for b, s in enumerate(self.reference_solo(device, dtype)):
                solo[b, mask[b].bool()] = s.to(solo.dtype)
            batch_noise = compare_logits(solo, in_dtype, mask, loose, **common)  # type: ignore[arg-type]
            if in_dtype is ref:  # the reference's own dtype: one forward, no dtype noise (nothing to compare)
                return measure_floor(None, batch_noise, 0.0)
            dtype_noise = compare_logits(ref, in_dtype, mask, loose, **common)  # type: ignore[arg-type]
            real = mask.bool()
            r, c = ref[real], in_dtype[real]
            top2 = r.topk(2, dim=-1).values
            flips = r.argmax(-1) != c.argmax(-1)
            flip_margin = float((top2[:, 0] - top2[:, 1])[flips].max()) if bool(flips.any()) else 0.0
            return measure_floor(dtype_noise, batch_noise, flip_margin)

        key = ("floor", ctx.source, ctx.reference.name, dtype, device, ctx.prompts)
        return ctx.cache.tensor(key, compute)

    def tolerance(self, case: Case, *, with_floor: bool = True) -> tuple[Tolerance, NoiseFloor | None]:
        """The bound of ``case`` for this test, and the noise floor it was derived from (``floor`` mode; not with
        ``with_floor=False``: rank agreement bounds ranks against each other, not against the reference)."""
        ctx = self.ctx
        use_floor = with_floor and ctx.config.tolerance_mode == "floor"
        floor = self.noise_floor(case.device, case.dtype) if use_floor else None
        hook = ctx.tolerance_hook
        bound = decide_bound(
            case,
            ctx.stack_for(case.device),
            floor=floor,
            specs=ctx.config.tolerance,
            hook=None if hook is None else (lambda tol: hook(case, tol)),
            markers=ctx.markers.get("infer_tolerance", ()),
        )
        return bound, floor

    # --- results --------------------------------------------------------------------------------------
    def provenance(self, case: Case | None) -> list[dict[str, Any]]:
        """What the case's model records about the code it runs (kernels techniques: the local repository
        and its content hash, or the hub repository and the revision it resolved to)."""
        if case is None or case.technique.prepare is None or case.technique.runner == "multiprocess":
            return []
        return list(getattr(self.model(case), "infer_provenance", None) or [])

    def record(self, result: R, case: Case | None = None) -> R:
        """Record ``result`` (its dict, with the case's kernel provenance) and, when it passed, its message as the
        test's report section."""
        data = result.to_dict()  # type: ignore[attr-defined]
        provenance = self.provenance(case)
        if provenance:
            data["provenance"] = provenance
        section = None
        if result.passed:  # type: ignore[attr-defined]  # a failure already carries its message
            lines = [result.message(), *(f"  kernel: {p['summary']}" for p in provenance if "summary" in p)]  # type: ignore[attr-defined]
            section = "\n".join(lines)
        self.ctx.record(data, section)
        return result

    def guard(self, case: Case) -> AbstractContextManager[None]:
        """:func:`pytest_infer.checks.verdict.guard` for ``case``'s model."""
        return verdict.guard(self.ctx.cache, case, self.key(case), strict=self.ctx.config.strict)

    def decided(self, case: Case, check: Callable[[], Sequence[R]]) -> list[R]:
        """Run ``check`` under the guard and fail the test unless every result passed."""
        with self.guard(case):
            return verdict.passed(check())

"""Goldens of a case (``--infer-golden DIR``): compare its logits and greedy tokens with the golden stored for its
key (model x stack class x dtype x technique), write the missing ones (``--infer-golden-record``), or rewrite them
on purpose (``--infer-golden-regen``), saying what changed. File format and comparison: :mod:`pytest_infer.parity.golden`
and :mod:`pytest_infer.parity.golden_compare`.

Cheap by design: the parity and generation checks hand over what they computed (:meth:`GoldenChecks.observe_logits`,
:meth:`~GoldenChecks.observe_generation`: a case's top-k, its moves against the golden, its greedy tokens), so the
golden tests that follow run no model unless those checks did not run first. Every golden result also says how the
reference compares with its own golden, so a drift reads as "the reference moved" or "only this technique moved".
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_infer.checks import verdict
from pytest_infer.checks.models import CaseModels
from pytest_infer.core.case import Case
from pytest_infer.core.errors import ExplainedFailure
from pytest_infer.core.version import __version__
from pytest_infer.parity.golden import (
    FutureGolden,
    GenerationGolden,
    Golden,
    GoldenError,
    GoldenKey,
    changes,
    describe_recorded,
    golden_document,
    model_name,
    read_golden,
    stack_classes,
    stale,
    write_golden,
)
from pytest_infer.parity.golden_compare import (
    GoldenResult,
    Observed,
    describe_generation,
    generation_drift,
    golden_bound,
    logit_drift,
    observe,
)
from pytest_infer.runtime.fingerprint import model_files, prompt_ids_hash, prompts_hash, tokenizer_hash
from pytest_infer.runtime.generated import Generated

SUITE_OF = {"logits": "parity", "generation": "generation"}
_STACK_FIELDS = (
    "device_kind",
    "device_name",
    "compute_capability",
    "cpu_capability",
    "machine",
    "cuda_version",
    "rocm_version",
    "cudnn_version",
    "driver_version",
    "python",
    "packages",
)


@dataclass
class _Reference:
    """How the reference compares with its own golden, once per device and check."""

    result: GoldenResult | None  # None: no golden of the reference (not recording)
    note: str
    recorded: bool = False  # its result is already in the session's results (it was written)


class GoldenChecks:
    """The golden checks of one test's cases."""

    def __init__(self, models: CaseModels) -> None:
        self.models = models
        self.ctx = models.ctx

    @property
    def enabled(self) -> bool:
        return bool(self.ctx.config.golden)

    @property
    def writing(self) -> bool:
        return self.ctx.config.golden_record or self.ctx.config.golden_regen

    def key(self, case: Case, check: str) -> GoldenKey:
        source = self.ctx.source
        return GoldenKey(
            model=model_name(source.name_or_path, source.is_local),
            stack_class=self.ctx.stack_for(case.device).stack_class(),
            dtype=case.dtype,
            technique=case.technique.name,
            check=check,
        )

    def _read(self, key: GoldenKey) -> tuple[Golden | None, GoldenError | None]:
        path = key.path(self.ctx.config.golden)
        if not path.exists():
            return None, None
        try:
            return read_golden(path, key), None
        except GoldenError as exc:
            return None, exc

    # --- what the parity and generation checks hand over -----------------------------------------------------
    def _stash_key(self, check: str, case: Case) -> tuple[Any, ...]:
        ctx = self.ctx
        return ("golden-observed", check, ctx.source, case.technique.name, case.dtype, case.device, ctx.prompts)

    def observe_logits(self, case: Case, logits: Any, mask: Any) -> None:
        if self.enabled:
            self.ctx.cache.tensor(self._stash_key("logits", case), lambda: self._observe(case, logits, mask))

    def observe_generation(self, case: Case, generated: Generated) -> None:
        if self.enabled:
            self.ctx.cache.tensor(self._stash_key("generation", case), lambda: generated)

    def _observe(self, case: Case, logits: Any, mask: Any) -> Observed:
        golden, _ = self._read(self.key(case, "logits"))
        return observe(logits, mask, self.ctx.config.golden_top_k, golden.logits if golden else None)

    # --- the checks -------------------------------------------------------------------------------------------
    def logits(self, case: Case, compute: Callable[[], tuple[Any, Any]]) -> GoldenResult:
        """``case``'s logits (``compute()``: logits and mask, when the parity check did not hand them over) against
        its golden."""

        def observed(golden: Golden | None) -> Observed:
            stash = self._stash_key("logits", case)
            found = self.ctx.cache.tensor(stash, lambda: None)
            if found is not None and (golden is None or found.move_max is not None or found.mismatch):
                return found
            return observe(*compute(), self.ctx.config.golden_top_k, golden.logits if golden else None)

        return self._case(case, "logits", observed)

    def generation(self, case: Case, compute: Callable[[], Generated]) -> GoldenResult:
        """``case``'s greedy tokens (``compute()``: the longest configured generation) against its golden."""

        def generated(golden: Golden | None) -> Generated:
            found = self.ctx.cache.tensor(self._stash_key("generation", case), lambda: None)
            return found if found is not None else compute()

        return self._case(case, "generation", generated)

    def _case(self, case: Case, check: str, produce: Callable[[Golden | None], Any]) -> GoldenResult:
        ref_case = self.ctx.ref_case(case.device)
        is_reference = case == ref_case
        reference = self._reference(case.device, check)
        if is_reference and reference.result is not None:
            result = reference.result  # compared (or written) once for every technique's message
            if reference.recorded:
                return result
        else:
            outcome = self._compare(case, check, produce, is_reference)
            if isinstance(outcome, str):
                verdict.unsupported(outcome, self.ctx.config.strict)
            result = outcome
            if not is_reference:
                result.reference_note = self._note(reference, result)
        return self.models.record(result, case)

    def _reference(self, device: str, check: str) -> _Reference:
        ctx, models = self.ctx, self.models
        ref_case = ctx.ref_case(device)

        def produce(golden: Golden | None) -> Any:
            if check == "generation":
                return models.reference_generation(device, max(ctx.config.new_tokens))
            logits, mask = models.reference_logits(device)
            return observe(logits, mask, ctx.config.golden_top_k, golden.logits if golden else None)

        def compute() -> _Reference:
            name = f"the reference {ref_case.technique.name} ({ref_case.dtype})"
            try:
                outcome = self._compare(ref_case, check, produce, is_reference=True)
            except ExplainedFailure as exc:
                return _Reference(None, f"{name}: its golden cannot be read: {exc}")
            if isinstance(outcome, str):
                return _Reference(None, f"{name} has no golden here: whether it moved is unknown")
            entry = _Reference(outcome, "")
            if outcome.status in ("recorded", "rewritten", "kept"):
                models.record(outcome, ref_case)  # a write is always reported, whichever test made it
                entry.recorded = True
            return entry

        key = ("golden-reference", check, ctx.source, ctx.reference.name, ctx.config.reference_dtype, device)
        return ctx.cache.tensor((*key, ctx.prompts), compute)

    @staticmethod
    def _note(reference: _Reference, result: GoldenResult) -> str:
        ref = reference.result
        if ref is None:
            return reference.note
        name = f"the reference {ref.technique} ({ref.dtype})"
        if ref.status == "moved":
            return f"{name} moved too ({ref.detail}): the change is in what every technique shares"
        if ref.status == "stale":
            return f"{name}: {ref.detail}"
        if result.status == "moved":
            return f"{name} matches its golden ({ref.detail}): only {result.technique} moved"
        return f"{name} matches its golden ({ref.detail})" if ref.status == "match" else f"{name}: {ref.headline()}"

    # --- one golden -------------------------------------------------------------------------------------------
    def _compare(
        self, case: Case, check: str, produce: Callable[[Golden | None], Any], is_reference: bool
    ) -> GoldenResult | str:
        """Compare, record or rewrite the golden of ``case``; a str when it is missing (and not recording)."""
        ctx, config = self.ctx, self.ctx.config
        key = self.key(case, check)
        path = key.path(config.golden)
        golden, error = self._read(key)
        if error is not None and (not config.golden_regen or isinstance(error, FutureGolden)):
            raise ExplainedFailure(str(error))
        floor = self.models.noise_floor(case.device, case.dtype) if config.tolerance_mode == "floor" else None
        recorded_floor = (golden.recorded.get("floor") if golden else None) or None
        bound = golden_bound(case.dtype, case.device, [floor, recorded_floor])
        base = GoldenResult(
            technique=case.technique.name,
            device=case.device,
            dtype=case.dtype,
            check=check,
            status="match",
            path=str(path),
            stack_class=key.stack_class,
            bound=bound,
            reference=f"{ctx.reference.name} ({config.reference_dtype})",
            is_reference=is_reference,
        )
        if golden is None and not self.writing:
            return self._missing(case, key)
        output = produce(golden)
        if golden is None:
            base.status = "rewritten" if error is not None else "recorded"
            base.detail = f"replaced an unreadable golden ({error})" if error is not None else ""
            return self._write(base, case, key, output, floor)
        base.recorded_on = describe_recorded(golden.recorded)
        why = stale(golden, prompts_hash(ctx.prompts), len(ctx.prompts))
        if why is None:
            moved = self._drift(base, golden, output, case)
        else:
            base.status, base.detail, moved = "stale", why, True
        if moved:
            base.changes = changes(golden.recorded, self._recorded(case, bound, floor, files=True))
        if config.golden_regen:
            if base.status == "stale":
                base.status = "rewritten"
                return self._write(base, case, key, output, floor)
            base.drifted = moved
            return self._write(base, case, key, output, floor, previous=golden)
        return base

    def _drift(self, result: GoldenResult, golden: Golden, output: Any, case: Case) -> bool:
        """Fill ``result`` with how ``output`` compares with ``golden``; whether it moved."""
        tokenizer = self.ctx.tokenizer
        if result.check == "logits":
            if golden.logits is None:
                raise ExplainedFailure(f"golden {golden.path}: has no logits section; record it anew")
            drift = logit_drift(golden.logits, output, result.bound)
            result.metrics = drift.metrics()
            result.detail = drift.describe(getattr(tokenizer, "decode", None))
            result.status = "moved" if drift.moved else "match"
            if not drift.moved:
                result.detail = f"max_abs {drift.max_abs:.3g}, top-1 equal at {drift.decisive} decisive positions"
            return drift.moved
        if golden.generation is None:
            raise ExplainedFailure(f"golden {golden.path}: has no generation section; record it anew")
        compared = generation_drift(
            golden.generation,
            output,
            tokenizer,
            tie_margin=result.bound.tie_margin,
            technique=case.technique.name,
            device=case.device,
            dtype=case.dtype,
            prompts=self.ctx.prompts,
        )
        metrics = compared.metrics
        result.metrics = {
            "matched_tokens": metrics["matched_tokens"],
            "near_ties": metrics["near_ties"],
            "compared_tokens": float(compared.new_tokens),
        }
        result.detail = describe_generation(compared)
        result.status = "match" if compared.passed else "moved"
        return not compared.passed

    def _write(
        self,
        result: GoldenResult,
        case: Case,
        key: GoldenKey,
        output: Any,
        floor: Any,
        previous: Golden | None = None,
    ) -> GoldenResult:
        golden = Golden(key, self._recorded(case, result.bound, floor, files=True), path=result.path)
        if key.check == "logits":
            golden.logits = output.current if isinstance(output, Observed) else output
        else:
            longest = max(self.ctx.config.new_tokens)
            margins = None if output.margins is None else [m[:longest] for m in output.margins]
            golden.generation = GenerationGolden(longest, [t[:longest] for t in output.tokens], margins)
        if previous is not None:
            if _same(previous, golden):
                result.status = "kept"
                return result
            result.status = "rewritten"
            result.changes = result.changes or changes(previous.recorded, golden.recorded)
        result.written_bytes = write_golden(result.path, golden)
        result.recorded_on = describe_recorded(golden.recorded)
        return result

    def _missing(self, case: Case, key: GoldenKey) -> str:
        config = self.ctx.config
        source = self.ctx.source
        model = "" if config.model_is_embedded else f" --infer-model {source.name_or_path}"
        command = (
            f"pytest -p pytest_infer --infer-suite {SUITE_OF[key.check]} --infer-golden {config.golden} "
            f"--infer-golden-record --infer-technique {case.technique.name} --infer-dtype {case.dtype} "
            f"--infer-device {case.device.split(':')[0]}{model}"
        )
        others = [c for c in stack_classes(config.golden, key.model) if c != key.stack_class]
        where = f"; {config.golden} has goldens of {key.model} for {', '.join(others)} only" if others else ""
        return (
            f"no golden of {case.technique.name} {key.check} ({case.dtype}) for stack class {key.stack_class}: "
            f"{key.path(config.golden)} does not exist{where}. Record it: {command}"
        )

    def _recorded(self, case: Case, bound: Any, floor: Any, *, files: bool) -> dict[str, Any]:
        """The ``recorded`` block of a golden written now (and what this run is, to list what changed)."""
        ctx = self.ctx
        stack = ctx.stack_for(case.device).to_dict()
        out: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "pytest_infer": __version__,
            "stack": {k: stack.get(k) for k in _STACK_FIELDS},
            "prompts": {"count": len(ctx.prompts), "sha256": prompts_hash(ctx.prompts)},
            "prompt_ids": prompt_ids_hash(ctx.tokenizer, ctx.prompts),
            "reference": f"{ctx.reference.name} ({ctx.config.reference_dtype})",
            "bound": bound.to_dict(),
            "floor": floor.to_dict() if floor is not None else None,
        }
        if files:
            found = ctx.cache.tensor(("golden-model-files", ctx.source), lambda: model_files(ctx.source.name_or_path))
            out["model"] = {"source": ctx.source.label, "files": found}
            out["tokenizer"] = tokenizer_hash(found)
        return out


def _same(old: Golden, new: Golden) -> bool:
    """Whether writing ``new`` over ``old`` would change anything but the date."""

    def body(golden: Golden) -> dict[str, Any]:
        doc = golden_document(golden)
        doc["recorded"] = {k: v for k, v in doc["recorded"].items() if k != "date"}
        return doc

    return body(old) == body(new)

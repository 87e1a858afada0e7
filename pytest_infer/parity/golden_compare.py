"""A run against its goldens: the comparison of logits (:func:`observe`, :func:`logit_drift`) and of greedy tokens
(:func:`generation_drift`), the bound they are held to (:func:`golden_bound`), and the result object every report
renders (:class:`GoldenResult`). torch is imported inside :func:`observe` only.

The logits of a case are compared as log-probabilities at the golden's top-k token ids of every real position:
``max_abs`` is the largest move, and the top-1 token must not change where the golden's top-1/top-2 margin is at
least the near-tie threshold. Greedy tokens must equal the golden's, except past a step where the golden's own
margin was a near-tie. The bound is the dtype's table tightened to the noise floor (the larger of the floor
recorded with the golden and this run's), the same rule that bounds parity, without a lossy technique's own wide
bounds: a golden compares a technique with itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_infer.core.text import number
from pytest_infer.core.tolerance import Tolerance
from pytest_infer.parity.bounds import default_tolerance
from pytest_infer.parity.floor import NoiseFloor, floor_tolerance
from pytest_infer.parity.generation import GenerationParityResult, compare_generations
from pytest_infer.parity.golden import GenerationGolden, LogitsGolden
from pytest_infer.runtime.generated import Generated

if TYPE_CHECKING:
    import torch


def golden_bound(dtype: str, device: str, floors: Sequence[Mapping[str, Any] | NoiseFloor | None]) -> Tolerance:
    """The dtype's table tightened to the largest of ``floors`` (the recorded one and this run's; the table alone
    when none was measured, as under ``--infer-tolerance-mode fixed``)."""
    table = default_tolerance(dtype, device)
    known = [f.to_dict() if isinstance(f, NoiseFloor) else dict(f) for f in floors if f]
    if not known:
        return table
    widest = NoiseFloor(
        dtype=dtype,
        device=device,
        **{k: max(float(f.get(k, 0.0)) for f in known) for k in ("max_abs", "max_kl", "flip_margin")},
        dtype_max_abs=max(float(f.get("dtype_max_abs", 0.0)) for f in known),
        batch_max_abs=max(float(f.get("batch_max_abs", 0.0)) for f in known),
    )
    return floor_tolerance(table, widest)


# --- logits ---------------------------------------------------------------------------------------------------
@dataclass
class Observed:
    """A run's logits reduced to what goldens need: its own top-k (what a golden of it records) and, against a
    golden, the largest and summed move of the golden's top-k log-probabilities at each position."""

    current: LogitsGolden
    move_max: list[list[float]] | None = None  # [row][position]
    move_sum: list[list[float]] | None = None
    mismatch: str | None = None  # why the golden's positions do not line up with this run's


def observe(logits: torch.Tensor, mask: torch.Tensor, top_k: int, golden: LogitsGolden | None) -> Observed:
    """Reduce ``[batch, seq, vocab]`` logits (real positions where ``mask`` is true) against ``golden``: one
    log-softmax per prompt gives both this run's top-k and its moves at the golden's tokens."""
    import torch

    real = mask.bool().to(logits.device)
    k = min(top_k, int(logits.shape[-1]))
    current = LogitsGolden(k, [], [])
    positions = [int(n) for n in real.sum(-1).tolist()]
    compare = golden is not None and golden.positions == positions
    move_max: list[list[float]] = []
    move_sum: list[list[float]] = []
    for b in range(logits.shape[0]):
        rows = torch.log_softmax(logits[b, real[b].nonzero().flatten()].float(), dim=-1)
        top = rows.topk(k, dim=-1)
        current.ids.append(top.indices.tolist())
        current.logprobs.append(top.values.tolist())
        if not compare or not positions[b]:
            move_max.append([])
            move_sum.append([])
            continue
        assert golden is not None
        ids = torch.tensor(golden.ids[b], device=rows.device)
        moved = (rows.gather(-1, ids) - torch.tensor(golden.logprobs[b], dtype=rows.dtype, device=rows.device)).abs()
        moved = torch.nan_to_num(moved, nan=math.inf)
        move_max.append(moved.amax(-1).tolist())
        move_sum.append(moved.sum(-1).tolist())
    observed = Observed(current)
    if golden is None:
        return observed
    if not compare:
        observed.mismatch = (
            f"the prompts tokenize to {positions} positions per row, the golden has {golden.positions}: "
            "the tokenizer changed"
        )
        return observed
    observed.move_max, observed.move_sum = move_max, move_sum
    return observed


@dataclass
class LogitDrift:
    """How far a run's logits moved from its golden."""

    max_abs: float
    mean_abs: float
    row: int
    position: int
    decisive: int
    top1_changed: list[tuple[int, int, int, int]]  # (row, position, golden token, this run's token)
    bound: float
    tie_margin: float
    mismatch: str | None = None

    @property
    def moved(self) -> bool:
        return bool(self.mismatch or self.top1_changed or not self.max_abs <= self.bound)

    def metrics(self) -> dict[str, float]:
        return {
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "top1_changed": float(len(self.top1_changed)),
            "decisive": float(self.decisive),
        }

    def describe(self, decode: Any = None) -> str:
        if self.mismatch:
            return self.mismatch
        text = f"max_abs {number(self.max_abs)} at row {self.row}, position {self.position}"
        if self.top1_changed:
            r, p, old, new = self.top1_changed[0]
            pieces = f" {decode([old])!r} -> {decode([new])!r}" if decode else f" token {old} -> {new}"
            text += (
                f"; top-1 changed at {len(self.top1_changed)} of {self.decisive} decisive positions (first: row {r}, "
                f"position {p}:{pieces})"
            )
        return text


def logit_drift(golden: LogitsGolden, observed: Observed, bound: Tolerance) -> LogitDrift:
    """Compare ``observed`` (made against ``golden`` by :func:`observe`) under ``bound``."""
    limit = bound.max_abs if bound.max_abs is not None else math.inf
    if observed.mismatch or observed.move_max is None or observed.move_sum is None:
        return LogitDrift(
            math.nan, math.nan, -1, -1, 0, [], limit, bound.tie_margin, observed.mismatch or "not compared"
        )
    worst, at, total, count, decisive = -1.0, (-1, -1), 0.0, 0, 0
    changed: list[tuple[int, int, int, int]] = []
    for r, (maxima, sums) in enumerate(zip(observed.move_max, observed.move_sum, strict=True)):
        for p, (m, s) in enumerate(zip(maxima, sums, strict=True)):
            if m > worst or math.isnan(m):
                worst, at = (math.inf if math.isnan(m) else m), (r, p)
            total, count = total + s, count + golden.top_k
            values = golden.logprobs[r][p]
            margin = values[0] - values[1] if len(values) > 1 else math.inf
            if margin >= bound.tie_margin:
                decisive += 1
                now = observed.current.ids[r][p][0]
                if now != golden.ids[r][p][0]:
                    changed.append((r, p, golden.ids[r][p][0], now))
    return LogitDrift(max(worst, 0.0), total / max(1, count), at[0], at[1], decisive, changed, limit, bound.tie_margin)


# --- generation -----------------------------------------------------------------------------------------------
def generation_drift(
    golden: GenerationGolden,
    current: Generated,
    tokenizer: Any,
    *,
    tie_margin: float,
    technique: str,
    device: str,
    dtype: str,
    prompts: Sequence[str] = (),
) -> GenerationParityResult:
    """This run's greedy tokens against the golden's, token by token: a divergence is accepted only where the
    golden's own margin was below ``tie_margin`` (a recorded near-tie)."""
    steps = min(golden.new_tokens, max((len(t) for t in current.tokens), default=0))
    return compare_generations(
        Generated(golden.tokens, golden.margins),
        current,
        tokenizer,
        near_tie=tie_margin,
        new_tokens=steps,
        technique=technique,
        reference_name=f"its golden ({technique})",
        device=device,
        dtype=dtype,
        reference_dtype=dtype,
        prompts=prompts,
    )


def describe_generation(result: GenerationParityResult) -> str:
    diverged = [r for r in result.rows if r.status in ("diverged", "short")]
    ties = [r for r in result.rows if r.status == "near_tie"]
    if not diverged:
        tail = f", {len(ties)} stopped at recorded near-ties" if ties else ""
        return f"{len(result.rows)} prompts x {result.new_tokens} greedy tokens equal{tail}"
    first = diverged[0]
    if first.status == "short":
        return f"row {first.row} produced {first.compared} of {result.new_tokens} tokens"
    return (
        f"{len(diverged)} of {len(result.rows)} prompts diverged; first row {first.row} at step {first.step}: "
        f"{first.reference_piece!r} (golden margin {number(first.reference_margin)}) -> {first.candidate_piece!r}"
    )


# --- the result -----------------------------------------------------------------------------------------------
WRITTEN = ("recorded", "rewritten")
_BEFORE: dict[bool | None, str] = {True: "it had moved: ", False: "within the bound: "}


@dataclass
class GoldenResult:
    """One case against its golden: compared (``match`` / ``moved`` / ``stale``), or written (``recorded``,
    ``rewritten``; ``kept`` when regeneration found nothing to change)."""

    technique: str
    device: str
    dtype: str
    check: str  # logits | generation
    status: str
    path: str
    stack_class: str
    bound: Tolerance
    metrics: dict[str, float] = field(default_factory=dict)
    detail: str = ""  # what moved, or the golden's summary
    changes: list[str] = field(default_factory=list)  # what differs since the golden was recorded
    recorded_on: str = ""
    reference: str = ""  # "eager (float32)"
    reference_note: str = ""  # how the reference itself compares with its golden
    is_reference: bool = False
    drifted: bool | None = None  # rewritten: whether the golden it replaced had moved (None: not compared)
    written_bytes: int = 0
    kind: str = "golden"

    @property
    def passed(self) -> bool:
        return self.status not in ("moved", "stale")

    @property
    def failures(self) -> list[str]:
        return [self.headline()] if not self.passed else []

    def who(self) -> str:
        role = f"reference {self.technique}" if self.is_reference else self.technique
        return f"{role} ({self.dtype}, {self.device})"

    def what_changed(self) -> str:
        if self.changes:
            return "; ".join(self.changes)
        return (
            "no recorded version, model file, tokenizer or device changed: the change is in code the golden does not "
            "fingerprint (model code, a patched function, an environment variable)"
        )

    def headline(self) -> str:
        if self.status == "moved":
            return f"{self.who()} moved: {self.detail}; {self.what_changed()}"
        if self.status == "stale":
            return f"{self.who()}: {self.detail}"
        if self.status == "recorded":
            return f"{self.who()} recorded: {self.path} ({self.written_bytes} bytes)"
        if self.status == "rewritten":
            was = _BEFORE.get(self.drifted, "") + self.detail
            what = "; ".join(self.changes) or "no recorded version or file changed"
            return f"{self.who()} rewritten: {self.path} ({was or 'no comparison'}; {what})"
        if self.status == "kept":
            return f"{self.who()} unchanged, kept: {self.path}"
        return f"{self.who()} matches its golden: {self.detail}"

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [f"golden {self.check} {verdict}: {self.headline()}"]
        if self.status in ("moved", "match"):
            lines.append(
                f"  bound: max_abs {number(self.bound.max_abs)} on log-probabilities, near-tie margin "
                f"{number(self.bound.tie_margin)} ({self.dtype} table tightened to the noise floor)"
            )
            lines.append(f"  golden: {self.path}, recorded {self.recorded_on} (stack class {self.stack_class})")
        if self.reference_note:
            lines.append(f"  {self.reference_note}")
        if self.status in ("moved", "stale"):
            lines.append("  if the change is intended: rerun with --infer-golden-regen to rewrite the golden")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": "golden",
            "variant": self.check,
            "technique": self.technique,
            "device": self.device,
            "dtype": self.dtype,
            "passed": self.passed,
            "status": self.status,
            "path": self.path,
            "stack_class": self.stack_class,
            "metrics": self.metrics,
            "bound": self.bound.to_dict(),
            "detail": self.detail,
            "changes": list(self.changes),
            "recorded_on": self.recorded_on,
            "reference": self.reference,
            "reference_note": self.reference_note,
            "is_reference": self.is_reference,
            "drifted": self.drifted,
            "written_bytes": self.written_bytes,
            "failures": self.failures,
        }

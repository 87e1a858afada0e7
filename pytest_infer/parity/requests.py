"""Continuous batching judged request by request: each request's tokens against the reference's per-prompt
greedy tokens (near-ties tolerated), plus the run's own problems (missing request, wrong attention)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_infer.core.text import number
from pytest_infer.parity.generation import token_divergence
from pytest_infer.runtime.continuous_batching import BatchRun
from pytest_infer.runtime.generated import Generated


@dataclass
class RequestRow:
    """How one request of one run compares with the reference's per-prompt generation."""

    request: int
    call: int
    status: str  # match | near_tie | diverged | short | missing
    compared: int
    request_id: str | None = None
    prompt_tokens: int = 0
    step: int | None = None
    reference_token: int | None = None
    candidate_token: int | None = None
    reference_piece: str = ""
    candidate_piece: str = ""
    reference_margin: float | None = None
    text_so_far: str = ""

    def where(self, api: str) -> str:
        rid = f"{self.request_id}, " if self.request_id else ""
        return f"request {self.request} ({rid}{self.prompt_tokens} prompt tokens) in {api} call {self.call}"


@dataclass
class BatchingResult:
    """A continuous-batching check: per-request token parity with the reference, and the runs' own problems."""

    check: str  # budget_parity | repeat_calls | manager_api
    technique: str
    reference: str
    device: str
    dtype: str
    reference_dtype: str
    new_tokens: int
    near_tie: float
    budget: dict[str, int]
    rows: list[RequestRow]
    problems: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    api: str = "generate_batch"
    kind: str = "batching"

    @property
    def failures(self) -> list[str]:
        out = list(self.problems)
        for r in self.rows:
            if r.status == "diverged":
                out.append(
                    f"{r.where(self.api)} diverged at step {r.step}: reference {r.reference_token} "
                    f"{r.reference_piece!r} (margin {number(r.reference_margin)}) vs candidate {r.candidate_token} "
                    f"{r.candidate_piece!r}; near-tie threshold {self.near_tie:g}; text so far: {r.text_so_far!r}"
                )
            elif r.status == "short":
                out.append(f"{r.where(self.api)}: candidate produced {r.compared} of {self.new_tokens} tokens")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def metrics(self) -> dict[str, float]:
        total = sum(r.compared for r in self.rows)
        return {
            "requests": float(len({r.request for r in self.rows})),
            "matched_tokens": float(total),
            "match_rate": total / max(1, self.new_tokens * len(self.rows)),
            "near_ties": float(sum(r.status == "near_tie" for r in self.rows)),
            "missing": float(sum(r.status == "missing" for r in self.rows)),
        }

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        budget = ", ".join(f"{k}={v}" for k, v in self.budget.items())
        lines = [
            f"batching {self.check.replace('_', ' ')} {verdict}: {self.technique} ({self.dtype}) vs reference "
            f"{self.reference} ({self.reference_dtype}) per-prompt generate on {self.device}, "
            f"{int(self.metrics['requests'])} requests x {self.new_tokens} greedy tokens; budget {budget}"
        ]
        lines.extend(f"  {e}" for e in self.evidence)
        for r in self.rows:
            if r.status == "near_tie":
                lines.append(
                    f"  {r.where(self.api)}: near-tie at step {r.step} (reference margin {number(r.reference_margin)} "
                    f"< {self.near_tie:g}): {r.reference_piece!r} vs {r.candidate_piece!r}; compared up to there"
                )
        lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": "batching",
            "variant": self.check,
            "technique": self.technique,
            "reference": self.reference,
            "device": self.device,
            "dtype": self.dtype,
            "reference_dtype": self.reference_dtype,
            "passed": self.passed,
            "new_tokens": self.new_tokens,
            "near_tie": self.near_tie,
            "budget": dict(self.budget),
            "api": self.api,
            "metrics": self.metrics,
            "failures": self.failures,
            "evidence": list(self.evidence),
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }


def compare_requests(
    reference: Generated, run: BatchRun, tokenizer: Any, prompts: Sequence[str], near_tie: float, new_tokens: int
) -> list[RequestRow]:
    """Each request of ``run`` against the reference's per-prompt tokens (same order); a divergence is accepted
    only where the reference's top-1/top-2 margin is below ``near_tie``."""
    rows: list[RequestRow] = []
    for i, ref in enumerate(reference.tokens):
        cand = run.tokens[i]
        common = dict(request=i, call=run.call, request_id=run.request_ids[i], prompt_tokens=len(run.inputs[i]))
        if cand is None:
            rows.append(RequestRow(status="missing", compared=0, **common))  # type: ignore[arg-type]
            continue
        ref, cand = ref[:new_tokens], cand[:new_tokens]
        row = RequestRow(status="match", compared=min(len(ref), len(cand)), **common)  # type: ignore[arg-type]
        d = token_divergence(ref, cand, tokenizer, prompts[i] if i < len(prompts) else "")
        if d is not None:
            margin = reference.margins[i][d.step] if reference.margins else None
            row = RequestRow(
                status="near_tie" if margin is not None and margin < near_tie else "diverged",
                compared=d.step,
                reference_margin=margin,
                **dataclasses.asdict(d),
                **common,  # type: ignore[arg-type]
            )
        elif len(cand) < min(len(ref), new_tokens):
            row.status = "short"
        rows.append(row)
    return rows

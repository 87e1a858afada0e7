"""Greedy-generation parity: token by token against the reference, tolerant only of measured near-ties.

:func:`compare_generations` walks candidate and reference together: at the first differing token the divergence
is accepted only when the reference's margin there is below the near-tie threshold (rounding can flip a near-tie;
comparison stops there and says so); anything else fails with the step, both tokens, both margins and the text so
far. Lossy techniques are held to a share of agreeing tokens (``min_greedy``) instead."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_infer.core.text import number
from pytest_infer.parity.logits import SAME_AS_REFERENCE
from pytest_infer.runtime.generated import Generated


@dataclass
class GenerationRow:
    """How one prompt's greedy continuation compares with the reference's."""

    row: int
    status: str  # "match" | "near_tie" | "diverged" | "short"
    compared: int  # steps compared (up to and excluding the divergence)
    step: int | None = None
    reference_token: int | None = None
    candidate_token: int | None = None
    reference_piece: str = ""
    candidate_piece: str = ""
    reference_margin: float | None = None
    candidate_margin: float | None = None
    text_so_far: str = ""


@dataclass
class GenerationParityResult:
    technique: str
    reference: str
    device: str
    dtype: str
    reference_dtype: str
    new_tokens: int
    near_tie: float
    rows: list[GenerationRow]
    prompts: list[str] = field(default_factory=list)
    kind: str = "generation_parity"
    min_greedy: float | None = None  # lossy techniques: required greedy agreement instead of exact rows
    same_as_reference: bool = False  # the reference compared with itself (see parity.logits.SAME_AS_REFERENCE)
    context: int = 0  # --infer-context: the long prompts, generated up to this many positions (0: the prompt set)

    @property
    def greedy_agreement(self) -> float:
        """Share of generated tokens equal to the reference's before their row diverged (near-tie rows
        count in full: past a near-tie, both continuations are legitimate)."""
        agreed = sum(self.new_tokens if r.status in ("match", "near_tie") else r.compared for r in self.rows)
        return agreed / max(1, self.new_tokens * len(self.rows))

    @property
    def failures(self) -> list[str]:
        if self.min_greedy is not None:
            if self.greedy_agreement >= self.min_greedy:
                return self._row_failures(statuses=("short",))  # a short output is wrong at any agreement
            return [
                f"greedy agreement {self.greedy_agreement:.3f} < {self.min_greedy:g} "
                f"(share of tokens matching the reference before each row diverged)",
                *self._row_failures(),
            ]
        return self._row_failures()

    def _row_failures(self, statuses: tuple[str, ...] = ("diverged", "short")) -> list[str]:
        out = []
        for r in self.rows:
            if r.status not in statuses:
                continue
            if r.status == "diverged":
                out.append(
                    f"row {r.row} diverged at step {r.step}: reference {r.reference_token} {r.reference_piece!r} "
                    f"(margin {number(r.reference_margin)}) vs candidate {r.candidate_token} {r.candidate_piece!r} "
                    f"(margin {number(r.candidate_margin)}); near-tie threshold {self.near_tie:g}; "
                    f"text so far: {r.text_so_far!r}"
                )
            elif r.status == "short":
                out.append(f"row {r.row}: candidate produced {r.compared} of {self.new_tokens} tokens")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def metrics(self) -> dict[str, float]:
        total = sum(r.compared for r in self.rows)
        return {
            "matched_tokens": float(total),
            "match_rate": total / max(1, self.new_tokens * len(self.rows)),
            "near_ties": float(sum(r.status == "near_tie" for r in self.rows)),
            "greedy_agreement": self.greedy_agreement,
        }

    def headline(self) -> str:
        m = self.metrics
        if self.min_greedy is not None:
            return f"greedy agreement {m['greedy_agreement']:.3f} (min {self.min_greedy:g})"
        return f"{int(m['matched_tokens'])}/{self.new_tokens * len(self.rows)} tokens, {int(m['near_ties'])} near-tie stops"

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"generation parity {verdict}: {self.technique} ({self.dtype}) vs reference {self.reference} "
            f"({self.reference_dtype}) on {self.device}, {len(self.rows)} prompts x {self.new_tokens} greedy tokens"
            + (f", long prompts generated up to {self.context} positions (--infer-context)" if self.context else "")
        ]
        if self.same_as_reference:
            lines.append(f"  {SAME_AS_REFERENCE}")
        if self.min_greedy is not None:
            lines.append(
                f"  lossy technique: greedy agreement {self.greedy_agreement:.3f}, required >= {self.min_greedy:g}"
            )
            if self.passed:
                lines.extend(f"  row {r.row} diverged at step {r.step}" for r in self.rows if r.status == "diverged")
        for r in self.rows:
            if r.status == "near_tie":
                lines.append(
                    f"  row {r.row}: near-tie at step {r.step} (reference margin {number(r.reference_margin)} < "
                    f"{self.near_tie:g}): {r.reference_piece!r} vs {r.candidate_piece!r}; compared {r.compared} steps, "
                    "stopped there"
                )
        lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": "generation",
            "variant": f"context {self.context}" if self.context else f"{self.new_tokens} tokens",
            "technique": self.technique,
            "reference": self.reference,
            "device": self.device,
            "dtype": self.dtype,
            "reference_dtype": self.reference_dtype,
            "passed": self.passed,
            "new_tokens": self.new_tokens,
            "near_tie": self.near_tie,
            "min_greedy": self.min_greedy,
            "context": self.context,
            "same_as_reference": self.same_as_reference,
            "metrics": self.metrics,
            "failures": self.failures,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }


@dataclass(frozen=True)
class TokenDivergence:
    """Where two greedy token sequences first part: the step, both tokens, decoded, and the text before it."""

    step: int
    reference_token: int
    candidate_token: int
    reference_piece: str
    candidate_piece: str
    text_so_far: str


def token_divergence(
    reference: Sequence[int], candidate: Sequence[int], tokenizer: Any, prompt: str = ""
) -> TokenDivergence | None:
    """The first step (over the common length) where ``candidate`` differs from ``reference``; None if none.

    Shared by generation parity, continuous batching (per request) and tensor parallelism (per rank)."""
    step = next((s for s, (r, c) in enumerate(zip(reference, candidate, strict=False)) if r != c), None)
    if step is None:
        return None
    rt, ct = reference[step], candidate[step]
    return TokenDivergence(
        step, rt, ct, tokenizer.decode([rt]), tokenizer.decode([ct]), prompt + tokenizer.decode(list(reference[:step]))
    )


def compare_generations(
    reference: Generated,
    candidate: Generated,
    tokenizer: Any,
    *,
    near_tie: float,
    new_tokens: int,
    technique: str,
    reference_name: str,
    device: str,
    dtype: str,
    reference_dtype: str,
    prompts: Sequence[str] = (),
    min_greedy: float | None = None,
) -> GenerationParityResult:
    """Compare the first ``new_tokens`` greedy tokens of each row."""
    rows: list[GenerationRow] = []
    for b, (ref, cand) in enumerate(zip(reference.tokens, candidate.tokens, strict=False)):
        ref, cand = ref[:new_tokens], cand[:new_tokens]
        row = GenerationRow(row=b, status="match", compared=min(len(ref), len(cand)))
        d = token_divergence(ref, cand, tokenizer, prompts[b] if b < len(prompts) else "")
        if d is not None:
            ref_margin = reference.margins[b][d.step] if reference.margins else None
            row = GenerationRow(
                row=b,
                status="near_tie" if ref_margin is not None and ref_margin < near_tie else "diverged",
                compared=d.step,
                reference_margin=ref_margin,
                candidate_margin=candidate.margins[b][d.step] if candidate.margins else None,
                **dataclasses.asdict(d),
            )
        elif len(cand) < min(len(ref), new_tokens):
            row.status = "short"
        rows.append(row)
    return GenerationParityResult(
        technique=technique,
        reference=reference_name,
        device=device,
        dtype=dtype,
        reference_dtype=reference_dtype,
        new_tokens=new_tokens,
        near_tie=near_tie,
        rows=rows,
        prompts=list(prompts),
        min_greedy=min_greedy,
    )

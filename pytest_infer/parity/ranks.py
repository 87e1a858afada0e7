"""Rank agreement of a multi-process technique: every rank's greedy tokens (and logits) against rank 0's."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_infer.core.text import shorten
from pytest_infer.parity.generation import token_divergence
from pytest_infer.runtime.launcher import RankResults


# --- every rank must agree ------------------------------------------------------------------------
@dataclass
class Disagreement:
    rank: int
    new_tokens: int
    row: int
    step: int | None  # None: a different number of tokens
    token: int | None
    first_token: int | None
    piece: str = ""
    first_piece: str = ""


@dataclass
class RankAgreementResult:
    """Greedy tokens of every rank (each configured length) and logits of this node's ranks, against rank 0."""

    technique: str
    device: str
    dtype: str
    tp_size: int
    first_rank: int
    lengths: list[int]
    disagreements: list[Disagreement]
    tokens_compared: int
    logits_spread: float  # largest |logits of rank r - logits of the first rank| at real positions
    logits_bound: float | None
    spread_rank: int | None = None
    prompts: list[str] = field(default_factory=list)
    missing_ranks: list[int] = field(default_factory=list)
    kind: str = "rank_agreement"

    @property
    def failures(self) -> list[str]:
        out = []
        if self.missing_ranks:
            out.append(f"no tokens from rank(s) {', '.join(map(str, self.missing_ranks))} of {self.tp_size}")
        for d in self.disagreements:
            request = f"request {d.row}" + (f" ({shorten(self.prompts[d.row])})" if d.row < len(self.prompts) else "")
            if d.step is None:
                out.append(
                    f"rank {d.rank} disagrees with rank {self.first_rank} on {request} of the {d.new_tokens}-token "
                    f"generation: a different number of tokens"
                )
                continue
            out.append(
                f"rank {d.rank} disagrees with rank {self.first_rank} on {request}, step {d.step} of the "
                f"{d.new_tokens}-token generation: rank {self.first_rank} chose {d.first_token} {d.first_piece!r}, "
                f"rank {d.rank} chose {d.token} {d.piece!r}"
            )
        if self.logits_bound is not None and self.logits_spread > self.logits_bound:
            out.append(
                f"rank {self.spread_rank}'s logits differ from rank {self.first_rank}'s by up to "
                f"{self.logits_spread:.3g} (bound {self.logits_bound:g}): every rank must hold the same gathered logits"
            )
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "ranks": float(self.tp_size),
            "tokens_compared": float(self.tokens_compared),
            "disagreements": float(len(self.disagreements)),
            "logits_spread": self.logits_spread,
        }

    def headline(self) -> str:
        return (
            f"{self.tp_size} ranks, {self.tokens_compared} tokens compared, {len(self.disagreements)} disagreements, "
            f"logits spread {self.logits_spread:.3g}"
        )

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"rank agreement {verdict}: {self.technique} ({self.dtype}) on {self.device}, {self.tp_size} ranks, "
            f"{len(self.prompts)} requests x {'/'.join(map(str, self.lengths))} greedy tokens: {self.headline()}"
        ]
        lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": "ranks",
            "variant": f"{self.tp_size} ranks",
            "technique": self.technique,
            "device": self.device,
            "dtype": self.dtype,
            "passed": self.passed,
            "tp_size": self.tp_size,
            "lengths": self.lengths,
            "metrics": self.metrics,
            "failures": self.failures,
            "disagreements": [dataclasses.asdict(d) for d in self.disagreements],
        }


def compare_ranks(
    results: RankResults,
    mask: Any,
    tokenizer: Any,
    *,
    device: str,
    dtype: str,
    prompts: Sequence[str],
    logits_bound: float | None,
) -> RankAgreementResult:
    """Every rank's tokens against the first rank's, request by request, step by step; and logits."""
    first = results.first
    lengths = sorted(results.tokens.get(first, {}))
    disagreements: list[Disagreement] = []
    compared = 0
    for rank in sorted(results.tokens):
        if rank == first:
            continue
        for n in lengths:
            mine, theirs = results.tokens[first][n], results.tokens[rank].get(n, [])
            for row, ref_row in enumerate(mine):
                other = theirs[row] if row < len(theirs) else []
                d = token_divergence(ref_row, other, tokenizer)
                compared += d.step if d is not None else min(len(ref_row), len(other))
                if d is not None:
                    disagreements.append(
                        Disagreement(
                            rank,
                            n,
                            row,
                            d.step,
                            d.candidate_token,
                            d.reference_token,
                            d.candidate_piece,
                            d.reference_piece,
                        )
                    )
                elif len(ref_row) != len(other):
                    disagreements.append(Disagreement(rank, n, row, None, None, None))
    spread, spread_rank = 0.0, None
    for rank, value in results.logits.items():
        if rank == first:
            continue
        real = mask.bool().cpu()
        delta = float((value[real].double() - results.logits[first][real].double()).abs().max())
        if delta >= spread:
            spread, spread_rank = delta, rank
    return RankAgreementResult(
        technique=results.technique,
        device=device,
        dtype=dtype,
        tp_size=results.tp_size,
        first_rank=first,
        lengths=lengths,
        disagreements=disagreements,
        tokens_compared=compared,
        logits_spread=spread,
        logits_bound=logits_bound,
        spread_rank=spread_rank,
        prompts=list(prompts),
        missing_ranks=[r for r in range(results.tp_size) if r not in results.tokens],
    )

"""Sampling reproducibility: with a fixed seed, a technique draws the same tokens run to run, and the reference's
tokens wherever their distributions agree.

Transformers samples with ``torch.multinomial``, which for one draw is an exponential race: the token is
``argmax(p / E)`` over i.i.d. ``E ~ Exp(1)`` from the seeded generator (a Gumbel-max draw). Two runs on the same
random stream can therefore draw different tokens only where their distributions differ, and then with a
probability at most ``2 TV / (1 + TV) <= L1`` (TV: total variation, L1 = 2 TV = sum |p - q|; the Gumbel-max
coupling bound). So at the first step where a technique's token departs from the reference's (the prompts and the
tokens before it being equal, the two distributions are over the same prefix):

* ``L1 >= NOISE_L1``: the technique's distribution differs enough there for float noise to explain a different
  draw; the row is accepted and compared no further (as a near-tie in greedy parity);
* ``L1 < NOISE_L1``: noise explains it with a chance under ``NOISE_L1``: the random stream itself differs (a
  reseeded generator, extra or missing draws) and the check fails naming the step, both tokens and the L1.

Run to run, any different token fails: with a different L1 the technique's kernels are not deterministic, with
an L1 of 0 its random stream was not reproduced. A run whose draws never departed from greedy (distributions so
peaked that every draw takes the top token) proves nothing about the random stream: it is inconclusive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_infer.core.text import number

if TYPE_CHECKING:
    from pytest_infer.runtime.sampling import Sampled

NOISE_L1 = 1e-4


@dataclass
class SampledRow:
    """Where one prompt's sampled tokens first part from another run's (reference, or the technique's first run)."""

    row: int
    step: int
    expected: int  # the other run's token
    drawn: int  # this run's token
    l1: float  # sum |p - q| of the two distributions at that step
    expected_piece: str = ""
    drawn_piece: str = ""

    @property
    def explained(self) -> bool:
        return self.l1 >= NOISE_L1


@dataclass
class SamplingResult:
    technique: str
    reference: str
    device: str
    dtype: str
    seed: int
    temperature: float
    new_tokens: int
    prompts: int
    draws: int = 0
    departures: int = 0  # draws that did not take the top token: the random stream decided them
    repeat: list[SampledRow] = field(default_factory=list)  # run 2 against run 1
    versus_reference: list[SampledRow] | None = None  # None: not compared (why_not says why)
    why_not: str = ""
    kind: str = "sampling"
    check: str = "sampling"

    @property
    def inconclusive(self) -> bool:
        return self.draws > 0 and self.departures == 0 and not self.failures

    @property
    def failures(self) -> list[str]:
        out = []
        unseeded = [r for r in self.repeat if r.l1 == 0]
        moved = [r for r in self.repeat if r.l1 > 0]
        head = f"not reproducible with seed {self.seed}: in {{}} of {self.prompts} prompts run 2 drew other tokens than run 1"
        if unseeded:
            out.append(
                head.format(len(unseeded)) + " where their distributions were identical (L1 0): the random stream was "
                "not reproduced (a generator seeded from something else than torch's seed, or draws that vary from "
                f"call to call): {_rows(unseeded, 'run 1')}"
            )
        if moved:
            out.append(
                head.format(len(moved)) + " after their distributions differed run to run (kernels that are not "
                f"deterministic): {_rows(moved, 'run 1')}"
            )
        unexplained = [r for r in self.versus_reference or [] if not r.explained]
        if unexplained:
            out.append(
                f"in {len(unexplained)} of {self.prompts} prompts the technique drew other tokens than the reference "
                f"{self.reference} with the same seed where their distributions differ by L1 < {NOISE_L1:g} (float "
                "noise explains such a parting with a chance under that L1): the technique's random stream differs "
                f"from the reference's (a reseeded generator, extra or missing draws): {_rows(unexplained, self.reference)}"
            )
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def metrics(self) -> dict[str, float]:
        explained = [r for r in self.versus_reference or [] if r.explained]
        return {
            "draws": float(self.draws),
            "departures": float(self.departures),
            "repeat_differences": float(len(self.repeat)),
            "reference_divergences": float(len(self.versus_reference or [])),
            "explained_divergences": float(len(explained)),
        }

    def message(self) -> str:
        verdict = "INCONCLUSIVE" if self.inconclusive else "passed" if self.passed else "FAILED"
        lines = [
            f"sampling reproducibility {verdict}: {self.technique} ({self.dtype}) on {self.device}, seed {self.seed}, "
            f"temperature {self.temperature:g}, {self.prompts} prompts x {self.new_tokens} sampled tokens, twice; "
            f"{self.departures} of {self.draws} draws did not take the top token"
        ]
        if self.inconclusive:
            lines.append(
                "  every draw took the most likely token: a different random stream would have drawn the same "
                "tokens, so nothing was proven (a model with flatter distributions, or a higher temperature, tests it)"
            )
        if self.versus_reference is None:
            lines.append(f"  not compared with the reference: {self.why_not}")
        for r in self.versus_reference or []:
            if r.explained:
                lines.append(
                    f"  row {r.row}: parted from the reference at step {r.step} where their distributions differ by "
                    f"L1 {number(r.l1)} >= {NOISE_L1:g} (float noise can explain it); compared no further"
                )
        lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(passed=self.passed, failures=self.failures, metrics=self.metrics, variant=f"seed {self.seed}")
        d["inconclusive"] = self.inconclusive
        return d


def _rows(rows: list[SampledRow], other: str, shown: int = 3) -> str:
    """The first ``shown`` partings, compactly: row, step, both tokens, the L1 there."""
    text = "; ".join(
        f"row {r.row} step {r.step}: {r.drawn} {r.drawn_piece!r} vs {other}'s {r.expected} {r.expected_piece!r} "
        f"(L1 {number(r.l1)})"
        for r in rows[:shown]
    )
    return text + (f"; {len(rows) - shown} more" if len(rows) > shown else "")


def first_parting(expected: Sampled, drawn: Sampled, tokenizer: Any) -> list[SampledRow]:
    """For each row where ``drawn`` departs from ``expected``: the first step, both tokens and the L1 there."""
    out = []
    for b, (e, d) in enumerate(zip(expected.tokens, drawn.tokens, strict=False)):
        step = next((s for s, (x, y) in enumerate(zip(e, d, strict=False)) if x != y), None)
        if step is None:
            continue
        l1 = float((expected.probs[b, step] - drawn.probs[b, step]).abs().sum())
        out.append(SampledRow(b, step, e[step], d[step], l1, tokenizer.decode([e[step]]), tokenizer.decode([d[step]])))
    return out


def departures(sampled: Sampled) -> tuple[int, int]:
    """(draws, draws that did not take the most likely token)."""
    import torch

    tokens = torch.tensor(sampled.tokens, dtype=torch.long)
    top = sampled.probs.argmax(-1)
    return int(tokens.numel()), int((tokens != top[:, : tokens.shape[1]]).sum())

"""Logit parity: metrics, the tolerance decision, and a result object every report is built from.

:func:`compare_logits` compares a candidate's logits with the reference's at the real (unpadded)
positions of a batch and returns a :class:`LogitParityResult`. The failure text, the JSON report entry
and pytest-benchmark ``extra_info`` are all rendered from that object. torch is imported inside the
functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_infer.core.tolerance import Tolerance

if TYPE_CHECKING:
    import torch

# Metrics where larger is better; every other metric must stay at or below its bound.
_LOWER_BOUNDS = {"min_cosine": "cosine", "min_top1": "top1"}
_UPPER_BOUNDS = {"max_abs": "max_abs", "mean_abs": "mean_abs", "max_kl": "max_kl", "mean_kl": "mean_kl"}


@dataclass(frozen=True)
class RowParity:
    """Metrics of one prompt (one batch row) over its real positions."""

    row: int
    positions: int
    max_abs: float
    mean_abs: float
    max_kl: float
    mean_kl: float
    cosine: float  # the lowest per-position cosine similarity in the row
    top1: float  # agreement at decisive positions (1.0 when none are decisive)
    decisive: int
    worst_position: int  # position of max_abs within the row (index into the unpadded prompt)


SAME_AS_REFERENCE = (
    "the reference itself: the same technique in the same dtype compared with itself, so this tests nothing "
    "about it (pass another --infer-reference to test it)"
)


@dataclass
class LogitParityResult:
    """The outcome of one logit-parity check, with everything a reader needs to judge it."""

    technique: str
    reference: str
    device: str
    dtype: str
    reference_dtype: str
    tolerance: Tolerance
    rows: list[RowParity]
    nonfinite: list[tuple[int, int, str]] = field(default_factory=list)  # (row, position, "real"|"pad") of NaN/Inf
    failures: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    kind: str = "logit_parity"
    check: str = "logits"  # logits | padding
    variant: str = ""  # e.g. "left+7 padding"
    floor: dict[str, Any] | None = None  # the measured noise floor the bounds were derived from
    localization: str | None = None  # on failure: the first decoder layer that parted
    same_as_reference: bool = False  # the reference compared with itself (same technique and dtype): proves nothing

    @property
    def passed(self) -> bool:
        return not self.failures

    def _agg(self, name: str) -> float:
        values = [getattr(r, name) for r in self.rows]
        if not values:
            return math.nan
        if name in ("cosine", "top1"):
            return min(values)
        if name.startswith("mean"):
            total = sum(getattr(r, name) * r.positions for r in self.rows)
            return total / max(1, sum(r.positions for r in self.rows))
        return max(values)

    @property
    def metrics(self) -> dict[str, float]:
        return {m: self._agg(m) for m in ("max_abs", "mean_abs", "max_kl", "mean_kl", "cosine", "top1")}

    def worst_row(self, metric: str = "max_abs") -> RowParity | None:
        if not self.rows:
            return None
        pick = min if metric in ("cosine", "top1") else max
        return pick(self.rows, key=lambda r: getattr(r, metric))

    def headline(self) -> str:
        m = self.metrics
        return f"max_abs {m['max_abs']:.3g}, KL {m['max_kl']:.2g}, top1 {m['top1']:.3f}"

    def message(self) -> str:
        """The failure text: what parted, how far against the tolerance, where."""
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"logit parity {verdict}: {self.technique}{f' [{self.variant}]' if self.variant else ''} ({self.dtype}) "
            f"vs reference {self.reference} "
            f"({self.reference_dtype}) on {self.device}, {len(self.rows)} prompts"
        ]
        if self.same_as_reference:
            lines.append(f"  {SAME_AS_REFERENCE}")
        tol = self.tolerance
        lines.append(f"  {'metric':<10} {'measured':>12} {'bound':>14}  verdict")
        m = self.metrics
        for bound, metric in {**_UPPER_BOUNDS, **_LOWER_BOUNDS}.items():
            limit = getattr(tol, bound)
            if limit is None:
                continue
            op = ">=" if bound in _LOWER_BOUNDS else "<="
            ok = _within(m[metric], limit, lower=bound in _LOWER_BOUNDS)
            fmt = ".7g" if metric == "cosine" else ".4g"
            lines.append(
                f"  {metric:<10} {m[metric]:>12{fmt}} {op + ' ' + format(limit, fmt):>14}  {'ok' if ok else 'FAIL'}"
            )
        for failure in self.failures:
            lines.append(f"  - {failure}")
        if self.floor:
            lines.append(
                f"  bounds from the noise floor: reference alone moves max_abs {self.floor['max_abs']:.3g}, "
                f"max_kl {self.floor['max_kl']:.2g} in {self.dtype}"
            )
        if self.localization:
            lines.append(f"  {self.localization}")
        return "\n".join(lines)

    def with_tolerance(self, tolerance: Tolerance) -> LogitParityResult:
        """The same measurement decided under another tolerance."""
        trial = LogitParityResult(**{**self.__dict__, "tolerance": tolerance, "failures": []})
        decide(trial)
        return trial

    def __le__(self, other: object) -> bool:
        """``assert result <= tolerance``: does this measurement stay within ``tolerance``?"""
        if not isinstance(other, Tolerance):
            return NotImplemented
        return self.with_tolerance(other).passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": self.check,
            "variant": self.variant,
            "technique": self.technique,
            "reference": self.reference,
            "device": self.device,
            "dtype": self.dtype,
            "reference_dtype": self.reference_dtype,
            "passed": self.passed,
            "metrics": self.metrics,
            "tolerance": self.tolerance.to_dict(),
            "failures": list(self.failures),
            "nonfinite": [list(p) for p in self.nonfinite[:100]],
            "rows": [asdict(r) for r in self.rows],
            "floor": self.floor,
            "localization": self.localization,
            "same_as_reference": self.same_as_reference,
        }


def _within(value: float, limit: float, *, lower: bool) -> bool:
    if math.isnan(value):
        return False
    return value >= limit if lower else value <= limit


def _where(result: LogitParityResult, metric: str) -> str:
    row = result.worst_row(metric)
    if row is None:
        return ""
    text = f"row {row.row}"
    if result.prompts and row.row < len(result.prompts):
        prompt = result.prompts[row.row]
        text += f" ({prompt[:40] + '...' if len(prompt) > 40 else prompt!r})"
    if metric in ("max_abs", "mean_abs"):
        text += f", position {row.worst_position}"
    return text


def compare_logits(
    reference: torch.Tensor,
    candidate: torch.Tensor,
    mask: torch.Tensor,
    tolerance: Tolerance,
    *,
    technique: str,
    reference_name: str,
    device: str,
    dtype: str,
    reference_dtype: str,
    prompts: Sequence[str] = (),
    scan_padding: bool = True,
) -> LogitParityResult:
    """Compare ``[batch, seq, vocab]`` logits at the positions where ``mask`` is true.

    Padded positions are not compared (their values are undefined by design), but with
    ``scan_padding`` every candidate value, pad positions included, is scanned for NaN/Inf: a NaN
    at a pad position reaches real positions in the next layer (0 x NaN = NaN).
    """
    import torch

    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: reference {tuple(reference.shape)}, candidate {tuple(candidate.shape)}")
    mask = mask.bool().to(reference.device)
    cand_all = candidate.to(reference.device)
    # one scan of every candidate value (pad positions too, unless told not to) for NaN/Inf
    finite = torch.isfinite(cand_all).all(dim=-1) | (~mask if not scan_padding else torch.zeros_like(mask))
    rows: list[RowParity] = []
    nonfinite: list[tuple[int, int, str]] = []
    for b in range(reference.shape[0]):
        idx = mask[b].nonzero().flatten()
        bad = (~finite[b]).nonzero().flatten().tolist()
        nonfinite.extend((b, int(p), "real" if bool(mask[b, p]) else "pad") for p in bad)
        r, c = reference[b, idx].float(), cand_all[b, idx].float()  # [positions, vocab]
        if bad:
            c = torch.nan_to_num(c, nan=0.0, posinf=1e30, neginf=-1e30)  # metrics stay defined; NaN fails above
        per_pos_max, mean_abs, kl, cos = position_metrics(r, c)
        top2 = r.topk(2, dim=-1).values
        margin = top2[:, 0] - top2[:, 1]
        decisive = margin >= tolerance.tie_margin
        agree = r.argmax(-1) == c.argmax(-1)
        n_dec = int(decisive.sum())
        rows.append(
            RowParity(
                row=b,
                positions=int(idx.numel()),
                max_abs=float(per_pos_max.max()) if idx.numel() else 0.0,
                mean_abs=mean_abs if idx.numel() else 0.0,
                max_kl=float(kl.max()) if idx.numel() else 0.0,
                mean_kl=float(kl.mean()) if idx.numel() else 0.0,
                cosine=float(cos.min()) if idx.numel() else 1.0,
                top1=float(agree[decisive].float().mean()) if n_dec else 1.0,
                decisive=n_dec,
                worst_position=int(per_pos_max.argmax()) if idx.numel() else -1,
            )
        )
    result = LogitParityResult(
        technique=technique,
        reference=reference_name,
        device=device,
        dtype=dtype,
        reference_dtype=reference_dtype,
        tolerance=tolerance,
        rows=rows,
        nonfinite=nonfinite,
        prompts=list(prompts),
    )
    decide(result)
    return result


SMALL = 1e-2  # below this |logit difference|, d + expm1(-d) is taken from its series (no float32 cancellation)
LARGE = 20.0  # beyond this, exp(-d) leaves float32's range: the float64 path


def position_metrics(r: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]:
    """Per position of ``[positions, vocab]`` float32 logits: max |difference|, the row's mean |difference|,
    KL(reference || candidate) and cosine similarity; KL and cosine in float64 where it matters, without a float64
    copy of the vocabulary (a real one is 150k wide: the copies and the float64 passes were most of a real-size
    parity run's time).

    With d = r - c (exact: float32 subtraction of nearly equal values is exact) and p = softmax(r):
    KL = sum(p * (d + expm1(-d))) + log1p(B) - B, B = sum(p * expm1(-d)), because log p - log q = d + log sum(p e^-d);
    the first sum has only non-negative terms (d + expm1(-d) = d^2/2 - d^3/6 + ... for small d), so float32
    accumulation keeps its relative precision, and the small correction is formed in float64. Cosine:
    1 - cos = (|d|^2 - (d.(r + c))^2 / (|r| + |c|)^2) / (2 |r| |c|), from d, exact again. Differences beyond
    :data:`LARGE` (a broken kernel, NaN replaced) take the plain float64 path."""
    import torch

    if r.numel() == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=r.device)
        return empty, 0.0, empty, empty
    d = r - c
    ad = d.abs()
    per_pos_max = ad.amax(dim=-1)
    mean_abs = float(ad.sum(dtype=torch.float64)) / ad.numel()
    if float(per_pos_max.max()) > LARGE:
        r64, c64 = r.double(), c.double()
        logp_r, logp_c = torch.log_softmax(r64, dim=-1), torch.log_softmax(c64, dim=-1)
        kl = (logp_r.exp() * (logp_r - logp_c)).sum(dim=-1).clamp_min(0.0)
        return per_pos_max, mean_abs, kl, torch.nn.functional.cosine_similarity(r64, c64, dim=-1)
    p = torch.softmax(r, dim=-1)
    if float(per_pos_max.max()) < SMALL:  # the usual case of a faithful kernel: the series alone
        term = d * d * (0.5 - d / 6)
        s = (p * term).sum(dim=-1).double()
        b = s - (p * d).sum(dim=-1).double()  # expm1(-d) = term - d
    else:
        em = torch.expm1(-d)
        s = (p * torch.where(ad < SMALL, d * d * (0.5 - d / 6), d + em)).sum(dim=-1).double()
        b = (p * em).sum(dim=-1).double()
    kl = (s + (torch.log1p(b) - b)).clamp_min(0.0)
    nr, nc = r.norm(dim=-1).double(), c.norm(dim=-1).double()
    nd2 = (d * d).sum(dim=-1).double()
    along = (d * (r + c)).sum(dim=-1).double()
    denom = (2 * nr * nc).clamp_min(torch.finfo(torch.float64).tiny)
    cos = 1.0 - (nd2 - along * along / (nr + nc).clamp_min(torch.finfo(torch.float64).tiny) ** 2) / denom
    return per_pos_max, mean_abs, kl, cos


def decide(result: LogitParityResult) -> None:
    """Fill ``result.failures`` from its metrics and tolerance."""
    failures: list[str] = []
    if result.nonfinite:
        row, pos, where = result.nonfinite[0]
        rows = sorted({r for r, _, _ in result.nonfinite})
        failures.append(
            f"candidate logits contain NaN/Inf at {len(result.nonfinite)} position(s) in row(s) {rows}; "
            f"first at row {row}, position {pos} ({where} position)"
        )
    m = result.metrics
    tol = result.tolerance
    for bound, metric in _UPPER_BOUNDS.items():
        limit = getattr(tol, bound)
        if limit is not None and not _within(m[metric], limit, lower=False):
            failures.append(f"{metric} {m[metric]:.4g} > {limit:.4g} at {_where(result, metric)}")
    for bound, metric in _LOWER_BOUNDS.items():
        limit = getattr(tol, bound)
        if limit is not None and not _within(m[metric], limit, lower=True):
            failures.append(f"{metric} {m[metric]:.7g} < {limit:.7g} at {_where(result, metric)}")
    result.failures = failures

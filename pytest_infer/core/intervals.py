"""The 95 % interval rule every claim is decided by: Student t quantiles, and pass / fail / inconclusive for a value
known to lie in an interval (speedups over paired rounds, perplexity ratios over text chunks)."""

from __future__ import annotations

# two-sided 95 % Student t quantiles by degrees of freedom (1..30); beyond: normal
_T95 = [
    12.71,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t95(dof: int) -> float:
    return _T95[dof - 1] if 1 <= dof <= len(_T95) else 1.96


def decide(low: float, high: float, threshold: float, op: str) -> str:
    """'pass', 'fail' or 'inconclusive' for a claim ``measured op threshold`` known to lie in [low, high]."""
    if op == ">=":
        return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"
    return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"

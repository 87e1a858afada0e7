"""The run at a glance: speedup against memory ratio per technique, parity pass/fail marked (``--infer-plot``,
or offline from a JSON report: ``pytest-infer plot report.json -o out.png``).

Drawn from the JSON report document (:func:`pytest_infer.report.report_document`), so a plot can be made
again from a stored report on a machine without the run's GPU. matplotlib is optional (the ``plot`` extra)
and is imported only here, only when a plot is written, through its object API and the Agg canvas: no
display, no pyplot global state.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_infer.reports.merge import case_summaries

WIDTH_PX, HEIGHT_PX, DPI = 960, 600, 100
MISSING = (
    "the plot needs matplotlib, which is not installed: pip install 'pytest-infer[plot]' (or pip install matplotlib)"
)
PARITY_STYLE = {  # parity verdict -> (label, colour, marker)
    "pass": ("parity pass", "#1a9850", "o"),
    "fail": ("parity FAIL", "#d73027", "X"),
    None: ("parity not checked in this run", "#888888", "s"),
}


class PlotUnavailable(RuntimeError):
    """matplotlib is missing; the message names the extra to install."""


def missing_dependency() -> str | None:
    """The message to show when matplotlib cannot be imported, else None (without importing it)."""
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    return None if found else MISSING


@dataclass(frozen=True)
class Point:
    """One technique on the plot."""

    technique: str
    device: str
    dtype: str
    speedup: float
    speedup_low: float | None
    speedup_high: float | None
    memory_ratio: float
    memory_metric: str
    parity: str | None  # pass / fail / None (not checked)
    verdict: str  # the speed claims: pass / fail / inconclusive


def plot_points(document: Mapping[str, Any]) -> list[Point]:
    """Every case of the report with a speed result (the perf suite), with its parity verdict."""

    points = []
    for case in case_summaries(document).values():
        speed = case.speed()
        if speed is None or not _number(speed["speedup"]) or not _number(speed["memory_ratio"]):
            continue
        points.append(
            Point(
                technique=case.technique,
                device=case.device,
                dtype=case.dtype,
                speedup=float(speed["speedup"]),
                speedup_low=float(speed["speedup_low"]) if _number(speed["speedup_low"]) else None,
                speedup_high=float(speed["speedup_high"]) if _number(speed["speedup_high"]) else None,
                memory_ratio=float(speed["memory_ratio"]),
                memory_metric=speed["memory_metric"],
                parity=case.parity(),
                verdict=str(speed["verdict"]),
            )
        )
    return points


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def write_plot(document: Mapping[str, Any], path: str | Path) -> str | None:
    """Write the PNG to ``path`` (atomically) and return the path; None when the report holds no speed result
    (nothing to place: run the perf suite). Raises :class:`PlotUnavailable` without matplotlib."""
    problem = missing_dependency()
    if problem:
        raise PlotUnavailable(problem)
    points = plot_points(document)
    if not points:
        return None
    figure = _figure(document, points)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent or ".")
    os.close(fd)
    try:
        figure.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(target)


def session_plot(document: Mapping[str, Any], path: str) -> str:
    """``--infer-plot`` at the end of a session: write the plot, return the line to show in the terminal."""
    try:
        written = write_plot(document, path)
    except PlotUnavailable as exc:
        return f"pytest-infer: --infer-plot {path}: {exc}"
    if written is None:
        return (
            f"pytest-infer: --infer-plot {path}: no speed results in this run (add --infer-suite perf); no plot written"
        )
    return f"pytest-infer: plot of speedup vs memory written to {written}"


def _figure(document: Mapping[str, Any], points: list[Point]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.transforms import ScaledTranslation

    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    xs = [p.memory_ratio for p in points] + [1.0]
    ys = [p.speedup_high or p.speedup for p in points] + [p.speedup_low or p.speedup for p in points] + [1.0]
    ax.set_xlim(*_padded(min(xs), max(xs)))
    ax.set_ylim(*_padded(min(ys), max(ys)))
    several = len({(p.device, p.dtype) for p in points}) > 1
    offsets = _offsets(points, ax.get_xlim(), ax.get_ylim())
    for p, (dodge, stagger) in zip(points, offsets, strict=True):
        _, colour, marker = PARITY_STYLE[p.parity]
        low = p.speedup - p.speedup_low if p.speedup_low is not None else 0.0
        high = p.speedup_high - p.speedup if p.speedup_high is not None else 0.0
        # points at the same place (same memory ratio, say 1.0 for every attention kernel) are moved
        # sideways by a few pixels so each stays visible; their data values are unchanged
        shifted = ax.transData + ScaledTranslation(dodge, 0, figure.dpi_scale_trans)
        ax.errorbar(
            p.memory_ratio,
            p.speedup,
            yerr=[[max(low, 0.0)], [max(high, 0.0)]],
            fmt=marker,
            color=colour,
            markersize=9,
            capsize=3,
            markeredgecolor="black" if p.verdict == "fail" else colour,
            transform=shifted,
        )
        name = f"{p.technique} ({p.dtype}, {p.device})" if several else p.technique
        if p.verdict != "pass":
            name += f" [speed {p.verdict}]"
        ax.annotate(
            name,
            (p.memory_ratio, p.speedup),
            xycoords=shifted,
            xytext=(-7 if dodge < 0 else 7, 4 - 11 * stagger),
            textcoords="offset points",
            horizontalalignment="right" if dodge < 0 else "left",
            fontsize=8,
        )
    ax.axhline(1.0, color="#555555", linestyle="--", linewidth=0.8)
    ax.axvline(1.0, color="#555555", linestyle="--", linewidth=0.8)
    metrics = {p.memory_metric for p in points}
    what = "peak memory" if metrics == {"peak_memory_ratio"} else "weight memory" if len(metrics) == 1 else "memory"
    ax.set_xlabel(f"{what} ratio vs baseline (lower is better)")
    ax.set_ylabel("decode speedup vs baseline, 95 % interval (higher is better)")
    stack = document.get("stack") or {}
    baselines = sorted({str(r.get("baseline")) for r in document.get("results", []) if r.get("check") == "speed"})
    ax.set_title(
        f"{stack.get('device_kind', '?')} {stack.get('device_name', '')}: baseline {', '.join(baselines)}",
        fontsize=10,
    )
    used = {p.parity for p in points}
    handles = [
        Line2D([], [], linestyle="", marker=m, color=c, markersize=8, label=label)
        for parity, (label, c, m) in PARITY_STYLE.items()
        if parity in used
    ]
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.grid(True, linewidth=0.3)
    if any(dodge for dodge, _ in offsets):
        figure.text(0.005, 0.005, "points at the same memory ratio are drawn side by side", fontsize=7, color="#555555")
    figure.tight_layout()
    return figure


def _offsets(points: list[Point], xlim: tuple[float, float], ylim: tuple[float, float]) -> list[tuple[float, int]]:
    """Per point: a sideways shift in inches for points sharing a memory ratio, and how many labels above it
    sit close by (its label goes that many lines lower)."""
    span_x, span_y = xlim[1] - xlim[0], ylim[1] - ylim[0]
    columns: dict[int, int] = {}
    placed: list[tuple[float, float, bool]] = []
    out = []
    for p in points:
        column = round(p.memory_ratio / span_x * 100)  # same column: within 1 % of the axis
        k = columns.get(column, 0)
        columns[column] = k + 1
        dodge = 0.22 * ((k + 1) // 2) * (1 if k % 2 else -1)
        fy = p.speedup / span_y
        side = dodge < 0
        stagger = sum(
            1 for x, y, s in placed if s == side and abs(x - p.memory_ratio) / span_x < 0.15 and abs(y - fy) < 0.04
        )
        placed.append((p.memory_ratio, fy, side))
        out.append((dodge, stagger))
    return out


def _padded(low: float, high: float) -> tuple[float, float]:
    """The axis range around [low, high]: at least 0.2 wide, with room for the labels."""
    middle, span = (low + high) / 2, max(high - low, 0.2)
    return middle - 0.62 * span, middle + 0.68 * span

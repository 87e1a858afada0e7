"""The technique x check matrix as Markdown (``--infer-markdown``, ``$GITHUB_STEP_SUMMARY``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pytest_infer.reports.terminal import summary_lines


def markdown_table(results: Iterable[Mapping[str, Any]], stack_line: str = "") -> str:
    """The same matrix as the terminal summary, as a Markdown table (for CI job summaries)."""
    lines = summary_lines(list(results))
    if not lines:
        return ""
    header = lines[0].split()
    out = []
    if stack_line:
        out += [f"**{stack_line}**", ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for line in lines[1:]:
        cells = [c.strip() for c in _split_cells(line, lines[0])]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _split_cells(line: str, header: str) -> list[str]:
    """Cut a fixed-width matrix line at the header's column starts."""
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    return [line[s:e] for s, e in zip(starts, bounds, strict=True)]

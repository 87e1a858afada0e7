"""``python -m pytest_infer`` / ``pytest-infer``: helpers around the plugin.

pytest-infer options      print the configuration reference (Markdown) from the real option table
pytest-infer techniques   print the technique catalogue and, for this machine, runnable or why not
pytest-infer merge        merge the JSON reports of several stacks into one stack x technique matrix
pytest-infer plot         plot speedup vs memory ratio per technique from a JSON report (needs matplotlib)

Exit codes: 0 done, 1 nothing to plot, 2 a report cannot be used (unreadable, not JSON, another schema
version) or matplotlib is missing.
"""

from __future__ import annotations

import argparse
import sys

from pytest_infer.core.detect import detect_stack
from pytest_infer.core.paths import collision
from pytest_infer.options import OPTIONS
from pytest_infer.reports.document import write_atomically
from pytest_infer.reports.merge import ReportError, load_reports, merge_reports, merged_markdown
from pytest_infer.reports.plot import PlotUnavailable, write_plot
from pytest_infer.reports.terminal import catalogue_lines
from pytest_infer.techniques import builtin_techniques

SHOWN_DEFAULTS = {"model": "embedded tiny model", "cache_dir": "`~/.cache/pytest-infer`", "prompts": "bundled prompts"}


def options_markdown() -> str:

    lines = [
        "| command line | ini (`[tool.pytest.ini_options]`) | default | what it does |",
        "|---|---|---|---|",
    ]
    for o in OPTIONS:
        default = SHOWN_DEFAULTS.get(o.name, o.default)
        if isinstance(default, list):
            default = ",".join(default) if default else "(none)"
        elif isinstance(default, bool):
            default = str(default).lower()
        lines.append(
            f"| `{o.flag}` | `{o.ini}` | {default if o.name in SHOWN_DEFAULTS else f'`{default}`'} | {o.help} |"
        )
    return "\n".join(lines) + "\n"


def techniques_table() -> str:
    """The built-in catalogue for this machine (``--infer-list`` inside pytest adds the conftest's techniques)."""

    stack = detect_stack("auto")
    rows = [f"built-in techniques on {stack.header_line().removeprefix('infer stack: ')} (float32):"]
    rows += catalogue_lines(builtin_techniques(), stack, "float32")
    return "\n".join(rows) + "\n"


def merge_command(reports: list[str], markdown: str | None, json_path: str | None) -> int:
    """``pytest-infer merge``: the stack x technique matrix of ``reports`` to Markdown and/or JSON (stdout:
    the Markdown when neither file is asked for)."""
    from pathlib import Path

    clash = collision([("--markdown", markdown or ""), ("--json", json_path or "")], [("input", r) for r in reports])
    if clash is not None:
        sys.stderr.write(f"pytest-infer merge: {clash}\n")
        return 2
    try:
        merged = merge_reports(load_reports(reports))
    except ReportError as exc:
        sys.stderr.write(f"pytest-infer merge: {exc}\n")
        return 2
    text = merged_markdown(merged)
    outputs = (
        (markdown, lambda path: Path(path).write_text(text, encoding="utf-8")),
        (json_path, lambda path: write_atomically(path, merged)),
    )
    for target, write in outputs:
        if not target:
            continue
        try:
            write(target)
        except OSError as exc:
            sys.stderr.write(f"pytest-infer merge: cannot write {target}: {exc.strerror or exc}\n")
            return 2
    if not (markdown or json_path):
        sys.stdout.write(text)
    return 0


def plot_command(report: str, output: str | None) -> int:
    """``pytest-infer plot``: the plot of a stored report, written to ``output`` (default: beside it, .png)."""
    from pathlib import Path

    target = output or str(Path(report).with_suffix(".png"))
    clash = collision([("--output", target)], [("input", report)])
    if clash is not None:
        sys.stderr.write(f"pytest-infer plot: {clash}\n")
        return 2
    try:
        ((_, document),) = load_reports([report])
        written = write_plot(document, target)
    except (ReportError, PlotUnavailable) as exc:
        sys.stderr.write(f"pytest-infer plot: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"pytest-infer plot: cannot write {target}: {exc.strerror or exc}\n")
        return 2
    if written is None:
        sys.stderr.write(
            f"pytest-infer plot: {report} has no speed results to plot; run the perf suite (--infer-suite perf)\n"
        )
        return 1
    sys.stdout.write(f"{written}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytest-infer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    opts = sub.add_parser("options", help="print the configuration reference as Markdown")
    opts.add_argument("--update", metavar="FILE", help="rewrite the table between the options markers of FILE")
    sub.add_parser("techniques", help="print the built-in technique catalogue for this machine")
    merge = sub.add_parser("merge", help="merge JSON reports of several stacks into one stack x technique matrix")
    merge.add_argument("reports", nargs="+", metavar="REPORT.json", help="reports written by --infer-report")
    merge.add_argument("--markdown", metavar="FILE", help="write the matrix as Markdown")
    merge.add_argument("--json", dest="json_path", metavar="FILE", help="write the matrix as JSON")
    plot = sub.add_parser("plot", help="plot speedup vs memory ratio per technique from a JSON report")
    plot.add_argument("report", metavar="REPORT.json", help="a report written by --infer-report")
    plot.add_argument("-o", "--output", metavar="FILE.png", help="where to write the PNG (default: REPORT.png)")
    args = parser.parse_args(argv)
    if args.command == "merge":
        return merge_command(args.reports, args.markdown, args.json_path)
    if args.command == "plot":
        return plot_command(args.report, args.output)
    if args.command == "options" and args.update:
        from pathlib import Path

        path = Path(args.update)
        text = path.read_text()
        start, end = "<!-- options:start -->\n", "<!-- options:end -->"
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        path.write_text(head + start + options_markdown() + end + tail)
    elif args.command == "options":
        sys.stdout.write(options_markdown())
    elif args.command == "techniques":
        sys.stdout.write(techniques_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

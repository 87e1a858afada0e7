"""``python -m pytest_infer`` / ``pytest-infer``: helpers around the plugin, with pytest-benchmark's habits
(``pytest-benchmark list``, ``help``; docs/cli.md).

pytest-infer list         list the pytest-benchmark runs stored per stack (--newest: what --infer-compare-fail uses)
pytest-infer options      print the configuration reference (Markdown) from the real option table
pytest-infer techniques   print the technique catalogue and, for this machine, runnable or why not
pytest-infer merge        merge the JSON reports of several stacks into one stack x technique matrix
pytest-infer plot         plot speedup vs memory ratio per technique from a JSON report (needs matplotlib)
pytest-infer compare      what changed between two runs (reports or folders of them): failures, speed, memory
pytest-infer help [CMD]   print the help of the tool or of one command

Exit codes: 0 done; 1 a regression was found (the commands that compare); 2 usage error or unusable input (an
unknown command or option, a report that cannot be read or is not JSON or of another schema version, a storage
that is not a folder, a report with nothing to plot, matplotlib missing, a file that cannot be written).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys

from pytest_infer.core.detect import detect_stack
from pytest_infer.core.version import __version__
from pytest_infer.options import OPTIONS
from pytest_infer.perf.stored import DEFAULT_STORAGE, StorageError, stored_runs
from pytest_infer.reports.compare import compare_reports, comparison_markdown, load_side, parse_threshold
from pytest_infer.reports.document import write_atomically
from pytest_infer.reports.merge import ReportError, load_reports, merge_reports, merged_markdown
from pytest_infer.reports.plot import PlotUnavailable, write_plot
from pytest_infer.reports.terminal import catalogue_lines
from pytest_infer.techniques import builtin_techniques

EXIT_OK, EXIT_REGRESSION, EXIT_USAGE = 0, 1, 2  # the same for every command (docs/cli.md)
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
        return EXIT_USAGE
    sys.stdout.write(f"{written}\n")
    return 0


def list_command(storage: str, stack: str | None, newest: bool) -> int:
    """``pytest-infer list``: the stored pytest-benchmark runs, one path a line, by stack then run number (as
    ``pytest-benchmark list``; it does not look into pytest-infer's ``.benchmarks/<stack key>/`` folders)."""
    try:
        runs = stored_runs(storage)
    except StorageError as exc:
        sys.stderr.write(f"pytest-infer list: {exc}\n")
        return EXIT_USAGE
    for warning in runs.warnings:
        sys.stderr.write(f"pytest-infer list: {warning}\n")
    chosen = [r for r in runs.runs if stack is None or fnmatch.fnmatchcase(r.stack, stack)]
    if newest:
        chosen = list({r.stack: r for r in chosen}.values())  # runs are sorted: the last of each stack
    for run in chosen:
        sys.stdout.write(f"{run.path}\n")
    if not chosen:
        which = f" of stack {stack}" if stack else ""
        sys.stderr.write(
            f"pytest-infer list: no stored runs{which} in {runs.root} (store one: pytest --benchmark-autosave)\n"
        )
    return EXIT_OK


def compare_command(old: str, new: str, threshold: str, markdown: str | None, json_path: str | None) -> int:
    """``pytest-infer compare``: exit 1 when something regressed, 2 when the input cannot be used."""
    from pathlib import Path

    try:
        fraction = parse_threshold(threshold)
        (old_docs, old_skipped), (new_docs, new_skipped) = load_side(old), load_side(new)
        comparison = compare_reports(old_docs, new_docs, fraction)
    except (ReportError, ValueError) as exc:
        sys.stderr.write(f"pytest-infer compare: {exc}\n")
        return EXIT_USAGE
    for skipped in (*old_skipped, *new_skipped):
        sys.stderr.write(f"pytest-infer compare: left out {skipped}\n")
    text = comparison_markdown(comparison)
    outputs = (
        (markdown, lambda path: Path(path).write_text(text, encoding="utf-8")),
        (json_path, lambda path: write_atomically(path, comparison.to_dict())),
    )
    for target, write in outputs:
        if target:
            try:
                write(target)
            except OSError as exc:
                sys.stderr.write(f"pytest-infer compare: cannot write {target}: {exc.strerror or exc}\n")
                return EXIT_USAGE
    if not (markdown or json_path):
        sys.stdout.write(text)
    n = len(comparison.regressions)
    sys.stderr.write(
        f"pytest-infer compare: {n} regression{'s' * (n != 1)}\n" if n else "pytest-infer compare: no regression\n"
    )
    return EXIT_REGRESSION if n else EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-infer",
        description="Helpers around the pytest-infer plugin: stored runs, options, techniques, reports (docs/cli.md).",
        epilog="exit codes: 0 done; 1 a regression was found; 2 usage error or unusable input",
    )
    parser.add_argument("--version", action="version", version=f"pytest-infer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stored = sub.add_parser("list", help="list the pytest-benchmark runs stored per stack")
    stored.add_argument(
        "-s",
        "--storage",
        default=DEFAULT_STORAGE,
        metavar="URI",
        help=f"pytest-benchmark's storage, a folder or file://PATH (default: {DEFAULT_STORAGE})",
    )
    stored.add_argument("--stack", metavar="KEY", help="only the runs of this stack key (a glob: 'cuda-*')")
    stored.add_argument(
        "--newest",
        action="store_true",
        help="only the newest run of each stack: what --infer-compare-fail compares with",
    )
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
    compare = sub.add_parser("compare", help="what changed between two runs: failures, speed, memory, every metric")
    compare.add_argument("old", metavar="OLD", help="a JSON report (--infer-report) or a folder of them")
    compare.add_argument("new", metavar="NEW", help="the same for the run to judge")
    compare.add_argument(
        "--threshold", default="5%", metavar="PCT", help="speed or memory change counted as a regression (default 5%%)"
    )
    compare.add_argument("--markdown", metavar="FILE", help="write the comparison as Markdown (a CI job summary)")
    compare.add_argument("--json", dest="json_path", metavar="FILE", help="write the comparison as JSON")
    helper = sub.add_parser("help", help="print the help of the tool, or of one command")
    helper.add_argument("topic", nargs="?", metavar="COMMAND", help="a command")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0), a usage error (2, after printing it)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "help":
        if args.topic in (None, "help"):
            sys.stdout.write(parser.format_help())
            return EXIT_OK
        return main([args.topic, "--help"])  # as pytest-benchmark's `help COMMAND`; an unknown one is a usage error
    if args.command == "list":
        return list_command(args.storage, args.stack, args.newest)
    if args.command == "merge":
        return merge_command(args.reports, args.markdown, args.json_path)
    if args.command == "plot":
        return plot_command(args.report, args.output)
    if args.command == "compare":
        return compare_command(args.old, args.new, args.threshold, args.markdown, args.json_path)
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
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

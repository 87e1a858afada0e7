"""``python -m pytest_infer`` / ``pytest-infer``: helpers around the plugin.

pytest-infer options      print the configuration reference (Markdown) from the real option table
pytest-infer techniques   print the technique catalogue and, for this machine, runnable or why not
"""

from __future__ import annotations

import argparse
import sys

SHOWN_DEFAULTS = {"model": "embedded tiny model", "cache_dir": "`~/.cache/pytest-infer`", "prompts": "bundled prompts"}


def options_markdown() -> str:
    from pytest_infer.config import OPTIONS

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
    from pytest_infer.report import catalogue_lines
    from pytest_infer.stack import detect_stack
    from pytest_infer.techniques import builtin_techniques

    stack = detect_stack("auto")
    rows = [f"built-in techniques on {stack.header_line().removeprefix('infer stack: ')} (float32):"]
    rows += catalogue_lines(builtin_techniques(), stack, "float32")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pytest-infer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    opts = sub.add_parser("options", help="print the configuration reference as Markdown")
    opts.add_argument("--update", metavar="FILE", help="rewrite the table between the options markers of FILE")
    sub.add_parser("techniques", help="print the built-in technique catalogue for this machine")
    args = parser.parse_args(argv)
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

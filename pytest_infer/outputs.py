"""What a session writes and the rules it writes by: the JSON report, the Markdown matrix, the plot, the job summary
(``$GITHUB_STEP_SUMMARY``).

- **No clobbering** (:func:`check_outputs`, at start-up): no output may be the same file as another output
  (pytest-benchmark's ``--benchmark-json`` and pytest's ``--junitxml`` included) or as an input (the prompt
  file, a file of the model directory, a stored pytest-benchmark run): a usage error naming both.
- **One output's failure is not the others'** (:class:`Outputs`): an output that cannot be written at the end
  (a bad ``$GITHUB_STEP_SUMMARY``, a folder put where the report goes, a full disk) is a warning line naming
  it and why; every other output is still written.
- **An interrupted run never replaces a good report**: after Ctrl-C or SIGTERM, an output whose path already
  holds a file (an earlier run's) is written beside it, ``report.partial.json``, and the terminal says so;
  where there was none, the output is written in place and the JSON report says ``"interrupted": true``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_infer.core.config import InferConfig
from pytest_infer.core.errors import ConfigError
from pytest_infer.core.paths import collision, partial_path
from pytest_infer.core.redact import mask
from pytest_infer.reports.document import write_atomically
from pytest_infer.reports.plot import session_plot

STEP_SUMMARY = "GITHUB_STEP_SUMMARY"


def _option(config: pytest.Config, name: str) -> str:
    value = getattr(config.option, name, None)
    return "" if value is None or not isinstance(value, (str, os.PathLike)) else str(value)


def check_outputs(cfg: InferConfig, config: pytest.Config) -> None:
    """A :class:`ConfigError` when an output would overwrite another output or an input."""
    outputs = [
        ("--infer-report", cfg.report),
        ("--infer-markdown", cfg.markdown),
        ("--infer-plot", cfg.plot),
        ("--benchmark-json", _option(config, "benchmark_json")),
        ("--junitxml", _option(config, "xmlpath")),
        (f"${STEP_SUMMARY}", os.environ.get(STEP_SUMMARY, "")),
    ]
    inputs = [("--infer-prompts", cfg.prompts)]
    folders = [("--infer-model", cfg.model if Path(cfg.model).is_dir() else ""), ("--infer-golden", cfg.golden)]
    if config.pluginmanager.hasplugin("benchmark"):
        storage = _option(config, "benchmark_storage") or ".benchmarks"
        folders.append(("pytest-benchmark's storage", storage.removeprefix("file://")))
    problem = collision(outputs, inputs, folders)
    if problem is not None:
        raise ConfigError(problem)


class Outputs:
    """Writes the session's outputs at its end; ``say`` shows a line in the terminal."""

    def __init__(self, cfg: InferConfig, say: Callable[[str], None], interrupted: bool) -> None:
        self.cfg = cfg
        self.say = say
        self.interrupted = interrupted

    def _target(self, name: str, path: str) -> str:
        """Where ``path`` is written: beside an earlier run's file when this run was interrupted."""
        if not self.interrupted or not Path(path).exists():
            return path
        partial = partial_path(path)
        self.say(
            f"pytest-infer: the run was interrupted: {name} of the tests that finished written to {partial}; "
            f"{path}, from an earlier run, is kept"
        )
        return partial

    def _attempt(self, name: str, path: str, write: Callable[[], Any]) -> None:
        try:
            write()
        except OSError as exc:
            self.say(
                f"pytest-infer: WARNING: {name} {path} not written: {exc.strerror or exc}; the other outputs were "
                "written"
            )

    def write(self, document: Callable[[], Mapping[str, Any]], markdown: Callable[[], str], has_results: bool) -> None:
        cfg = self.cfg
        text = mask(markdown()) if cfg.markdown or (has_results and os.environ.get(STEP_SUMMARY)) else ""
        if self.interrupted and text:
            text += "\n_The run was interrupted: these are the results of the tests that finished._\n"
        if cfg.markdown:
            target = self._target("--infer-markdown", cfg.markdown)
            self._attempt("--infer-markdown", target, lambda: _write_text(target, text + "\n"))
        summary = os.environ.get(STEP_SUMMARY, "")
        if summary and has_results:
            self._attempt(f"${STEP_SUMMARY}", summary, lambda: _append(summary, text + "\n"))
        if not (cfg.report or cfg.plot):
            return
        doc = document()
        if cfg.report:
            target = self._target("--infer-report", cfg.report)
            self._attempt("--infer-report", target, lambda: write_atomically(target, doc))
        if cfg.plot:
            target = self._target("--infer-plot", cfg.plot)
            self._attempt("--infer-plot", target, lambda: self.say(session_plot(doc, target)))


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)

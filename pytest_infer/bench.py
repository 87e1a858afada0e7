"""pytest-benchmark glue: machine info with the full stack, baselines stored per stack, the stored run our
regression gate (``--infer-compare-fail``, :mod:`pytest_infer.perf.gate`) compares with (``--benchmark-compare``'s,
or by itself the newest of this stack), and the terminal section of every perf figure.

:class:`BenchmarkHooks` is registered only when pytest-benchmark is loaded
(``config.pluginmanager.hasplugin("benchmark")``).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_infer.reports.terminal import perf_summary_lines
from pytest_infer.session import InferSession


class BenchmarkHooks:
    """pytest-benchmark hook implementations, bound to the infer session."""

    def __init__(self, session: InferSession) -> None:
        self.session = session
        self._stored: dict[str, dict[str, Any]] | None = None
        self.stored_source = ""

    def pytest_benchmark_update_machine_info(self, config: pytest.Config, machine_info: dict[str, Any]) -> None:
        stack = self.session.stack
        machine_info["infer_stack"] = stack.to_dict()
        machine_info["infer_stack_key"] = stack.key()

    def pytest_benchmark_compare_machine_info(
        self,
        config: pytest.Config,
        benchmarksession: Any,
        machine_info: dict[str, Any],
        compared_benchmark: dict[str, Any],
    ) -> None:
        theirs = compared_benchmark.get("machine_info", {}).get("infer_stack_key")
        ours = machine_info.get("infer_stack_key")
        if theirs != ours:
            message = (
                f"pytest-infer: the stored benchmark was measured on stack {theirs or 'unknown'}, this run is on "
                f"{ours}: timings are not comparable (store baselines per stack: see docs/performance.md)"
            )
            self.session.stack_mismatch = message
            benchmarksession.logger.warning(message)

    # --- our regression gate ---------------------------------------------------------------------
    def stored_metrics(self, fullname: str) -> dict[str, float] | None:
        if self._stored is None:
            self._stored = self._load()
        entry = self._stored.get(fullname)
        return entry

    def _load(self) -> dict[str, dict[str, Any]]:
        """The stored run to compare with: the one ``--benchmark-compare`` names (its newest match; no value: the
        newest stored run), else, by itself, the newest stored run of this stack (the storage is per stack unless
        ``--benchmark-storage`` is given, and a run of another stack is never taken)."""
        config = self.session.pytest_config
        compare = config.getoption("benchmark_compare", None)
        bs = getattr(config, "_benchmarksession", None)
        if bs is None:
            return {}
        try:
            if not compare:  # not given: pytest-benchmark's default is []
                found = self._newest_of_this_stack(bs.storage)
            else:
                files = list(bs.storage.query(compare)) if compare is not True else list(bs.storage.query())[-1:]
                found = next(iter(bs.storage.load(files[-1]))) if files else None
        except Exception as exc:  # an unreadable storage: nothing to compare with, and the notes say why
            self.stored_source = f"(no stored baseline: {exc})"
            return {}
        if found is None:
            where = f" matching {compare!r}" if compare else f" of stack {self.session.stack.key()}"
            self.stored_source = f"(no stored run{where} in {bs.storage}; store one with --benchmark-autosave)"
            return {}
        path, data = found
        self.stored_source = str(path) + ("" if compare else " (the newest stored run of this stack)")
        out: dict[str, dict[str, Any]] = {}
        for b in data.get("benchmarks", []):
            metrics = (b.get("extra_info") or {}).get("infer_metrics")
            if isinstance(metrics, dict):
                out[b["fullname"]] = metrics
        return out

    def _newest_of_this_stack(self, storage: Any) -> tuple[Any, dict[str, Any]] | None:
        key = self.session.stack.key()
        for file in reversed(list(storage.query("[0-9][0-9][0-9][0-9]_"))):  # the runs pytest-benchmark saved
            for path, data in storage.load(file):
                if (data.get("machine_info") or {}).get("infer_stack_key") == key:
                    return path, data
        return None


def stack_storage(session: InferSession, config: pytest.Config) -> None:
    """Keep stored baselines of different stacks apart: .benchmarks/<stack key>/... (unless the user chose)."""
    option = getattr(config.option, "benchmark_storage", None)
    if option in (None, "file://./.benchmarks"):
        config.option.benchmark_storage = f"file://./.benchmarks/{session.stack.key()}"


class PerfSummary:
    """The ``pytest-infer: performance`` section of the terminal summary: every figure of every perf result (on an
    xdist controller too, which runs no perf check itself but receives the results)."""

    def __init__(self, session: InferSession) -> None:
        self.session = session

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines = perf_summary_lines(self.session.results)
        if lines:
            terminalreporter.section("pytest-infer: performance")
            for line in lines:
                terminalreporter.write_line(line)
            stored = self.session.stored_runs
            if stored is not None and stored.stored_source and self.session.config.compare_fail:
                rules = self.session.config.compare_fail
                terminalreporter.write_line(f"regression gate --infer-compare-fail={rules}: vs {stored.stored_source}")

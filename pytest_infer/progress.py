"""Which technique is loading, compiling or being benchmarked, when that step takes long.

A step that runs past ``--infer-progress`` seconds (default 3) gets a line of its own, indented under
the test file's progress line, the way pytest prints its own ``collecting ...``::

    suites/test_parity.py ......
      infer: compiling sdpa+static+compile (float32, cpu), first call ... done in 14.5 s
    suites/test_parity.py ....                                              [ 45%]

On a terminal the line counts the seconds while the step runs; in a CI log it is written once when
the threshold passes and completed when the step ends, so a hung step shows what it was doing.
Nothing is written under ``-q``, with ``--infer-progress 0``, on xdist workers (their controller owns
the terminal) or without pytest's terminal reporter.

The step runs in the main thread inside the test, where pytest captures fd 1; the line is written by
a timer thread to a duplicate of the terminal's file descriptor taken at session start (while capture
is suspended), so the test's captured output is never toggled from another thread. The reporter is
then told that its line was broken (``currentfspath``), and writes the file name again before the
next result letter.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

_INDENT = "  infer: "


@dataclass
class _Step:
    text: str
    start: float = field(default_factory=time.monotonic)
    announced: bool = False

    def line(self, now: float, done: bool = False) -> str:
        elapsed = now - self.start
        return f"{_INDENT}{self.text} ... " + (f"done in {elapsed:.1f} s" if done else f"{elapsed:.0f} s")


class Progress:
    """``with progress.step("loading X"):`` -- silent unless the step outlasts ``after`` seconds."""

    def __init__(
        self, after: float, reporter: Any = None, writer: Any = None, fd: int | None = None, tty: bool = False
    ) -> None:
        self.after = after
        self.enabled = after > 0 and reporter is not None and fd is not None
        self._reporter = reporter
        self._writer = writer  # pytest's TerminalWriter: where the reporter's current line stands
        self._fd = fd
        self._tty = tty
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._steps: list[_Step] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._on_our_line = False  # the terminal's current line is one of ours
        self._owed_prefix = False  # the reporter must write the file name before the next letter
        self._width = 0

    @classmethod
    def for_config(cls, config: pytest.Config, after: float) -> Progress:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        worker = hasattr(config, "workerinput")
        if after <= 0 or reporter is None or worker or config.get_verbosity() < 0:
            return cls(0)
        try:
            stream = sys.stdout
            fd = os.dup(stream.fileno())
            tty = stream.isatty() and os.environ.get("TERM") != "dumb"
        except (AttributeError, OSError, ValueError):  # an in-process run whose stdout has no descriptor
            return cls(0)
        return cls(after, reporter, config.get_terminal_writer(), fd, tty)

    # --- the API the checks use -----------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        step = _Step(text)
        with self._lock:
            self._steps.append(step)
            self._ensure_thread()
            self._wake.notify()
        try:
            yield
        finally:
            with self._lock:
                self._steps.remove(step)
                if step.announced:
                    self._finish(step)
                self._wake.notify()

    # --- pytest hooks (registered by the plugin) --------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Before the terminal writes this result's letter on a line of ours: the file name first."""
        with self._lock:
            if not self._owed_prefix or self._reporter.verbosity > 0:
                return
            config = self._reporter.config
            status = config.hook.pytest_report_teststatus(report=report, config=config)
            if not status[1]:
                return  # no letter for this report (a passed setup or teardown)
            self._owed_prefix = self._on_our_line = False
            self._reporter.write_fspath_result(report.nodeid, "")

    def pytest_runtest_logstart(self) -> None:
        with self._lock:  # the terminal starts a new line of its own for this test (or continues one)
            self._owed_prefix = self._on_our_line = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self.enabled = False

    # --- internals (called with the lock held) ----------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="pytest-infer-progress", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        with self._lock:
            while not self._closed:
                timeout: float | None = None
                if self._steps:
                    top, now = self._steps[-1], time.monotonic()
                    if not top.announced and now - top.start >= self.after:
                        self._announce(top, now)
                    elif top.announced and self._tty:
                        self._write("\r" + self._pad(top.line(now)))
                    due = self.after - (now - top.start)
                    timeout = 1.0 if top.announced or due <= 0 else due
                    if top.announced and not self._tty:
                        timeout = None  # written once; woken when the step ends or another begins
                self._wake.wait(timeout)

    def _announce(self, step: _Step, now: float) -> None:
        newline = self._on_our_line or self._writer.width_of_current_line > 0
        line = step.line(now) if self._tty else f"{_INDENT}{step.text} ..."
        self._width = len(line)
        self._write(("\n" if newline else "") + line)
        step.announced = True
        self._on_our_line = True
        # the reporter's line is broken: verbose mode writes its prefix again by itself
        self._reporter.currentfspath = None

    def _finish(self, step: _Step) -> None:
        final = step.line(time.monotonic(), done=True)
        if self._tty:
            self._write("\r" + self._pad(final))
        else:
            self._write(final[len(f"{_INDENT}{step.text} ...") :])
        self._owed_prefix = True

    def _pad(self, line: str) -> str:
        padded = line.ljust(self._width)
        self._width = len(line)
        return padded

    def _write(self, text: str) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, text.encode("utf-8", "replace"))

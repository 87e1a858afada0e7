"""A failing technique never takes the session down.

- **Crashes** (a segfault in a native kernel, an abort): ``--infer-isolate`` runs the tests in a pytest-xdist
  worker (``-n 1`` is added when no ``-n`` is given, and worker restarts are not capped). When a worker dies,
  xdist fails the test it was running ("worker 'gw0' crashed while running ...") and starts a new worker for
  the rest; the results of the finished tests already reached the controller's reports
  (:mod:`pytest_infer.xdist_results`). Cost: one worker interpreter importing torch and Transformers again
  (not yet timed; docs/reliability.md).
- **Hangs**: ``--infer-timeout SECONDS`` fails a test that runs longer, with the timeout and the stack of where
  it was (``SIGALRM`` in the main thread, as pytest-timeout's signal method); a hang inside native code that never
  returns to Python is caught under ``--infer-isolate`` by ``faulthandler``, which dumps every thread's stack
  and ends the worker ``GRACE_S`` seconds later. A process has one ``SIGALRM`` timer: where pytest-timeout times
  a test (``--timeout``, its ini key or ``PYTEST_TIMEOUT``, or a ``timeout`` marker), ``--infer-timeout`` defers to
  it for that test and the header says so (:func:`pytest_timeout_seconds`).
- **State** between tests: what a test changed of the process-wide state (:mod:`pytest_infer.runtime.state`: patched
  torch/Transformers functions, thread counts, environment variables, global flags, dynamo config, registered
  attention functions outside the selected techniques) is restored, and the test that changed it fails with
  what it changed; the RNGs are seeded per test (``SEED``).
- **Explained failures** (:class:`~pytest_infer.core.errors.ExplainedFailure`: a model that does not load, a
  kernel that never ran) fail their test with the message alone, wherever they are raised (a check, a fixture,
  a test body calling ``infer_model_loader``): the frames would be library internals.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Generator
from types import FrameType
from typing import Any

import pytest

from pytest_infer.core.errors import ExplainedFailure
from pytest_infer.core.redact import mask
from pytest_infer.runtime import state

SEED = 0
GRACE_S = 30


def isolate_args(args: list[str]) -> list[str]:
    """The command-line arguments ``--infer-isolate`` adds (none when ``-n``/``--numprocesses`` is given)."""
    given = any(a in ("-n", "--numprocesses") or a.startswith(("-n", "--numprocesses=")) for a in args)
    extra = [] if given else ["-n", "1"]
    if not any(a.startswith("--max-worker-restart") for a in args):
        extra.append("--max-worker-restart=1000")
    return extra


def wants_isolation(args: list[str], inifile_value: str | None) -> bool:
    if any(a == "--infer-isolate" or a.startswith("--infer-isolate=") for a in args):
        return True
    return (inifile_value or "").strip().lower() in ("1", "true", "yes", "on")


class _Timeout(Exception):
    pass


class ExplainedFailures:
    """An :class:`ExplainedFailure` raised in a test or a fixture fails it with its message, no traceback; and
    in an active session (``-p pytest_infer`` or an ``--infer-*`` option), no failure shows a secret
    (:func:`~pytest_infer.core.redact.mask` over its text and captured output)."""

    def __init__(self, mask_secrets: bool = True) -> None:
        self.mask_secrets = mask_secrets

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Generator[None, Any, Any]:
        report = yield
        if not self.mask_secrets:
            return report
        if report.failed and report.longrepr is not None:
            text = str(report.longrepr)
            if mask(text) != text:
                report.longrepr = mask(text)
        if report.failed:
            report.sections = [(title, mask(content)) for title, content in report.sections]
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        try:
            return (yield)
        except ExplainedFailure as exc:
            raise pytest.fail.Exception(mask(str(exc)), pytrace=False) from None

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
        try:
            return (yield)
        except ExplainedFailure as exc:
            raise pytest.fail.Exception(mask(str(exc)), pytrace=False) from None


class TerminationAsInterrupt:
    """SIGTERM (what CI runners send when a job is cancelled, and ``timeout``/``kill`` by default) handled like
    Ctrl-C: pytest stops after raising KeyboardInterrupt where the test was, and the session still finishes:
    the results of the finished tests are written (:mod:`pytest_infer.outputs`). Installed only in the main
    thread and where SIGTERM still has its default action (a handler someone else installed is left alone); a
    second SIGTERM ends the process at once."""

    def __init__(self) -> None:
        self.installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, self._interrupt)
        self.installed = True

    @staticmethod
    def _interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt("SIGTERM: pytest-infer stops like on Ctrl-C and writes what finished")

    def pytest_unconfigure(self) -> None:
        if self.installed and signal.getsignal(signal.SIGTERM) == self._interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.installed = False


class NoBenchmark:
    """Registered where pytest-benchmark is not loaded (``-p no:benchmark``): the perf suite's ``benchmark``
    argument is then None, and the checks measure without it and note that nothing is stored or compared."""

    @pytest.fixture
    def benchmark(self) -> None:
        return None


def pytest_timeout_seconds(config: pytest.Config, item: pytest.Item | None = None) -> float:
    """The seconds pytest-timeout times ``item`` with (its marker, else its session-wide setting; without ``item``
    the session-wide one); 0 where it does not time it, or is not loaded."""
    plugin = config.pluginmanager.getplugin("timeout")
    if plugin is None:
        return 0.0
    timeout: Any = getattr(config, "_env_timeout", None)  # what pytest-timeout's configure resolved
    settings = getattr(plugin, "_get_item_settings", None)
    if item is not None and settings is not None:
        try:
            timeout = settings(item).timeout
        except Exception:  # a malformed timeout marker: pytest-timeout reports it in its own hook
            timeout = None
    try:
        return max(float(timeout or 0), 0.0)
    except (TypeError, ValueError):
        return 0.0


class Guards:
    """Per-test timeout and state restoration, for tests that use pytest-infer's fixtures.

    State (:mod:`pytest_infer.runtime.state`): what a test changed of the process-wide state is put back after it, and
    a test that passed fails with what it changed (a test that failed gets it as a report section); the
    session's models and reference tensors are then dropped (``on_leak``): they were made under that state."""

    def __init__(
        self,
        timeout_s: int,
        isolated: bool,
        allowed_attention: frozenset[str],
        on_leak: Callable[[], None] = lambda: None,
    ) -> None:
        self.timeout_s = timeout_s
        self.isolated = isolated
        self.allowed_attention = allowed_attention
        self.on_leak = on_leak

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        """One line when pytest-timeout times the tests too: which timer a test gets."""
        theirs = pytest_timeout_seconds(config)
        if self.timeout_s <= 0 or theirs <= 0:
            return []
        method = getattr(config, "_env_timeout_method", "signal")
        return [
            f"infer timeout: pytest-timeout times the tests ({theirs:g} s, method {method}); --infer-timeout "
            f"{self.timeout_s} s only those it does not time (@pytest.mark.timeout(0))"
        ]

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        if not _is_infer_item(item):
            return (yield)
        before = state.snapshot()
        _seed()
        alarm = (
            self.timeout_s > 0
            and threading.current_thread() is threading.main_thread()
            and hasattr(signal, "SIGALRM")
            and not pytest_timeout_seconds(item.config, item)  # pytest-timeout times this test: its timer, not ours
        )
        previous = None
        if alarm:

            def on_alarm(signum: int, frame: FrameType | None) -> None:
                where = "".join(traceback.format_stack(frame, limit=12)) if frame is not None else "(unknown)\n"
                pytest.fail(
                    f"pytest-infer: {item.nodeid} timed out after {self.timeout_s} s (--infer-timeout); "
                    f"it was at:\n{where}",
                    pytrace=False,
                )

            previous = signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(self.timeout_s)
        if self.timeout_s > 0 and self.isolated:
            # a hang in native code never returns to Python: dump every stack and end this worker
            faulthandler.dump_traceback_later(self.timeout_s + GRACE_S, exit=True, file=sys.stderr)
        try:
            result = yield
        except BaseException:
            leaks = self._put_back(before, item)
            if leaks:
                item.add_report_section("call", "infer state", leaked_message(leaks))
            raise
        finally:
            if alarm:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)
            if self.timeout_s > 0 and self.isolated:
                faulthandler.cancel_dump_traceback_later()
        leaks = self._put_back(before, item)
        if leaks:
            pytest.fail(leaked_message(leaks), pytrace=False)
        return result

    def _put_back(self, before: state.Snapshot, item: pytest.Item) -> list[str]:
        exempt = _monkeypatched(item)
        leaks = state.changes(before, self.allowed_attention, exempt)
        state.restore(before, self.allowed_attention, exempt)
        if leaks:
            self.on_leak()
        return leaks


def leaked_message(leaks: list[str]) -> str:
    lines = "\n".join(f"  - {line}" for line in leaks)
    return (
        "pytest-infer: this test left process-wide state changed, which would change the results of the tests "
        f"after it:\n{lines}\nrestored now, and the session's models dropped; a technique must change only its own "
        "model (in prepare), or undo what it changes before its test ends"
    )


def _monkeypatched(item: pytest.Item) -> state.Exempt:
    """What the test's ``monkeypatch`` fixture set (attributes, dict items, environment variables): it puts them
    back itself at teardown, so they are not leaks."""
    patcher = getattr(item, "funcargs", {}).get("monkeypatch")
    pairs = [(id(owner), name) for owner, name, _ in getattr(patcher, "_setattr", ())]
    pairs += [(id(mapping), key) for mapping, key, _ in getattr(patcher, "_setitem", ())]
    return frozenset(pairs)


def _is_infer_item(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return any(n.startswith("infer_") or n.endswith("_technique") for n in names)


def _seed() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(SEED)
    import random

    random.seed(SEED)

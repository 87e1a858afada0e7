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
- **State** between tests: the default dtype and the attention registrations a test body made (outside the
  selected techniques) are restored; the RNGs are seeded per test (``SEED``).
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
from collections.abc import Generator
from types import FrameType
from typing import Any

import pytest

from pytest_infer.core.errors import ExplainedFailure

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
    """An :class:`ExplainedFailure` raised in a test or a fixture fails it with its message, no traceback."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        try:
            return (yield)
        except ExplainedFailure as exc:
            raise pytest.fail.Exception(str(exc), pytrace=False) from None

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
        try:
            return (yield)
        except ExplainedFailure as exc:
            raise pytest.fail.Exception(str(exc), pytrace=False) from None


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
    """Per-test timeout and state restoration, for tests that use pytest-infer's fixtures."""

    def __init__(self, timeout_s: int, isolated: bool, allowed_attention: frozenset[str]) -> None:
        self.timeout_s = timeout_s
        self.isolated = isolated
        self.allowed_attention = allowed_attention

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
        state = _snapshot_state()
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
            return (yield)
        finally:
            if alarm:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)
            if self.timeout_s > 0 and self.isolated:
                faulthandler.cancel_dump_traceback_later()
            _restore_state(state, self.allowed_attention)


def _is_infer_item(item: pytest.Item) -> bool:
    names = getattr(item, "fixturenames", ())
    return any(n.startswith("infer_") or n.endswith("_technique") for n in names)


def _seed() -> None:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(SEED)
    import random

    random.seed(SEED)


def _attention_registries() -> list[Any]:
    """Transformers' global attention and mask-function registries (only if Transformers is imported)."""
    out = []
    for module, name in (
        ("transformers.modeling_utils", "AttentionInterface"),
        ("transformers.masking_utils", "AttentionMaskInterface"),
    ):
        mapping = getattr(getattr(sys.modules.get(module), name, None), "_global_mapping", None)
        if isinstance(mapping, dict):
            out.append(mapping)
    return out


def _snapshot_state() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    return {
        "dtype": torch.get_default_dtype() if torch is not None else None,
        "attention": [set(m) for m in _attention_registries()],
    }


def _restore_state(state: dict[str, Any], allowed: frozenset[str]) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and state["dtype"] is not None and torch.get_default_dtype() != state["dtype"]:
        torch.set_default_dtype(state["dtype"])
    for mapping, before in zip(_attention_registries(), state["attention"], strict=False):
        for key in set(mapping) - before - allowed:
            del mapping[key]  # registered by the test body itself: not left for the next test

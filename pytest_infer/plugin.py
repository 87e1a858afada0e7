"""Wiring only: options and their ini twins, markers, hooks, and the objects that implement them (the session, the
collection, the guards, the xdist and pytest-benchmark glue, the fixtures).

Loading this module imports neither torch nor transformers; they load when a fixture or a suite first needs them.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import os

import pytest
from _pytest.main import wrap_session  # what pytest's own --fixtures uses

from pytest_infer import fixtures, hookspecs
from pytest_infer import xdist as infer_xdist
from pytest_infer.bench import BenchmarkHooks, PerfSummary, stack_storage
from pytest_infer.collection import Collection
from pytest_infer.core.tolerance import Tolerance
from pytest_infer.isolation import ExplainedFailures, Guards, NoBenchmark, isolate_args, wants_isolation
from pytest_infer.markers import MARKERS
from pytest_infer.noise import QuietBackends
from pytest_infer.options import OPTIONS, ini_type
from pytest_infer.parity.logits import LogitParityResult
from pytest_infer.progress import Progress
from pytest_infer.session import SESSION_KEY, InferSession
from pytest_infer.xdist_results import XdistResults

PYTEST = tuple(int(p) for p in pytest.__version__.split(".")[:2] if p.isdigit())


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _h(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help strings with %


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("infer", "pytest-infer: parity, speed and memory of Transformers inference techniques")
    for opt in OPTIONS:
        if opt.kind == "bool":
            group.addoption(opt.flag, action="store_true", default=None, dest="infer_" + opt.name, help=_h(opt.help))
        elif opt.kind == "list":
            group.addoption(
                opt.flag,
                action="append",
                default=None,
                dest="infer_" + opt.name,
                metavar=opt.metavar,
                help=_h(opt.help),
            )
        else:
            group.addoption(opt.flag, default=None, dest="infer_" + opt.name, metavar=opt.metavar, help=_h(opt.help))
        # typed (options.ini_type); default None: unset reads as None, so "false"/0 set in a file still counts as set
        parser.addini(opt.ini, help=f"default for {opt.flag}: {opt.help}", type=ini_type(opt, PYTEST), default=None)


def pytest_configure(config: pytest.Config) -> None:
    # first: CUDA_VISIBLE_DEVICES must be set before anything initializes CUDA in this xdist worker
    xdist_loaded = config.pluginmanager.hasplugin("xdist")
    config.pluginmanager.register(
        infer_xdist.XdistHooks(infer_xdist.pin_worker(config), group=xdist_loaded), "infer_xdist"
    )
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    session = InferSession.from_pytest_config(config)  # raises pytest.UsageError on bad values
    config.stash[SESSION_KEY] = session
    manager = config.pluginmanager
    manager.register(session, "infer_session")
    collection = Collection(session)
    collection.add_suites()
    manager.register(collection, "infer_collection")
    manager.register(XdistResults(session.record), "infer_xdist_results")
    manager.register(fixtures, "infer_fixtures")
    manager.register(ExplainedFailures(), "infer_explained_failures")
    manager.register(PerfSummary(session), "infer_perf_summary")
    _register_guards(config, session)
    if session.active:  # backends import quietly; -v shows once what they said (noise.py)
        manager.register(QuietBackends(), "infer_quiet_backends")
    if not manager.hasplugin("benchmark"):
        manager.register(NoBenchmark(), "infer_no_benchmark")  # the perf tests' `benchmark` is then None
    elif "perf" in session.config.suites or session.config.compare_fail:
        hooks = BenchmarkHooks(session)
        session.stored_runs = hooks
        manager.register(hooks, "infer_benchmark")
        stack_storage(session, config)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The progress lines (``--infer-progress``): set up once pytest's terminal reporter exists."""
    infer = session.config.stash.get(SESSION_KEY, None)
    if infer is None:
        return
    infer.progress = Progress.for_config(session.config, infer.config.progress)
    if infer.progress.enabled:
        session.config.pluginmanager.register(infer.progress, "infer_progress")


def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """``--infer-isolate``: run in a pytest-xdist worker (``-n 1`` unless ``-n`` is given), before xdist reads it."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not early_config.pluginmanager.hasplugin("xdist"):
        return  # a worker already is one; without xdist, the session explains what to install
    try:
        ini = str(early_config.getini("infer_isolate") or "")
    except (ValueError, pytest.UsageError):  # not registered (defensive), or a bad value the session will name
        ini = ""
    if wants_isolation(args, ini):
        args.extend(isolate_args(args))


def _register_guards(config: pytest.Config, session: InferSession) -> None:
    cfg = session.config
    if cfg.isolate and not config.pluginmanager.hasplugin("xdist"):
        raise pytest.UsageError("--infer-isolate runs tests in a pytest-xdist worker: pip install pytest-xdist")
    allowed = frozenset(
        str(v) for t in session.registry for k, v in t.load_kwargs.items() if k == "attn_implementation"
    )
    config.pluginmanager.register(Guards(cfg.timeout, cfg.isolate, allowed), "infer_guards")


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    try:
        listed = config.getoption("infer_list", None) or config.getini("infer_list") is True
    except pytest.UsageError:  # a bad infer_list value: the session's configure names the option
        return None
    if listed:
        return int(wrap_session(config, _show_catalogue))
    return None


def _show_catalogue(config: pytest.Config, session: pytest.Session) -> int:
    for line in config.stash[SESSION_KEY].catalogue():
        print(line)
    return 0


def pytest_unconfigure(config: pytest.Config) -> None:
    quiet = config.pluginmanager.get_plugin("infer_quiet_backends")
    if quiet is not None:
        quiet.close()
        config.pluginmanager.unregister(quiet)
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()
        config.pluginmanager.unregister(session)
        del config.stash[SESSION_KEY]


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """``assert result <= tolerance`` explains itself with the metrics table."""
    if op == "<=" and isinstance(left, LogitParityResult) and isinstance(right, Tolerance):
        trial = left.with_tolerance(right)
        return [f"logit parity of {left.technique} does not stay within the tolerance:", *trial.message().splitlines()]
    return None

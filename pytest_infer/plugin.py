"""Wiring only: options and their ini twins, markers, hooks, the session object, collection of suites.

Loading this module imports neither torch nor transformers; the session object imports them when a
fixture or a bundled suite first needs them.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import pytest

from pytest_infer import config as infer_config
from pytest_infer.session import SESSION_KEY, InferSession

MARKERS = (
    "infer_tolerance(**bounds): override logit-parity bounds for this test "
    "(max_abs, mean_abs, max_kl, mean_kl, min_cosine, min_top1, tie_margin, min_greedy)",
    "infer_techniques(*names): run this test only for these techniques, families or stacks",
    "infer_unsupported(reason): set by pytest-infer under --infer-strict on cases this stack cannot run",
    "infer_not_selected: set by pytest-infer on a family test none of whose techniques is selected (deselected)",
    "infer_speedup(min=X, stack=None): the decode speedup over the baseline this technique must show (perf suite)",
    "infer_memory(max=X, stack=None, metric='weight_memory_ratio'): the memory ratio it must stay under (perf suite)",
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_infer import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def _h(text: str) -> str:
    return text.replace("%", "%%")  # argparse formats help strings with %


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("infer", "pytest-infer: parity, speed and memory of Transformers inference techniques")
    for opt in infer_config.OPTIONS:
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
        parser.addini(opt.ini, help=f"default for {opt.flag}: {opt.help}", type="string", default="")


def pytest_configure(config: pytest.Config) -> None:
    from pytest_infer import xdist as infer_xdist

    # first: CUDA_VISIBLE_DEVICES must be set before anything initializes CUDA in this xdist worker
    xdist_loaded = config.pluginmanager.hasplugin("xdist")
    config.pluginmanager.register(
        infer_xdist.XdistHooks(infer_xdist.pin_worker(config), group=xdist_loaded), "infer_xdist"
    )
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    session = InferSession.from_pytest_config(config)  # raises pytest.UsageError on bad values
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "infer_session")
    from pytest_infer.xdist_results import XdistResults

    config.pluginmanager.register(XdistResults(session.record), "infer_xdist_results")
    from pytest_infer import fixtures

    config.pluginmanager.register(fixtures, "infer_fixtures")
    _register_guards(config, session)
    if config.pluginmanager.hasplugin("benchmark") and ("perf" in session.config.suites or session.config.compare_fail):
        from pytest_infer.bench import BenchmarkHooks, stack_storage

        session.benchmark_hooks = BenchmarkHooks(session)
        config.pluginmanager.register(session.benchmark_hooks, "infer_benchmark")
        stack_storage(session, config)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The progress lines (``--infer-progress``): set up once pytest's terminal reporter exists."""
    from pytest_infer.progress import Progress

    infer = session.config.stash.get(SESSION_KEY, None)
    if infer is None:
        return
    infer.progress = Progress.for_config(session.config, infer.config.progress)
    if infer.progress.enabled:
        session.config.pluginmanager.register(infer.progress, "infer_progress")


def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """``--infer-isolate``: run in a pytest-xdist worker (``-n 1`` unless ``-n`` is given), before xdist reads it."""
    import os

    from pytest_infer.isolation import isolate_args, wants_isolation

    if os.environ.get("PYTEST_XDIST_WORKER") or not early_config.pluginmanager.hasplugin("xdist"):
        return  # a worker already is one; without xdist, the session explains what to install
    try:
        ini = str(early_config.getini("infer_isolate") or "")
    except ValueError:  # not registered (cannot happen once this module is a plugin; kept defensive)
        ini = ""
    if wants_isolation(args, ini):
        args.extend(isolate_args(args))


def _register_guards(config: pytest.Config, session: InferSession) -> None:
    from pytest_infer.isolation import Guards

    cfg = session.config
    if cfg.isolate and not config.pluginmanager.hasplugin("xdist"):
        raise pytest.UsageError("--infer-isolate runs tests in a pytest-xdist worker: pip install pytest-xdist")
    allowed = frozenset(
        str(v) for t in session.registry for k, v in t.load_kwargs.items() if k == "attn_implementation"
    )
    config.pluginmanager.register(Guards(cfg.timeout, cfg.isolate, allowed), "infer_guards")


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if config.getoption("infer_list", None) or str(config.getini("infer_list")).lower() in ("1", "true", "yes"):
        from _pytest.main import wrap_session  # what pytest's own --fixtures uses

        return int(wrap_session(config, _show_catalogue))
    return None


def _show_catalogue(config: pytest.Config, session: pytest.Session) -> int:
    for line in config.stash[SESSION_KEY].catalogue():
        print(line)
    return 0


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()
        config.pluginmanager.unregister(session)
        del config.stash[SESSION_KEY]


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """``assert result <= tolerance`` explains itself with the metrics table."""
    from pytest_infer.parity import LogitParityResult
    from pytest_infer.technique import Tolerance

    if op == "<=" and isinstance(left, LogitParityResult) and isinstance(right, Tolerance):
        trial = left.with_tolerance(right)
        return [f"logit parity of {left.technique} does not stay within the tolerance:", *trial.message().splitlines()]
    return None

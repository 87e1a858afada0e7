"""The per-run session object (registered by the plugin as ``infer_session``, kept in ``config.stash``): the resolved
config, the registry, the stack, the model cache and the results; it builds each test's check context and writes
the reports (terminal matrix, JSON, Markdown, plot) at the end.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from pytest_infer import options, validation
from pytest_infer.checks.context import CheckContext, StoredRuns
from pytest_infer.core.case import Case
from pytest_infer.core.config import InferConfig
from pytest_infer.core.detect import detect_stack, validate_device
from pytest_infer.core.errors import ConfigError, ExplainedFailure, TechniqueError
from pytest_infer.core.model_facts import ModelFacts
from pytest_infer.core.redact import mask
from pytest_infer.core.registry import Registry
from pytest_infer.core.resources import default_prompts_file, quality_text, read_prompts
from pytest_infer.core.stack import Stack
from pytest_infer.core.technique import Technique
from pytest_infer.core.tolerance import Tolerance, parse_tolerance_spec
from pytest_infer.core.version import __version__
from pytest_infer.outputs import Outputs, check_outputs
from pytest_infer.parity.padding import choose_sweep
from pytest_infer.progress import Progress
from pytest_infer.reports.document import report_document
from pytest_infer.reports.markdown import markdown_table
from pytest_infer.reports.plot import missing_dependency
from pytest_infer.reports.terminal import catalogue_lines, golden_summary_lines, terminal_summary
from pytest_infer.runtime.capabilities import read_facts
from pytest_infer.runtime.checkpoint import read_config
from pytest_infer.runtime.loading import ModelSource, load_tokenizer, resolve_device
from pytest_infer.runtime.model_cache import ModelCache
from pytest_infer.techniques import builtin_techniques
from pytest_infer.xdist_results import is_xdist_worker

SESSION_KEY = pytest.StashKey["InferSession"]()
MARKER_NAMES = (
    "infer_tolerance",
    "infer_speedup",
    "infer_memory",
    "infer_quality",
)  # what a check reads from its test's markers


class InferSession:
    def __init__(self, pytest_config: pytest.Config, cfg: InferConfig, registry: Registry) -> None:
        self.pytest_config = pytest_config
        self.config = cfg
        self.registry = registry
        self.results: list[dict[str, Any]] = []
        self._cache: ModelCache | None = None
        self.selected: list[Technique] = []
        self.stored_runs: StoredRuns | None = None  # pytest-benchmark's stored run (bench.py), when loaded
        self.stack_mismatch = ""
        self.outcomes: list[dict[str, Any]] = []
        self.interrupted = False
        self.refusal = ""  # why the model cannot take this run's inputs (set at collection on xdist workers)
        self._running: str | None = None  # the test running now (reported as interrupted on Ctrl-C)
        self.progress: Progress = Progress(0)  # the plugin installs the terminal's (see progress.py)
        # perf: per resident model, the scenarios it has run and its first call's seconds (checks/measure.py)
        self.first_calls: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()
        self._started = time.perf_counter()
        self.active = (
            bool(cfg.suites) or explicitly_loaded(pytest_config) or any(s != "default" for s in cfg.sources.values())
        )

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_pytest_config(cls, config: pytest.Config) -> InferSession:
        """Resolve and validate every option, register the techniques; a bad value is a usage error naming the
        option as the user wrote it."""
        ini_file = str(config.inipath) if config.inipath else ""
        try:
            values, sources = options.resolve_raw(
                lambda name: config.getoption("infer_" + name, None), ini_reader(config), ini_file
            )
            cfg = validation.build(values, sources, Path(str(config.rootpath)), ini_file)
            registry = _registry(config)
            techniques = _validate(cfg, registry, ini_file)
            check_outputs(cfg, config)
        except (ConfigError, TechniqueError) as exc:
            raise pytest.UsageError(f"pytest-infer: {mask(str(exc))}") from None
        session = cls(config, cfg, registry)
        session.selected = techniques
        if session.active:
            session._use_cache_dir()
        return session

    def _use_cache_dir(self) -> None:
        """Point torch's compile caches at the cache directory (reused within and across sessions),
        unless the user has set them; torch reads these when it first compiles."""
        root = Path(self.config.cache_dir)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))

    # --- lazily built state --------------------------------------------------------------------
    @functools.cached_property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(resolve_device(d) for d in self.config.devices))

    @functools.cached_property
    def stack(self) -> Stack:
        return detect_stack(self.devices[0] if self.devices else "auto")

    def stack_for(self, device: str) -> Stack:
        return self.stack.for_device(device)

    @property
    def cache(self) -> ModelCache:
        if self._cache is None:
            self._cache = ModelCache(self.config.max_models)
        return self._cache

    @functools.cached_property
    def source(self) -> ModelSource:
        return ModelSource(self.config.model, self.config.trust_remote_code, self.config.allow_pickle)

    @functools.cached_property
    def model_config(self) -> dict[str, Any]:
        """The model's config.json as a dict when it is a local directory ({} for a hub id: not fetched at
        collection); known upstream defects keyed to model shapes read it."""
        return read_config(self.config.model)

    def tokenizer(self) -> Any:
        """The model's tokenizer (left padding), loaded once per session; on an xdist worker, the refusal of
        inputs the model cannot take (:func:`pytest_infer.collection.input_problem`) fails every test that asks for it."""
        if self.refusal:
            raise ExplainedFailure(f"pytest-infer: {self.refusal}")
        return self.cache.tensor(("tokenizer", self.source), lambda: load_tokenizer(self.source))

    @functools.cached_property
    def model_facts(self) -> ModelFacts | None:
        """What the model's config and class say before any weight loads (None where the config cannot be read
        offline): each technique's applicability is decided from it at collection."""
        return read_facts(self.source)

    @functools.cached_property
    def padding(self) -> tuple[str, str]:
        """(the padding sweep this session runs, why): ``auto`` chooses by the model's size."""
        facts = self.model_facts if self.config.padding == "auto" else None
        return choose_sweep(self.config.padding, facts.parameters if facts is not None else 0)

    @functools.cached_property
    def prompts(self) -> tuple[str, ...]:
        return read_prompts(self.config.prompts or str(default_prompts_file()))

    @functools.cached_property
    def reference(self) -> Technique:
        return self.registry.get(self.config.reference)

    def cases(self, family: str | None = None) -> list[Case]:
        techniques = [
            t for t in self.selected if family is None or t.family == family or family in families(t, self.registry)
        ]
        return [Case(t, d, dt) for d in self.devices for dt in self.config.dtypes for t in techniques]

    # --- what a check sees --------------------------------------------------------------------
    def check_context(self, node: pytest.Item | None, tokenizer: Any, prompts: tuple[str, ...]) -> CheckContext:
        """The narrow context of one test's checks: this session's values, the test's markers and report."""
        config = self.pytest_config
        markers = {
            name: [dict(m.kwargs) for m in node.iter_markers(name)] if node is not None else [] for name in MARKER_NAMES
        }

        def record(data: dict[str, Any], section: str | None) -> None:
            self.results.append(data)
            if node is not None:
                node.user_properties.append(("infer_result", data))
                if section is not None:
                    node.add_report_section("call", "infer", section)

        return CheckContext(
            config=self.config,
            registry=self.registry,
            reference=self.reference,
            source=self.source,
            cache=self.cache,
            tokenizer=tokenizer,
            prompts=prompts,
            stack_for=self.stack_for,
            record=record,
            step=self._step,
            markers=markers,
            tolerance_hook=self._tolerance_hook,
            rank_plugins=registering_plugins(config),
            first_calls=self.first_calls,
            stored_runs=self.stored_runs,
            benchmark_loaded=config.pluginmanager.hasplugin("benchmark"),
            xdist_worker=hasattr(config, "workerinput"),
            padding=self.padding[0],
        )

    def _step(self, what: str) -> AbstractContextManager[None]:
        return self.progress.step(what)

    def _tolerance_hook(self, case: Case, bound: Tolerance) -> Tolerance | None:
        """The ``pytest_infer_tolerance`` hook for ``case``: a Tolerance or None; anything else is the conftest's
        bug, named with its file."""
        hook = self.pytest_config.hook.pytest_infer_tolerance
        hooked = hook(technique=case.technique, dtype=case.dtype, device=case.device, default=bound)
        if hooked is not None and not isinstance(hooked, Tolerance):
            where = ", ".join(
                f"{i.function.__code__.co_filename}" for i in hook.get_hookimpls() if hasattr(i.function, "__code__")
            )
            raise ExplainedFailure(
                f"pytest_infer_tolerance ({where}) must return a pytest_infer.Tolerance or None, got "
                f"{type(hooked).__name__} {hooked!r}: return default.replace(max_abs=...) to change a bound"
            )
        return hooked

    # --- hooks ---------------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str] | None:
        if not self.active:
            return None
        lines = [self.stack.header_line()]
        source = "embedded tiny model" if self.config.model_is_embedded else self.config.model
        lines.append(
            f"infer: model {source} | devices {','.join(self.devices)} | dtypes {','.join(self.config.dtypes)} | "
            f"{len(self.selected)} techniques | reference {self.config.reference} ({self.config.reference_dtype})"
        )
        if "parity" in self.config.suites and self.config.padding == "auto":
            sweep, why = self.padding
            lines[-1] += f" | padding sweep {sweep} ({why})"
        if "perf" in self.config.suites:
            lines[-1] += f" | perf scenarios {','.join(self.config.perf_scenarios)}"
        return [mask(line) for line in lines]

    def record(self, result: dict[str, Any]) -> None:
        self.results.append(result)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        title, lines = terminal_summary(self.results, verbose=terminalreporter.verbosity > 0)
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(mask(line))
        written = golden_summary_lines(self.results)  # goldens are never written without saying so
        if written:
            terminalreporter.section(f"pytest-infer: goldens ({self.config.golden})")
            for line in written:
                terminalreporter.write_line(mask(line))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when not in ("setup", "call", "teardown"):  # pytest-xdist's report of a worker that died
            crash = {"nodeid": report.nodeid, "outcome": "crashed", "duration_s": 0.0}
            self.outcomes.append({**crash, "reason": str(report.longrepr)})
            return
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            entry: dict[str, Any] = {
                "nodeid": report.nodeid,
                "outcome": report.outcome,
                "duration_s": round(report.duration, 4),
            }
            if hasattr(report, "wasxfail"):
                entry["outcome"] = "xfailed" if report.skipped else "xpassed"
                entry["reason"] = report.wasxfail
            elif report.skipped and isinstance(report.longrepr, tuple):
                entry["reason"] = str(report.longrepr[2]).removeprefix("Skipped: ")
            self.outcomes.append(entry)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._started = time.perf_counter()

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._running = nodeid

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self._running = None

    def pytest_keyboard_interrupt(self) -> None:
        """Ctrl-C, or SIGTERM (isolation.TerminationAsInterrupt): the test it stopped is in the report as such."""
        self.interrupted = True
        if self._running is not None:
            self.outcomes.append({"nodeid": self._running, "outcome": "interrupted", "duration_s": 0.0})
            self._running = None

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if is_xdist_worker(self.pytest_config):
            return  # the controller writes the reports, with every worker's results (xdist_results.py)

        def document() -> dict[str, Any]:
            return report_document(
                self.stack.to_dict() if self.active or self.results else {},
                self.config.to_dict(),
                self.results,
                self.outcomes,
                time.perf_counter() - self._started,
                {"pytest-infer": __version__},
                interrupted=self.interrupted,
            )

        def markdown() -> str:
            return "## pytest-infer\n\n" + markdown_table(self.results, self.stack.header_line())

        Outputs(self.config, self._say, self.interrupted).write(document, markdown, bool(self.results))

    def _say(self, line: str) -> None:
        reporter = self.pytest_config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_line(line) if reporter is not None else sys.stderr.write(line + "\n")

    def catalogue(self) -> list[str]:
        """Every known technique with, for this stack, runnable or the reason it is skipped."""
        lines = []
        for device in self.devices:
            stack = self.stack_for(device)
            lines.append(f"techniques on {device} ({stack.header_line().removeprefix('infer stack: ')}):")
            lines.extend(
                catalogue_lines(
                    self.registry, stack, self.config.dtypes[0], strict=self.config.strict, facts=self.model_facts
                )
            )
        return lines

    def forget_models(self) -> None:
        """Drop every loaded model and computed tensor (they were made under state a test then changed), and
        torch.compile's caches (compiled code may have traced through a patched function)."""
        if self._cache is not None:
            self._cache.clear()
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is not None:
            dynamo.reset()

    def close(self) -> None:
        self.progress.close()
        if self._cache is not None:
            self._cache.clear()


def ini_reader(config: pytest.Config) -> Callable[[str], Any]:
    """``config.getini`` whose refusals (pytest's type check of a typed ini key) are :class:`ConfigError`, in pytest's
    words less the file name it starts with (the caller adds the option and the file)."""

    def read(name: str) -> Any:
        try:
            return options.as_written(config, name, config.getini(name))
        except pytest.UsageError as exc:
            text = str(exc)
            if config.inipath is not None:
                text = text.removeprefix(f"{config.inipath}: ")
            raise ConfigError(text) from None

    return read


def explicitly_loaded(config: pytest.Config) -> bool:
    """Whether ``-p pytest_infer`` was given (an installed plugin is otherwise inert until asked for)."""
    return "pytest_infer" in (getattr(config.option, "plugins", None) or [])


def families(technique: Technique, registry: Registry) -> set[str]:
    """The families of a technique's components (a stack has its components' families)."""
    return {registry.get(c).family for c in technique.components if c in registry}


def registering_plugins(config: pytest.Config) -> list[dict[str, str | None]]:
    """The modules (conftest files, plugins) that add techniques: the ranks import them again."""
    out: list[dict[str, str | None]] = []
    for impl in config.pluginmanager.hook.pytest_infer_register_techniques.get_hookimpls():
        plugin = impl.plugin
        if isinstance(plugin, types.ModuleType):
            out.append({"name": plugin.__name__, "file": getattr(plugin, "__file__", None)})
    return out


def _registry(config: pytest.Config) -> Registry:
    """The built-ins and whatever the conftests' ``pytest_infer_register_techniques`` add; a conftest's bug is
    reported with where it was raised, without pytest's internal traceback."""
    registry = Registry(builtin_techniques())
    try:
        config.hook.pytest_infer_register_techniques(registry=registry)
    except Exception as exc:
        impls = config.hook.pytest_infer_register_techniques.get_hookimpls()
        at = validation.hook_origin(exc, [i.function for i in impls])
        text = str(exc) if isinstance(exc, TechniqueError) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"pytest_infer_register_techniques{f' ({at})' if at else ''}: {text}") from None
    return registry


def _validate(cfg: InferConfig, registry: Registry, ini_file: str) -> list[Technique]:
    """Check every name and file the options give against the registry and this machine; the selected
    techniques. Errors name the option as the user set it (flag or ini option)."""

    @contextlib.contextmanager
    def blamed(name: str) -> Iterator[None]:
        with options.blamed(name, cfg.sources, TechniqueError, ini_file=ini_file):
            yield

    def known(name: str, entry: str) -> None:  # "--infer-technique sdpa+nope: unknown technique 'nope'"
        with blamed(name):
            try:
                registry.select([entry]) if name == "technique" else registry.get(entry)
            except TechniqueError as exc:
                raise ConfigError(f"{options.OPTION_BY_NAME[name].flag} {entry}: {exc}") from None

    for entry in cfg.techniques:
        known("technique", entry)
    techniques = registry.select(cfg.techniques)
    known("reference", cfg.reference)
    if cfg.baseline:
        known("baseline", cfg.baseline)
    for spec in cfg.tolerance:
        with blamed("tolerance"):
            name, _, _ = parse_tolerance_spec(spec)
            if name is not None:
                try:
                    registry.get(name)
                except TechniqueError as exc:
                    raise TechniqueError(f"tolerance {spec!r}: {exc}") from None
    if cfg.prompts:
        with blamed("prompts"):
            read_prompts(cfg.prompts)
    for spec in cfg.quality_budget:
        with blamed("quality_budget"):
            registry.select([spec.partition("=")[0].strip()])
    if cfg.quality_text:
        with blamed("quality_text"):
            quality_text(cfg.quality_text)
    if cfg.plot and (problem := missing_dependency()):
        raise ConfigError(f"--infer-plot {cfg.plot}: {problem}")
    for device in cfg.devices:
        if device not in ("auto", "cpu") and (problem := validate_device(device)):
            with blamed("device"):
                raise ConfigError(f"--infer-device {device}: {problem}")
    unusable = validation.comparison_problem(cfg, registry)
    if unusable is not None:
        with blamed(unusable[0]):
            raise ConfigError(unusable[1])
    return techniques

"""The per-run session object: resolved config, registry, stack, caches, results; its methods are hooks.

Registered by ``plugin.pytest_configure`` as ``infer_session`` and kept in ``config.stash``.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_infer import config as infer_config
from pytest_infer.progress import Progress
from pytest_infer.technique import Registry, Technique, TechniqueError, Tolerance, parse_tolerance_spec

if TYPE_CHECKING:
    from pytest_infer.floor import NoiseFloor
    from pytest_infer.models import ModelCache, ModelSource
    from pytest_infer.stack import Stack

SESSION_KEY = pytest.StashKey["InferSession"]()
CASE_ARGS = ("infer_case", "infer_compiled_case")  # every selected technique / the compiled ones
FAMILY_ARG_SUFFIX = "_technique"  # e.g. attention_technique: the attention family only
SUITE_FILES: dict[str, tuple[str, ...]] = {
    "parity": ("test_parity.py", "test_quantization.py", "test_parallelism.py"),
    "generation": ("test_generation.py", "test_caching.py", "test_batching.py"),
    "perf": ("test_performance.py",),
}


@dataclass(frozen=True)
class Case:
    """One parametrized test case: a technique on a device in a dtype."""

    technique: Technique
    device: str
    dtype: str

    @property
    def id(self) -> str:
        return f"{self.device.replace(':', '')}-{self.dtype}-{self.technique.name}"

    def __repr__(self) -> str:
        return f"Case({self.id})"


class InferSession:
    def __init__(self, pytest_config: pytest.Config, cfg: infer_config.InferConfig, registry: Registry) -> None:
        self.pytest_config = pytest_config
        self.config = cfg
        self.registry = registry
        self.results: list[dict[str, Any]] = []
        self._cache: ModelCache | None = None
        self.suite_files: set[Path] = set()
        self.selected: list[Technique] = []
        self.benchmark_hooks: Any = None
        self.stack_mismatch = ""
        self.outcomes: list[dict[str, Any]] = []
        self.progress: Progress = Progress(0)  # the plugin installs the terminal's (see progress.py)
        # perf: per resident model, the scenarios it has run and its first call's seconds (pytest_infer.perf)
        self.first_calls: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()
        self._started = time.perf_counter()
        self._active = (
            bool(cfg.suites) or _explicitly_loaded(pytest_config) or any(s != "default" for s in cfg.sources.values())
        )

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_pytest_config(cls, config: pytest.Config) -> InferSession:
        def cli(name: str) -> Any:
            return config.getoption("infer_" + name, None)

        def ini(name: str) -> Any:
            return config.getini(name)

        ini_file = str(config.inipath) if config.inipath else ""
        try:
            values, sources = infer_config.resolve_raw(cli, ini, ini_file)
            cfg = infer_config.build(values, sources, Path(str(config.rootpath)), ini_file)

            def blamed(name: str) -> Any:  # errors name the option as the user set it (flag or ini)
                return infer_config.blamed(name, cfg.sources, TechniqueError, ini_file=ini_file)

            registry = Registry(_builtin())
            try:
                config.hook.pytest_infer_register_techniques(registry=registry)
            except Exception as exc:  # a conftest's bug: say where, without pytest's internal traceback
                impls = config.hook.pytest_infer_register_techniques.get_hookimpls()
                at = infer_config.hook_origin(exc, [i.function for i in impls])
                text = str(exc) if isinstance(exc, TechniqueError) else f"{type(exc).__name__}: {exc}"
                raise infer_config.ConfigError(
                    f"pytest_infer_register_techniques{f' ({at})' if at else ''}: {text}"
                ) from None

            def known(name: str, entry: str) -> None:  # "--infer-technique sdpa+nope: unknown technique 'nope'"
                with blamed(name):
                    try:
                        registry.select([entry]) if name == "technique" else registry.get(entry)
                    except TechniqueError as exc:
                        flag = infer_config.OPTION_BY_NAME[name].flag
                        raise infer_config.ConfigError(f"{flag} {entry}: {exc}") from None

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
                    _read_prompts(cfg.prompts)
            if cfg.plot:
                from pytest_infer.plot import missing_dependency

                if problem := missing_dependency():
                    raise infer_config.ConfigError(f"--infer-plot {cfg.plot}: {problem}")
            for device in cfg.devices:
                if device not in ("auto", "cpu"):
                    from pytest_infer.stack import validate_device

                    problem = validate_device(device)
                    if problem:
                        with blamed("device"):
                            raise infer_config.ConfigError(f"--infer-device {device}: {problem}")
        except (infer_config.ConfigError, TechniqueError) as exc:
            raise pytest.UsageError(f"pytest-infer: {exc}") from None
        session = cls(config, cfg, registry)
        _ACTIVE.append(session)
        session.selected = techniques
        session._add_suites()
        if session._active:
            session._use_cache_dir()
        return session

    def _use_cache_dir(self) -> None:
        """Point torch's compile caches at the cache directory (reused within and across sessions),
        unless the user has set them; torch reads these when it first compiles."""
        root = Path(self.config.cache_dir)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
        os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))

    def _add_suites(self) -> None:
        """Collect the selected bundled suites: their folder becomes a collection argument (so node ids read
        ``test_parity.py::test_logit_parity[...]``) and the unselected files in it are ignored."""
        if not self.config.suites:
            return
        from pytest_infer.resources import suites_dir

        folder = suites_dir()
        self.suite_files = {folder / f for s in self.config.suites for f in SUITE_FILES[s]}
        missing = [str(f) for f in self.suite_files if not f.is_file()]
        if missing:
            raise pytest.UsageError(
                f"pytest-infer: bundled suite file(s) missing from the install: {', '.join(missing)}"
            )
        args = self.pytest_config.args
        if self.pytest_config.args_source != pytest.Config.ArgsSource.ARGS:
            args[:] = []  # `pytest --infer-suite parity` runs the suite, not the whole test tree
        if str(folder) not in args:
            args.append(str(folder))

    def pytest_ignore_collect(self, collection_path: Path) -> bool | None:
        if self.suite_files and collection_path.parent == suites_dir_cached() and collection_path.suffix == ".py":
            return collection_path.name != "__init__.py" and collection_path not in self.suite_files
        return None

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        # The suites are collected even where the project's python_files pattern would not match them.
        if file_path in self.suite_files:
            patterns = parent.config.getini("python_files")
            if not any(fnmatch.fnmatch(file_path.name, p) for p in patterns):
                return pytest.Module.from_parent(parent, path=file_path)
        return None

    # --- lazily built state --------------------------------------------------------------------
    @functools.cached_property
    def devices(self) -> tuple[str, ...]:
        from pytest_infer.models import resolve_device

        return tuple(dict.fromkeys(resolve_device(d) for d in self.config.devices))

    @functools.cached_property
    def stack(self) -> Stack:
        from pytest_infer.stack import detect_stack

        return detect_stack(self.devices[0] if self.devices else "auto")

    def stack_for(self, device: str) -> Stack:
        return self.stack.for_device(device)

    @property
    def cache(self) -> ModelCache:
        if self._cache is None:
            from pytest_infer.models import ModelCache

            self._cache = ModelCache(self.config.max_models)
        return self._cache

    @functools.cached_property
    def source(self) -> ModelSource:
        from pytest_infer.models import ModelSource

        return ModelSource(self.config.model, self.config.trust_remote_code, self.config.allow_pickle)

    @functools.cached_property
    def model_config(self) -> dict[str, Any]:
        """The model's config.json as a dict when it is a local directory ({} for a hub id: not fetched at
        collection); known upstream defects keyed to model shapes read it."""
        import json

        path = Path(self.config.model) / "config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        text = data.get("text_config")
        return {**data, **text} if isinstance(text, dict) else data

    @functools.cached_property
    def prompts(self) -> tuple[str, ...]:
        from pytest_infer.resources import default_prompts_file

        return _read_prompts(self.config.prompts or str(default_prompts_file()))

    @functools.cached_property
    def reference(self) -> Technique:
        return self.registry.get(self.config.reference)

    def cases(self, family: str | None = None) -> list[Case]:
        techniques = [
            t for t in self.selected if family is None or t.family == family or family in _families(t, self.registry)
        ]
        return [Case(t, d, dt) for d in self.devices for dt in self.config.dtypes for t in techniques]

    def tolerance(self, case: Case, node: pytest.Item | None = None, floor: NoiseFloor | None = None) -> Tolerance:
        """The bounds for ``case``, in order: per-dtype table; the technique's own fixed bounds (per stack,
        best match); tightened to the measured noise ``floor`` where the table applies; ``infer_tolerance``
        ini/command-line specs; the ``pytest_infer_tolerance`` hook; ``infer_tolerance`` markers."""
        from pytest_infer.floor import floor_tolerance
        from pytest_infer.technique import TOLERANCE_METRICS, resolve_tolerance
        from pytest_infer.tolerances import default_tolerance

        stack = self.stack_for(case.device)
        tol = default_tolerance(case.dtype, case.device)
        own = resolve_tolerance(case.technique.tolerances.get(case.dtype), stack)
        if own is not None:
            tol = own  # a technique that states its bounds states fixed bounds (lossy techniques)
        elif floor is not None:
            tol = floor_tolerance(tol, floor)
        for spec in self.config.tolerance:
            name, dtype, values = parse_tolerance_spec(spec)
            if name in (None, case.technique.name) and dtype in (None, case.dtype):
                tol = tol.replace(**values)
        hooked = self.pytest_config.hook.pytest_infer_tolerance(
            technique=case.technique, dtype=case.dtype, device=case.device, default=tol
        )
        if hooked is not None:
            if not isinstance(hooked, Tolerance):
                impls = self.pytest_config.hook.pytest_infer_tolerance.get_hookimpls()
                where = ", ".join(
                    f"{i.function.__code__.co_filename}" for i in impls if hasattr(i.function, "__code__")
                )
                pytest.fail(
                    f"pytest_infer_tolerance ({where}) must return a pytest_infer.Tolerance or None, got "
                    f"{type(hooked).__name__} {hooked!r}: return default.replace(max_abs=...) to change a bound",
                    pytrace=False,
                )
            tol = hooked
        if node is not None:
            from pytest_infer.technique import stack_key_specificity

            markers = [m for m in node.iter_markers("infer_tolerance")]
            # closest marker last; a marker with stack= applies only on a matching stack
            for marker in reversed(markers):
                kwargs = dict(marker.kwargs)
                key = kwargs.pop("stack", None)
                unknown = set(kwargs) - set(TOLERANCE_METRICS)
                if unknown:
                    pytest.fail(
                        f"@pytest.mark.infer_tolerance: unknown keyword(s) {', '.join(sorted(unknown))}; "
                        f"valid: {', '.join(TOLERANCE_METRICS)}, stack",
                        pytrace=False,
                    )
                if key is None or stack_key_specificity(str(key), stack) > 0:
                    tol = tol.replace(**kwargs)
        return tol

    # --- hooks ---------------------------------------------------------------------------------
    def pytest_report_header(self, config: pytest.Config) -> list[str] | None:
        if not self._active:
            return None
        lines = [self.stack.header_line()]
        source = "embedded tiny model" if self.config.model_is_embedded else self.config.model
        lines.append(
            f"infer: model {source} | devices {','.join(self.devices)} | dtypes {','.join(self.config.dtypes)} | "
            f"{len(self.selected)} techniques | reference {self.config.reference} ({self.config.reference_dtype})"
        )
        if "perf" in self.config.suites:
            lines[-1] += f" | perf scenarios {','.join(self.config.perf_scenarios)}"
        return lines

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        for argname in metafunc.fixturenames:
            if argname in CASE_ARGS:
                family = None
            elif argname.endswith(FAMILY_ARG_SUFFIX) and argname.removesuffix(FAMILY_ARG_SUFFIX) in _all_families():
                family = argname.removesuffix(FAMILY_ARG_SUFFIX)
            else:
                continue
            cases = self.cases(family)
            if argname == "infer_compiled_case":
                cases = [c for c in cases if c.technique.compiled]
            self._check_markers(metafunc)
            marker = metafunc.definition.get_closest_marker("infer_techniques")
            if marker is not None:
                try:
                    allowed = {t.name for t in self.registry.select(marker.args)}
                except TechniqueError as exc:
                    allowed, problem = set(), f"{metafunc.definition.nodeid}: @pytest.mark.infer_techniques: {exc}"
                else:
                    problem = ""
                if problem:  # outside the except block: no "during handling of the above exception" chain
                    pytest.fail(problem, pytrace=False)
                cases = [c for c in cases if c.technique.name in allowed]
            from pytest_infer.known_issues import CHECKS

            check = CHECKS.get(metafunc.function.__name__)
            params = [pytest.param(c, id=c.id, marks=self._marks(c, check)) for c in cases]
            params = self._perf_scenarios(metafunc, params)
            if not params:
                # nothing of this family selected: the test is deselected (reported as such), not skipped
                params = [pytest.param(None, id="none", marks=pytest.mark.infer_not_selected)]
            metafunc.parametrize(argname, params)
            return

    def _perf_scenarios(self, metafunc: pytest.Metafunc, params: list[Any]) -> list[Any]:
        """``--infer-perf-scenarios``: the bundled perf tests keep the cases whose technique the scenario is
        selected for (``auto``: by family, see :mod:`pytest_infer.scenarios`); the others are deselected
        (counted in pytest's summary, so a reader sees that something was left out)."""
        from pytest_infer.scenarios import TESTS, wanted

        scenario = TESTS.get(metafunc.function.__name__)
        if scenario is None or metafunc.definition.path not in self.suite_files:
            return params
        auto = self.config.perf_scenarios == ("auto",)
        baseline = self.config.baseline or self.config.reference
        out = []
        for p in params:
            t = p.values[0].technique
            # under auto the baseline against itself is left out: a null measurement (a list or all runs it)
            if (auto and t.name == baseline) or scenario not in wanted(
                self.config.perf_scenarios, {t.family} | _families(t, self.registry)
            ):
                p = pytest.param(*p.values, id=p.id, marks=[*p.marks, pytest.mark.infer_not_selected])
            out.append(p)
        return out

    def _auto_prefill_lengths(self, items: list[pytest.Item]) -> None:
        """Under ``auto``, the bundled prefill test of a family timed at some lengths only (attention, kernels,
        compilation: the long prompt) is deselected at the others (see
        :data:`pytest_infer.scenarios.AUTO_PREFILL_LENGTHS`)."""
        if self.config.perf_scenarios != ("auto",):
            return
        from pytest_infer.scenarios import prefill_lengths

        for item in items:
            case = _item_case(item)
            if case is None or item.path not in self.suite_files:
                continue
            prompt_len = item.callspec.params.get("prompt_len")  # type: ignore[attr-defined]  # (a case: parametrized)
            if prompt_len is None:
                continue
            lengths = prefill_lengths(("auto",), {case.technique.family} | _families(case.technique, self.registry))
            if lengths is not None and prompt_len not in lengths:
                item.add_marker(pytest.mark.infer_not_selected)

    @staticmethod
    def _check_markers(metafunc: pytest.Metafunc) -> None:
        """A pytest-infer marker with wrong arguments fails the collection of its test (before any model
        loads) instead of failing after the measurement, or silently not applying."""
        for marker in metafunc.definition.iter_markers():
            problem = infer_config.marker_problem(marker.name, marker.args, marker.kwargs)
            if problem:
                pytest.fail(f"{metafunc.definition.nodeid}: {problem}", pytrace=False)

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        self._auto_prefill_lengths(items)
        dropped = [i for i in items if i.get_closest_marker("infer_not_selected") is not None]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [i for i in items if i.get_closest_marker("infer_not_selected") is None]
        self._group_by_case(items)

    def _group_by_case(self, items: list[pytest.Item]) -> None:
        """In each bundled suite file, a technique's tests run one after the other (techniques in the order
        selected, tests in the file's order), the
        way pytest groups tests by the parameters of higher-scoped fixtures: its model is loaded (and
        compiled) once per file at most, even where the session cache holds only two models
        (``--infer-max-models 2``, or models too large to keep more). Other files keep their order."""
        if not any(item.path in self.suite_files for item in items):
            return  # no bundled suite: nothing to reorder (and no device to resolve, so no torch import)
        order = {c.id: i for i, c in enumerate(self.cases())}  # the selection's order
        file_start: dict[Path, int] = {}
        for index, item in enumerate(items):
            file_start.setdefault(item.path, index)

        def key(pair: tuple[int, pytest.Item]) -> tuple[int, int, int]:
            index, item = pair
            case = _item_case(item)
            if case is None or item.path not in self.suite_files:
                return (index, 0, 0)  # in place
            return (file_start[item.path], order.get(case.id, len(order)), index)

        items[:] = [item for _, item in sorted(enumerate(items), key=key)]

    def _marks(self, case: Case, check: str | None = None) -> list[pytest.MarkDecorator]:
        stack = self.stack_for(case.device)
        reason = case.technique.skip_reason(stack, case.dtype)
        if reason is None and case.technique.runner == "multiprocess":
            from pytest_infer.distributed import preflight

            reason = preflight(self, case)
        if reason is None:
            from pytest_infer.known_issues import known_issue

            issue = known_issue(case.technique.components, check, stack, self.model_config) if check else None
            if issue is None:
                return []
            return [pytest.mark.xfail(strict=True, reason=f"known upstream defect: {issue.reason} [{issue.evidence}]")]
        reason = f"{case.technique.name}: {reason}"
        if self.config.strict:
            return [pytest.mark.infer_unsupported(reason=reason)]
        return [pytest.mark.skip(reason=reason)]

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        # Under --infer-strict an unsupported technique is a test failure (call phase), not a skip.
        marker = pyfuncitem.get_closest_marker("infer_unsupported")
        if marker is not None:
            pytest.fail(f"--infer-strict: {marker.kwargs['reason']}", pytrace=False)
        return None

    def record(self, result: dict[str, Any]) -> None:
        self.results.append(result)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        from pytest_infer.report import terminal_summary

        title, lines = terminal_summary(self.results, verbose=terminalreporter.verbosity > 0)
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
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

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from pytest_infer.xdist_results import is_xdist_worker

        if is_xdist_worker(self.pytest_config):
            return  # the controller writes the reports, with every worker's results (xdist_results.py)
        self._write_markdown()
        if not (self.config.report or self.config.plot):
            return
        from pytest_infer import __version__
        from pytest_infer.report import report_document, write_atomically

        stack = self.stack.to_dict() if self._active or self.results else {}
        doc = report_document(
            stack,
            self.config.to_dict(),
            self.results,
            self.outcomes,
            time.perf_counter() - self._started,
            {"pytest-infer": __version__},
        )
        if self.config.report:
            write_atomically(self.config.report, doc)
        if self.config.plot:
            from pytest_infer.plot import session_plot

            line = session_plot(doc, self.config.plot)
            reporter = self.pytest_config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(line)

    def _write_markdown(self) -> None:
        targets = [self.config.markdown] if self.config.markdown else []
        if os.environ.get("GITHUB_STEP_SUMMARY") and self.results:
            targets.append(os.environ["GITHUB_STEP_SUMMARY"])
        if not targets:
            return
        from pytest_infer.report import markdown_table

        text = "## pytest-infer\n\n" + markdown_table(self.results, self.stack.header_line())
        for i, target in enumerate(targets):
            mode = "w" if i == 0 and self.config.markdown else "a"  # the job summary is appended to
            with open(target, mode, encoding="utf-8") as f:
                f.write(text + "\n")

    def catalogue(self) -> list[str]:
        """Every known technique with, for this stack, runnable or the reason it is skipped."""
        from pytest_infer.report import catalogue_lines

        lines = []
        for device in self.devices:
            stack = self.stack_for(device)
            lines.append(f"techniques on {device} ({stack.header_line().removeprefix('infer stack: ')}):")
            lines.extend(catalogue_lines(self.registry, stack, self.config.dtypes[0]))
        return lines

    def close(self) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self.progress.close()
        if self._cache is not None:
            self._cache.clear()


_ACTIVE: list[InferSession] = []  # the sessions of this process, newest last (pytester may nest one)


def active_session() -> InferSession | None:
    """The pytest-infer session running in this process, or None: for technique callables that must follow
    its options (e.g. the kernels family refuses hub kernels not pinned to a commit under --infer-strict)."""
    return _ACTIVE[-1] if _ACTIVE else None


@functools.lru_cache(maxsize=1)
def suites_dir_cached() -> Path:
    from pytest_infer.resources import suites_dir

    return suites_dir()


def _explicitly_loaded(config: pytest.Config) -> bool:
    return "pytest_infer" in (getattr(config.option, "plugins", None) or [])


@functools.lru_cache(maxsize=1)
def _all_families() -> frozenset[str]:
    from pytest_infer.technique import FAMILIES

    return frozenset(FAMILIES)


def _item_case(item: pytest.Item) -> Case | None:
    """The :class:`Case` a parametrized item runs (None: not a pytest-infer case)."""
    callspec = getattr(item, "callspec", None)
    return next((v for v in callspec.params.values() if isinstance(v, Case)), None) if callspec else None


def _families(technique: Technique, registry: Registry) -> set[str]:
    return {registry.get(c).family for c in technique.components if c in registry}


def _builtin() -> list[Technique]:
    from pytest_infer.techniques import builtin_techniques

    return builtin_techniques()


def _read_prompts(path: str) -> tuple[str, ...]:
    p = Path(path).expanduser()
    if p.is_dir():
        raise infer_config.ConfigError(f"--infer-prompts {path}: is a directory; give a text file, one prompt per line")
    if not p.is_file():
        raise infer_config.ConfigError(f"--infer-prompts {path}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise infer_config.ConfigError(
            f"--infer-prompts {path}: not UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise infer_config.ConfigError(f"--infer-prompts {path}: cannot read it ({exc.strerror})") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if not prompts:
        raise infer_config.ConfigError(
            f"--infer-prompts {path}: no prompts (one prompt per line, '#' starts a comment)"
        )
    return prompts

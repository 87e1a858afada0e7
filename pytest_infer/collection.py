"""Collection of the bundled suites and parametrization of every pytest-infer test (registered by the plugin as
``infer_collection``): which suite files are collected, the cases of each test (device x dtype x technique,
per family), skips and known upstream defects decided as marks before any fixture runs, perf scenarios
deselected under ``auto``, marker arguments checked, and a technique's tests grouped so its model loads once."""

from __future__ import annotations

import fnmatch
import functools
from pathlib import Path
from typing import Any

import pytest

from pytest_infer.checks.ranks import cached_preflight
from pytest_infer.core.case import Case
from pytest_infer.core.errors import TechniqueError
from pytest_infer.core.known_issues import CHECKS, known_issue
from pytest_infer.core.resources import GOLDEN_FILES, SUITE_FILES, suites_dir
from pytest_infer.core.technique import FAMILIES
from pytest_infer.markers import marker_problem
from pytest_infer.perf.scenarios import TESTS, prefill_lengths, wanted
from pytest_infer.session import InferSession, families
from pytest_infer.techniques.applicability import model_reason, size_reason

CASE_ARGS = ("infer_case", "infer_compiled_case")  # every selected technique / the compiled ones
FAMILY_ARG_SUFFIX = "_technique"  # e.g. attention_technique: the attention family only


class Collection:
    """The collection hooks, bound to the session (its config, registry, selection and stack)."""

    def __init__(self, session: InferSession) -> None:
        self.session = session
        self.pytest_config = session.pytest_config
        self.config = session.config
        self.registry = session.registry
        self.suite_files: set[Path] = set()

    def add_suites(self) -> None:
        """Collect the selected bundled suites: their folder becomes a collection argument (so node ids read
        ``test_parity.py::test_logit_parity[...]``) and the unselected files in it are ignored."""
        if not self.config.suites:
            return
        folder = suites_dir()
        self.suite_files = {folder / f for s in self.config.suites for f in SUITE_FILES[s]}
        if self.config.golden:
            self.suite_files |= {folder / GOLDEN_FILES[s][0] for s in self.config.suites if s in GOLDEN_FILES}
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

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        for argname in metafunc.fixturenames:
            if argname in CASE_ARGS:
                family = None
            elif argname.endswith(FAMILY_ARG_SUFFIX) and argname.removesuffix(FAMILY_ARG_SUFFIX) in FAMILIES:
                family = argname.removesuffix(FAMILY_ARG_SUFFIX)
            else:
                continue
            cases = self.session.cases(family)
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
                self.config.perf_scenarios, {t.family} | families(t, self.registry)
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

        for item in items:
            case = _item_case(item)
            if case is None or item.path not in self.suite_files:
                continue
            prompt_len = item.callspec.params.get("prompt_len")  # type: ignore[attr-defined]  # (a case: parametrized)
            if prompt_len is None:
                continue
            lengths = prefill_lengths(("auto",), {case.technique.family} | families(case.technique, self.registry))
            if lengths is not None and prompt_len not in lengths:
                item.add_marker(pytest.mark.infer_not_selected)

    @staticmethod
    def _check_markers(metafunc: pytest.Metafunc) -> None:
        """A pytest-infer marker with wrong arguments fails the collection of its test (before any model
        loads) instead of failing after the measurement, or silently not applying."""
        for marker in metafunc.definition.iter_markers():
            problem = marker_problem(marker.name, marker.args, marker.kwargs)
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
        order = {c.id: i for i, c in enumerate(self.session.cases())}  # the selection's order
        file_start: dict[Path, int] = {}
        for index, item in enumerate(items):
            file_start.setdefault(item.path, index)
        # a golden test follows its case's tests of the partner file (test_parity.py for test_parity_golden.py):
        # what they computed is handed over, on the same xdist worker too
        folder = suites_dir_cached()
        partner = {folder / golden: folder / other for golden, other in GOLDEN_FILES.values()}

        def key(pair: tuple[int, pytest.Item]) -> tuple[int, int, int, int]:
            index, item = pair
            case = _item_case(item)
            if case is None or item.path not in self.suite_files:
                return (index, 0, 0, 0)  # in place
            follows = partner.get(item.path)
            start = file_start.get(follows, file_start[item.path]) if follows else file_start[item.path]
            return (start, order.get(case.id, len(order)), int(follows in file_start), index)

        items[:] = [item for _, item in sorted(enumerate(items), key=key)]

    def _marks(self, case: Case, check: str | None = None) -> list[pytest.MarkDecorator]:
        stack = self.session.stack_for(case.device)
        reason = case.technique.skip_reason(stack, case.dtype, strict=self.config.strict)
        if reason is None:
            facts = self.session.model_facts
            reason = model_reason(case.technique, facts, stack) or size_reason(
                case.technique, facts, stack, named=case.technique.name in self.config.techniques
            )
        if reason is None and case.technique.runner == "multiprocess":
            s = self.session
            reason = cached_preflight(s.cache, s.source, case, s.config.tp_size, stack.device_count)
        if reason is None:
            issue = known_issue(case.technique.components, check, stack, self.session.model_config) if check else None
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


@functools.lru_cache(maxsize=1)
def suites_dir_cached() -> Path:
    return suites_dir()


def _item_case(item: pytest.Item) -> Case | None:
    """The :class:`Case` a parametrized item runs (None: not a pytest-infer case)."""
    callspec = getattr(item, "callspec", None)
    return next((v for v in callspec.params.values() if isinstance(v, Case)), None) if callspec else None

"""Probes: proof that what a technique installs really ran (:class:`Probe`), checked after every run.

A technique's name and configuration say what was *requested*; a probe counts what *ran*: the calls of a function
the technique installs (an attention function, a kernel entry point), or the forward calls of modules of the loaded
model. ``Technique.active`` (entered around every forward, ``generate`` and ``generate_batch`` call of every check)
judges each probe after the outermost call: a run in which the probe counted no call (or fewer than ``per_forward``
calls per forward of the model) fails with the probe's name, instead of passing on whatever ran instead (a custom
attention that silently fell back to sdpa is bit-identical to sdpa: only a count tells them apart).

Counting is compile-safe: the increment is a ``torch.compiler.disable`` function (a graph break under
``torch.compile``), because a Python counter mutated inside a compiled region is guarded on its value and makes
dynamo recompile on every call until its recompile limit, after which the code runs uncompiled (measured: 8 graphs
in 8 calls, then eager). Nothing here imports torch at module level.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from pytest_infer.core.errors import ExplainedFailure


class ProbeFailure(ExplainedFailure):
    """A probe counted too few calls in a run (or found nothing to count): the message names it and what ran."""


def compile_safe(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` run eagerly even inside a ``torch.compile``\\ d region (a graph break), so that the Python state it
    mutates is never guarded on; ``function`` itself where this torch has no ``torch.compiler.disable``."""
    try:
        import torch
    except ImportError:  # a probe defined where torch is not installed: nothing can be compiled either
        return function
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(function) if disable is not None else function


class Probe:
    """A call counter on something a technique installs, checked after each run of the technique.

    ``what`` names the counted thing in failures ("my_attention kernel"). ``per_forward``: calls expected per forward
    of the technique's model (0: at least one call per run). ``modules``: count the forward calls of the modules of
    the loaded model whose qualified name matches this ``fnmatch`` pattern (``"model.layers.*.mlp"``) or whose class
    is named so (``"MyFusedMLP"``); a pattern that matches no module fails the load.

    Example (a model repository's conftest.py)::

        probe = Probe("my_attention kernel", per_forward=1)
        counted = probe.count(my_attention_forward)  # install this one
        registry.add(Technique(..., setup=lambda: AttentionInterface.register("mine", counted), probes=(probe,)))

    :func:`~pytest_infer.techniques.attention.attention_function_technique` declares one for its function.
    """

    def __init__(self, what: str, *, per_forward: int = 0, modules: str | None = None) -> None:
        if not what or not isinstance(what, str):
            raise ValueError("Probe: name what it counts, e.g. Probe('my_attention kernel')")
        if not isinstance(per_forward, int) or per_forward < 0:
            raise ValueError(f"Probe {what!r}: per_forward must be an integer >= 0, got {per_forward!r}")
        self.what = what
        self.per_forward = per_forward
        self.modules = modules
        self.owner = ""  # the technique that declares it (set by Technique)
        self.calls = 0
        self.forwards = 0
        self.last: dict[str, int] = {}  # the last judged run: calls, forwards
        self._models: list[weakref.ref[Any]] = []
        self._depth = 0
        self._problem: str | None = None
        self._tick: Callable[[], None] = self._plain_tick  # made compile-safe before the first judged run
        self._safe = False

    def __repr__(self) -> str:
        return f"Probe({self.what!r})"

    @property
    def label(self) -> str:
        return f"{self.owner}: {self.what}" if self.owner else self.what

    # --- counting -----------------------------------------------------------------------------------------
    def _plain_tick(self) -> None:
        self.calls += 1

    def _make_safe(self) -> None:
        """Make the increment compile-safe (here, not at definition: torch is imported by the time a model runs)."""
        if not self._safe:
            self._tick = compile_safe(self._plain_tick)
            self._safe = True

    def count(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` wrapped to count its calls: install (register) the returned function, not ``function``."""

        @functools.wraps(function)
        def counted(*args: Any, **kwargs: Any) -> Any:
            self._tick()
            return function(*args, **kwargs)

        counted.__infer_probe__ = self  # type: ignore[attr-defined]
        return counted

    def attach(self, model: Any) -> None:
        """After loading (the technique's ``prepare`` done): count the model's forwards, and for a module probe the
        calls of the modules it names (a probe attaches once per model)."""
        if any(ref() is model for ref in self._models):
            return
        self._make_safe()
        if self.modules:
            matched = [
                m
                for name, m in model.named_modules()
                if name and (fnmatch.fnmatchcase(name, self.modules) or type(m).__name__ == self.modules)
            ]
            if not matched:
                kinds = sorted({type(m).__name__ for _, m in model.named_modules()})
                raise ProbeFailure(
                    f"{self.label}: no module of {type(model).__name__} matches {self.modules!r} (by qualified name "
                    f"or class; classes: {', '.join(kinds[:12])}{', ...' if len(kinds) > 12 else ''}): nothing to count"
                )
            hook = compile_safe(lambda _module, _args: self._plain_tick())
            for m in matched:
                m.register_forward_pre_hook(hook)
        self.watch_forwards(model)

    def watch_forwards(self, model: Any) -> None:
        """Count the forward calls of ``model`` (the denominator of ``per_forward``)."""
        self._models = [ref for ref in self._models if ref() is not None]
        self._models.append(weakref.ref(model))

        def forward(_module: Any, _args: Any) -> None:
            self.forwards += 1

        model.register_forward_pre_hook(compile_safe(forward))

    # --- judging a run ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        """Around one call of the technique: the outermost of nested runs is judged when it ends without error
        (read the verdict with :meth:`take_problem`)."""
        self._depth += 1
        if self._depth > 1:
            try:
                yield
            finally:
                self._depth -= 1
            return
        start = self.begin()
        try:
            yield
        finally:
            self._depth -= 1
        self._problem = self.end(start)

    def begin(self) -> Any:
        """What a run starts from (the counts so far)."""
        self._make_safe()
        return (self.calls, self.forwards)

    def end(self, start: Any) -> str | None:
        """The run's problem, if any (None: it passed)."""
        calls, forwards = self.calls - start[0], self.forwards - start[1]
        self.last = {"calls": calls, "forwards": forwards}
        attached = any(ref() is not None for ref in self._models)
        if attached and forwards == 0:
            return None  # this run did not run the technique's model: nothing to judge
        if calls == 0:
            seen = f" in {forwards} forward(s) of the model" if attached else ""
            return (
                f"{self.label} ran 0 times{seen}: the requested code never ran (something else ran in its place, "
                "e.g. a silent fallback)"
            )
        if self.per_forward and calls < self.per_forward * forwards:
            return (
                f"{self.label} ran {calls} times in {forwards} forward(s), expected at least {self.per_forward} per "
                "forward: it ran in only part of the run"
            )
        return None

    def take_problem(self) -> str | None:
        problem, self._problem = self._problem, None
        return problem


def judged(probes: tuple[Probe, ...]) -> contextlib.AbstractContextManager[None]:
    """Every probe's :meth:`Probe.run` around a call; afterwards a :class:`ProbeFailure` with each problem found."""
    return _judged(probes)


@contextlib.contextmanager
def _judged(probes: tuple[Probe, ...]) -> Iterator[None]:
    if not probes:
        yield
        return
    with contextlib.ExitStack() as stack:
        for p in probes:
            stack.enter_context(p.run())
        yield
    problems = [problem for p in probes if (problem := p.take_problem())]
    if problems:
        raise ProbeFailure("\n".join(problems))

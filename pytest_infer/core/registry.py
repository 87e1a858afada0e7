"""The technique registry (built-ins and a model repository's own) and stacking (``sdpa+static``): kwargs merged,
requirements merged, the looser tolerance, contradictions refused."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_infer.core.errors import TechniqueError
from pytest_infer.core.expectation import Expectation
from pytest_infer.core.model_facts import ModelFacts
from pytest_infer.core.stack import ByStack, Stack
from pytest_infer.core.technique import RUNNERS, ContextFactory, Technique
from pytest_infer.core.tolerance import Tolerance

_RUNNER_ORDER = {r: i for i, r in enumerate(RUNNERS)}


def _merge_kwargs(kind: str, a: Technique, b: Technique, x: Mapping[str, Any], y: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(x)
    for k, v in y.items():
        if k in out and out[k] != v:
            raise TechniqueError(f"contradictory stack {a.name}+{b.name}: both set {kind} {k} ({out[k]!r} vs {v!r})")
        out[k] = v
    return out


def compose(a: Technique, b: Technique) -> Technique:
    """Stack two techniques (``a+b``); raise :class:`TechniqueError` when they contradict each other."""
    if set(a.components) & set(b.components):
        raise TechniqueError(f"stack {a.name}+{b.name} names {', '.join(set(a.components) & set(b.components))} twice")
    load = _merge_kwargs("from_pretrained", a, b, a.load_kwargs, b.load_kwargs)
    gen = _merge_kwargs("generate", a, b, a.generate_kwargs, b.generate_kwargs)
    try:
        req = a.requirements.merge(b.requirements)
    except ValueError as exc:
        raise TechniqueError(f"contradictory stack {a.name}+{b.name}: {exc}") from None
    for one, two in ((a, b), (b, a)):
        if one.runner == "multiprocess" and two.runner == "generate_batch":
            raise TechniqueError(
                f"contradictory stack {a.name}+{b.name}: {one.name} runs ranks, {two.name} needs generate_batch"
            )
    if a.effective_attention and b.effective_attention and not (a.effective_attention & b.effective_attention):
        raise TechniqueError(f"contradictory stack {a.name}+{b.name}: two attention implementations")
    tolerances: dict[str, Tolerance | ByStack[Tolerance]] = dict(a.tolerances)
    for d, t in b.tolerances.items():
        mine = tolerances.get(d)
        if isinstance(mine, Tolerance) and isinstance(t, Tolerance):
            tolerances[d] = mine.looser(t)
        elif mine is None:
            tolerances[d] = t
        else:  # per-stack values on either side: resolved later, the looser wins then
            tolerances[d] = ByStack({"default": _StackedTolerance(mine, t)})  # type: ignore[dict-item]

    ctx_a, ctx_b = a.context, b.context
    context: ContextFactory | None
    if ctx_a and ctx_b:

        @contextlib.contextmanager
        def context_both() -> Iterator[None]:
            with ctx_a(), ctx_b():
                yield

        context = context_both
    else:
        context = ctx_a or ctx_b

    setups = [s for s in (a.setup, b.setup) if s is not None]
    prepares = [p for p in (a.prepare, b.prepare) if p is not None]
    checks = [c for c in (a.dtype_check, b.dtype_check) if c is not None]
    applies = [f for f in (a.applies, b.applies) if f is not None]

    def setup() -> None:
        for s in setups:
            s()

    def prepare(model: Any) -> Any:
        for p in prepares:
            model = p(model)
        return model

    def dtype_check(kind: str, dtype: str) -> str | None:
        return next((r for c in checks if (r := c(kind, dtype)) is not None), None)

    def applies_both(facts: ModelFacts, stack: Stack) -> str | None:
        return next((r for f in applies if (r := f(facts, stack)) is not None), None)

    return Technique(
        name=f"{a.name}+{b.name}",
        family="stack",
        description=f"{a.name} stacked with {b.name}",
        load_kwargs=load,
        generate_kwargs=gen,
        requirements=req,
        tolerances=tolerances,
        expectations=_stacked_expectations(a.expectations, b.expectations),
        runner=max(a.runner, b.runner, key=_RUNNER_ORDER.__getitem__),
        context=context,
        setup=setup if setups else None,
        prepare=prepare if prepares else None,
        dtype_check=dtype_check if checks else None,
        applies=applies_both if applies else None,
        effective_attention=a.effective_attention or b.effective_attention,
        padded_batches=a.padded_batches and b.padded_batches,
        compiled=a.compiled or b.compiled,
        inference_mode=a.inference_mode and b.inference_mode,
        components=a.components + b.components,
        probes=tuple(dict.fromkeys(a.probes + b.probes)),
        batch_invariant=a.batch_invariant and b.batch_invariant,
    )


@dataclass(frozen=True)
class _StackedTolerance:
    """Two per-stack tolerances of stacked techniques, resolved to the looser one for a given stack."""

    a: Tolerance | ByStack[Tolerance]
    b: Tolerance | ByStack[Tolerance]

    def resolve(self, stack: Stack) -> Tolerance | None:
        ta, tb = resolve_tolerance(self.a, stack), resolve_tolerance(self.b, stack)
        if ta is None or tb is None:
            return ta or tb
        return ta.looser(tb)


def resolve_tolerance(value: Any, stack: Stack) -> Tolerance | None:
    """A technique's tolerance entry (plain, per stack, or stacked) for ``stack``."""
    if isinstance(value, ByStack):
        value = value.select(stack)
    if isinstance(value, _StackedTolerance):
        return value.resolve(stack)
    return value


class Registry:
    """Techniques by name; selections by name, family, ``all`` or stack (``sdpa+static``)."""

    def __init__(self, techniques: Iterable[Technique] = ()) -> None:
        self._techniques: dict[str, Technique] = {}
        for t in techniques:
            self.add(t)

    def add(self, technique: Technique, *, replace: bool = False) -> None:
        if not isinstance(technique, Technique):
            raise TechniqueError(
                f"registry.add expects a pytest_infer.Technique, got {type(technique).__name__}: {technique!r}"
            )
        if technique.name in self._techniques and not replace:
            raise TechniqueError(f"technique {technique.name!r} is already registered (pass replace=True to override)")
        self._techniques[technique.name] = technique

    def __contains__(self, name: object) -> bool:
        return name in self._techniques

    def __iter__(self) -> Iterator[Technique]:
        return iter(self._techniques.values())

    def __len__(self) -> int:
        return len(self._techniques)

    def names(self) -> list[str]:
        return list(self._techniques)

    def families(self) -> list[str]:
        return list(dict.fromkeys(t.family for t in self))

    def get(self, name: str) -> Technique:
        """A registered technique or a stack of them (``a+b+c``)."""
        if "+" in name:
            parts = [p.strip() for p in name.split("+")]
            if not all(parts):
                raise TechniqueError(f"technique stack {name!r}: empty component")
            result = self.get(parts[0])
            for p in parts[1:]:
                result = compose(result, self.get(p))
            return result
        try:
            return self._techniques[name]
        except KeyError:
            raise TechniqueError(self._unknown(name)) from None

    def _unknown(self, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(name, self.names() + self.families(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return (
            f"unknown technique {name!r}{hint}; valid techniques: {', '.join(self.names())}; "
            f"families: {', '.join(self.families())}; or 'all', or a stack like sdpa+static"
        )

    def select(self, selection: Iterable[str]) -> list[Technique]:
        """Resolve ``--infer-technique`` entries (names, families, stacks, ``all``) in a stable order."""
        chosen: dict[str, Technique] = {}
        for entry in selection:
            entry = entry.strip()
            if entry == "all":
                chosen.update((t.name, t) for t in self)
            elif entry in self.families() and entry not in self._techniques:
                chosen.update((t.name, t) for t in self if t.family == entry)
            else:
                t = self.get(entry)
                chosen[t.name] = t
        return list(chosen.values())


def _stacked_expectations(a: tuple[Expectation, ...], b: tuple[Expectation, ...]) -> tuple[Expectation, ...]:
    """Both sides' expectations; where both state a perplexity-ratio budget valid everywhere, the stack's is their
    product (two lossy formats compound their cost) in place of either."""
    quality = [[e for e in side if e.metric == "perplexity_ratio" and not e.stacks and not e.dtypes] for side in (a, b)]
    if not all(quality):
        return a + b
    budget = Expectation("perplexity_ratio", "<=", quality[0][0].value * quality[1][0].value)
    return (*(e for e in a + b if e not in quality[0] + quality[1]), budget)

"""Techniques as data: what an optimization sets, what it needs, how close it must stay, what it must buy.

A :class:`Technique` is one inference optimization (``sdpa``, ``static``, ``bnb_4bit``...). Stacked
techniques (``sdpa+static``) are composed by :func:`compose`: keyword arguments are merged (a key set
twice to different values is a contradiction), requirements are merged (both must hold), tolerances
take the looser bound of the two. The :class:`Registry` holds the built-ins and whatever a model
repository adds through the ``pytest_infer_register_techniques`` hook.

Nothing here imports torch or transformers; callables stored on a technique import them when run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pytest_infer.stack import Requirements, Stack

T = TypeVar("T")

RUNNERS = ("forward", "generate", "generate_batch", "multiprocess")
FAMILIES = (
    "attention",
    "compilation",
    "kernels",
    "quantization",
    "caching",
    "parallelism",
    "batching",
    "stack",
    "custom",
)
TOLERANCE_METRICS = (
    "max_abs",
    "mean_abs",
    "max_kl",
    "mean_kl",
    "min_cosine",
    "min_top1",
    "tie_margin",
    "min_greedy",
)


class TechniqueError(ValueError):
    """A technique, a selection or a stack of techniques is invalid; the message says why."""


@dataclass(frozen=True)
class Tolerance:
    """Bounds a candidate's logits must stay within, compared to the reference at real (unpadded) positions.

    ``max_abs`` / ``mean_abs``: absolute logit error; ``max_kl`` / ``mean_kl``: KL(reference || candidate)
    of next-token distributions per position; ``min_cosine``: per-row cosine similarity of logits;
    ``min_top1``: share of *decisive* positions (reference top-1/top-2 margin >= ``tie_margin``) where
    both pick the same token. ``None`` leaves a metric unchecked.

    ``min_greedy`` is for lossy techniques (quantization): greedy generation then passes when the share of
    generated tokens that agree with the reference before their row diverges (near-tie rows count in full)
    is at least this, instead of requiring every row to match. ``None`` (the default): every row must match
    up to near-ties.
    """

    max_abs: float | None = None
    mean_abs: float | None = None
    max_kl: float | None = None
    mean_kl: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = 1.0
    tie_margin: float = 0.0
    min_greedy: float | None = None

    def looser(self, other: Tolerance) -> Tolerance:
        """The bound that admits both (used when stacking techniques)."""

        def pick(a: float | None, b: float | None, upper: bool) -> float | None:
            if a is None or b is None:
                return None
            return max(a, b) if upper else min(a, b)

        return Tolerance(
            max_abs=pick(self.max_abs, other.max_abs, True),
            mean_abs=pick(self.mean_abs, other.mean_abs, True),
            max_kl=pick(self.max_kl, other.max_kl, True),
            mean_kl=pick(self.mean_kl, other.mean_kl, True),
            min_cosine=pick(self.min_cosine, other.min_cosine, False),
            min_top1=pick(self.min_top1, other.min_top1, False),
            tie_margin=max(self.tie_margin, other.tie_margin),
            min_greedy=_min_greedy(self.min_greedy, other.min_greedy),
        )

    def replace(self, **changes: float | None) -> Tolerance:
        unknown = set(changes) - set(TOLERANCE_METRICS)
        if unknown:
            raise TechniqueError(
                f"unknown tolerance metric(s) {', '.join(sorted(unknown))}; valid: {', '.join(TOLERANCE_METRICS)}"
            )
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


def _min_greedy(a: float | None, b: float | None) -> float | None:
    """Exact matching (None) is the strictest: the looser of a bound and None is the bound."""
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def parse_tolerance_spec(spec: str) -> tuple[str | None, str | None, dict[str, float | None]]:
    """``"sdpa:bfloat16:max_abs=0.2,min_top1=0.99"`` -> ("sdpa", "bfloat16", {...}).

    The technique and dtype prefixes are optional; ``none`` clears a bound.
    """
    from pytest_infer.config import DTYPES, normalize_dtype

    *parts, body = spec.strip().split(":")
    technique: str | None = None
    dtype: str | None = None
    for p in parts:
        if p.lower() in DTYPES or p.lower() in {"fp32", "bf16", "fp16", "half", "float"}:
            dtype = normalize_dtype(p)
        elif technique is None:
            technique = p
        else:
            raise TechniqueError(f"tolerance {spec!r}: expected [TECHNIQUE:][DTYPE:]metric=value")
    values: dict[str, float | None] = {}
    for item in body.split(","):
        if not item.strip():
            continue
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in TOLERANCE_METRICS:
            raise TechniqueError(
                f"tolerance {spec!r}: {item.strip()!r} is not metric=value; metrics: {', '.join(TOLERANCE_METRICS)}"
            )
        raw = raw.strip()
        try:
            number = None if raw.lower() == "none" else float(raw)
        except ValueError:
            raise TechniqueError(f"tolerance {spec!r}: {raw!r} is not a number (or 'none')") from None
        values[key] = number
        if number is not None and (math.isnan(number) or number < 0):
            raise TechniqueError(f"tolerance {spec!r}: {key} must be a non-negative number")
    if not values:
        raise TechniqueError(f"tolerance {spec!r}: no metric=value given")
    return technique, dtype, values


@dataclass(frozen=True)
class Expectation:
    """What a technique must buy, as a ratio against a baseline technique measured in the same session.

    ``metric`` is e.g. ``decode_speedup`` or ``weight_memory_ratio``; ``op`` is ``>=`` or ``<=``;
    ``stacks`` restricts it to stack keys such as ``cuda``, ``cuda:9.0`` (device kind and compute
    capability; the most specific match wins) — empty means everywhere.
    """

    metric: str
    op: str
    value: float
    stacks: tuple[str, ...] = ()
    baseline: str | None = None
    dtypes: tuple[str, ...] = ()  # the run dtypes it applies to; empty: all

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise TechniqueError(f"expectation {self.metric}: op must be '>=' or '<=', got {self.op!r}")
        object.__setattr__(self, "stacks", tuple(self.stacks))
        object.__setattr__(self, "dtypes", tuple(self.dtypes))

    def specificity(self, stack: Stack) -> int:
        """-1 when it does not apply to ``stack``; else how specific the best matching key is."""
        if not self.stacks:
            return 0
        return max(stack_key_specificity(k, stack) for k in self.stacks)

    def holds(self, measured: float) -> bool:
        return measured >= self.value if self.op == ">=" else measured <= self.value


def stack_key_specificity(key: str, stack: Stack) -> int:
    """How well ``key`` ("default", "cuda", "cuda:9", "cuda:9.0") matches ``stack``: -1 no match, 0..3."""
    if key in ("default", "*", ""):
        return 0
    kind, _, cap = key.partition(":")
    if kind != stack.device_kind:
        return -1
    cc = stack.compute_capability
    if not cap:
        return 1
    if cc is not None and cap == f"{cc[0]}.{cc[1]}":
        return 3
    if cc is not None and cap == str(cc[0]):
        return 2
    return -1


class ByStack(Generic[T]):
    """Values that differ by stack, best match wins (like ``transformers.testing_utils.Expectations``).

    Example::

        ByStack({"default": Tolerance(max_abs=0.5), "cuda:9.0": Tolerance(max_abs=0.8)})
    """

    def __init__(self, values: Mapping[str, T]) -> None:
        if not values:
            raise TechniqueError("ByStack needs at least one stack key")
        self.values = dict(values)

    def select(self, stack: Stack) -> T | None:
        scored = [(stack_key_specificity(k, stack), v) for k, v in self.values.items()]
        scored = [(s, v) for s, v in scored if s >= 0]
        return max(scored, key=lambda sv: sv[0])[1] if scored else None

    def __repr__(self) -> str:
        return f"ByStack({self.values!r})"


def select_expectations(
    expectations: Iterable[Expectation], stack: Stack, dtype: str | None = None
) -> list[Expectation]:
    """Per metric, the expectation whose stack key matches ``stack`` most specifically (among those for
    ``dtype``, when given)."""
    best: dict[str, tuple[int, Expectation]] = {}
    for e in expectations:
        if dtype is not None and e.dtypes and dtype not in e.dtypes:
            continue
        s = e.specificity(stack)
        if s >= 0 and (e.metric not in best or s > best[e.metric][0]):
            best[e.metric] = (s, e)
    return [e for _, e in best.values()]


class Lazy:
    """A keyword-argument value built when it is used, not when the technique is defined (so defining
    built-ins imports neither torch nor transformers). ``factory`` may take the run's context:
    ``factory(needed_length=...)``."""

    def __init__(self, factory: Callable[..., Any], description: str = "") -> None:
        self.factory = factory
        self.description = description or getattr(factory, "__name__", "lazy")

    def resolve(self, **context: Any) -> Any:
        import inspect

        params = inspect.signature(self.factory).parameters
        accepted = {k: v for k, v in context.items() if k in params}
        return self.factory(**accepted)

    def __repr__(self) -> str:
        return f"Lazy({self.description})"


def resolve_kwargs(kwargs: Mapping[str, Any], **context: Any) -> dict[str, Any]:
    """Keyword arguments with every :class:`Lazy` value built (``context`` is offered to the factories).

    Dicts and lists are copied: a callee that mutates its arguments (``generate`` once consumed the keys
    of ``cache_config``) must not change the technique's definition for the tests that follow."""
    import copy

    return {
        k: v.resolve(**context) if isinstance(v, Lazy) else copy.deepcopy(v) if isinstance(v, (dict, list)) else v
        for k, v in kwargs.items()
    }


ContextFactory = Callable[[], contextlib.AbstractContextManager[Any]]
Prepare = Callable[[Any], Any]  # model -> model (compile, kernelize...)


@dataclass(frozen=True)
class Technique:
    """One inference optimization as data.

    Example::

        Technique(
            name="sdpa_math", family="attention",
            load_kwargs={"attn_implementation": "sdpa"},
            context=lambda: sdpa_kernel([SDPBackend.MATH]),
        )
    """

    name: str
    family: str
    description: str = ""
    load_kwargs: Mapping[str, Any] = field(default_factory=dict)
    generate_kwargs: Mapping[str, Any] = field(default_factory=dict)
    requirements: Requirements = field(default_factory=Requirements)
    tolerances: Mapping[str, Tolerance | ByStack[Tolerance]] = field(default_factory=dict)  # dtype -> fixed bounds
    expectations: tuple[Expectation, ...] = ()
    runner: str = "forward"
    context: ContextFactory | None = None  # entered around every forward / generate call
    setup: Callable[[], None] | None = None  # global, idempotent registration before loading
    prepare: Prepare | None = None  # applied to the loaded model
    dtype_check: Callable[[str, str], str | None] | None = None  # (device kind, dtype) -> reason
    effective_attention: frozenset[str] | None = None  # accepted config._attn_implementation after load
    padded_batches: bool = True  # False: prompts are run one at a time (kernels without mask support)
    compiled: bool = False  # runs through torch.compile: the recompile guard applies
    inference_mode: bool = True  # False: calls run under torch.no_grad() (tensors that reject inference mode)
    components: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in " []/,;:"):
            raise TechniqueError(f"technique name {self.name!r}: use letters, digits, '_', '-', '|', '.' only")
        if self.family not in FAMILIES:
            raise TechniqueError(f"technique {self.name}: unknown family {self.family!r}; valid: {', '.join(FAMILIES)}")
        if self.runner not in RUNNERS:
            raise TechniqueError(f"technique {self.name}: unknown runner {self.runner!r}; valid: {', '.join(RUNNERS)}")
        if not self.components:
            object.__setattr__(self, "components", (self.name,))

    @property
    def test_id(self) -> str:
        return self.name

    def skip_reason(self, stack: Stack, dtype: str) -> str | None:
        reason = self.requirements.check(stack)
        if reason is None and self.dtype_check is not None:
            reason = self.dtype_check(stack.device_kind, dtype)
        return reason

    def load_signature(self) -> tuple[Any, ...]:
        """What makes two loads of the same model different (the session cache key)."""
        kwargs = tuple(sorted((k, repr(v)) for k, v in self.load_kwargs.items()))
        return (kwargs, self.name if self.prepare is not None else None)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self.context is None:
            yield
        else:
            with self.context():
                yield

    @contextlib.contextmanager
    def no_grad(self) -> Iterator[None]:
        """``torch.inference_mode()``, or ``torch.no_grad()`` for techniques that reject inference mode."""
        import torch

        with torch.inference_mode() if self.inference_mode else torch.no_grad():
            yield

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "load_kwargs": {
                k: repr(v) if not isinstance(v, (str, int, float, bool)) else v for k, v in self.load_kwargs.items()
            },
            "generate_kwargs": {
                k: repr(v) if not isinstance(v, (str, int, float, bool)) else v for k, v in self.generate_kwargs.items()
            },
            "requirements": self.requirements.describe(),
            "runner": self.runner,
            "components": list(self.components),
        }


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

    def setup() -> None:
        for s in setups:
            s()

    def prepare(model: Any) -> Any:
        for p in prepares:
            model = p(model)
        return model

    def dtype_check(kind: str, dtype: str) -> str | None:
        return next((r for c in checks if (r := c(kind, dtype)) is not None), None)

    return Technique(
        name=f"{a.name}+{b.name}",
        family="stack",
        description=f"{a.name} stacked with {b.name}",
        load_kwargs=load,
        generate_kwargs=gen,
        requirements=req,
        tolerances=tolerances,
        expectations=a.expectations + b.expectations,
        runner=max(a.runner, b.runner, key=_RUNNER_ORDER.__getitem__),
        context=context,
        setup=setup if setups else None,
        prepare=prepare if prepares else None,
        dtype_check=dtype_check if checks else None,
        effective_attention=a.effective_attention or b.effective_attention,
        padded_batches=a.padded_batches and b.padded_batches,
        compiled=a.compiled or b.compiled,
        inference_mode=a.inference_mode and b.inference_mode,
        components=a.components + b.components,
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

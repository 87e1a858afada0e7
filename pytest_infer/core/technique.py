"""A technique as data: what an optimization sets, what it needs, how close it must stay, what it must buy.

A :class:`Technique` is one inference optimization (``sdpa``, ``static``, ``bnb_4bit``...); stacking and the
registry are in :mod:`pytest_infer.core.registry`. Nothing here imports torch or transformers; callables stored
on a technique import them when run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_infer.core.errors import TechniqueError
from pytest_infer.core.expectation import Expectation
from pytest_infer.core.model_facts import ModelFacts
from pytest_infer.core.probe import Probe, judged
from pytest_infer.core.requirements import Requirements
from pytest_infer.core.stack import ByStack, Stack
from pytest_infer.core.tolerance import Tolerance

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
    # (model facts, stack) -> why this technique does not apply to this model (None: it does); see
    # pytest_infer.techniques.applicability for the rules every technique gets from what it sets
    applies: Callable[[ModelFacts, Stack], str | None] | None = None
    effective_attention: frozenset[str] | None = None  # accepted config._attn_implementation after load
    padded_batches: bool = True  # False: prompts are run one at a time (kernels without mask support)
    compiled: bool = False  # runs through torch.compile: the recompile guard applies
    inference_mode: bool = True  # False: calls run under torch.no_grad() (tensors that reject inference mode)
    components: tuple[str, ...] = ()
    # call counters on what it installs, judged after every run: 0 calls of the requested code fails (core/probe.py)
    probes: tuple[Probe, ...] = ()
    batch_invariant: bool = False  # promises bitwise batch invariance: the batch-invariance check compares bits

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in " []/,;:"):
            raise TechniqueError(f"technique name {self.name!r}: use letters, digits, '_', '-', '|', '.' only")
        if self.family not in FAMILIES:
            raise TechniqueError(f"technique {self.name}: unknown family {self.family!r}; valid: {', '.join(FAMILIES)}")
        if self.runner not in RUNNERS:
            raise TechniqueError(f"technique {self.name}: unknown runner {self.runner!r}; valid: {', '.join(RUNNERS)}")
        if not self.components:
            object.__setattr__(self, "components", (self.name,))
        probes = tuple(self.probes) if isinstance(self.probes, (tuple, list)) else (self.probes,)
        for p in probes:
            if not isinstance(p, Probe):
                raise TechniqueError(
                    f"technique {self.name}: probes must be pytest_infer.Probe objects, got {type(p).__name__}: {p!r}"
                )
            p.owner = p.owner or self.name
        object.__setattr__(self, "probes", probes)

    @property
    def test_id(self) -> str:
        return self.name

    def skip_reason(self, stack: Stack, dtype: str, *, strict: bool = False) -> str | None:
        """Why this technique cannot run on ``stack`` in ``dtype`` (None: it can); ``strict`` adds the checks
        that apply only under ``--infer-strict``."""
        reason = self.requirements.check(stack, strict=strict)
        if reason is None and self.dtype_check is not None:
            reason = self.dtype_check(stack.device_kind, dtype)
        return reason

    def load_signature(self) -> tuple[Any, ...]:
        """What makes two loads of the same model different (the session cache key)."""
        kwargs = tuple(sorted((k, repr(v)) for k, v in self.load_kwargs.items()))
        return (kwargs, self.name if self.prepare is not None else None)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Around one call (forward, generate, generate_batch): the technique's context entered, and its probes judged
        when the call returns (a :class:`~pytest_infer.core.probe.ProbeFailure` names what never ran)."""
        with judged(self.probes):
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
            "probes": [p.label for p in self.probes],
        }

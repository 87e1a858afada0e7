"""What a check needs from the session and its test, and nothing else (:class:`CheckContext`): plain values and
callables the pytest layer fills in, so that no check reaches up into the session or pytest.

Session-wide: the resolved config, the registry, the reference technique, the model source, the model cache, the
stack per device, the progress steps, where results are recorded, the tolerance hook, what the ranks of a
multi-process technique must import, pytest-benchmark's stored runs. Per test: its pytest-infer markers and where
its report section goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pytest_infer.core.case import Case
from pytest_infer.core.config import InferConfig
from pytest_infer.core.registry import Registry
from pytest_infer.core.stack import Stack
from pytest_infer.core.technique import Technique
from pytest_infer.core.tolerance import Tolerance
from pytest_infer.runtime.loading import ModelSource
from pytest_infer.runtime.model_cache import ModelCache


class StoredRuns(Protocol):
    """pytest-benchmark's stored run this session compares with (``--benchmark-compare``'s, else the newest of the
    stack)."""

    stored_source: str

    def stored_metrics(self, fullname: str) -> dict[str, float] | None: ...


def _no_step(what: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


@dataclass
class CheckContext:
    """The narrow view a check has of its session and test (built by the pytest layer, one per test)."""

    config: InferConfig
    registry: Registry
    reference: Technique
    source: ModelSource
    cache: ModelCache
    tokenizer: Any
    prompts: tuple[str, ...]
    stack_for: Callable[[str], Stack]
    # where a result goes: (its JSON dict, the report section of a passed check or None)
    record: Callable[[dict[str, Any], str | None], None] = lambda data, section: None
    step: Callable[[str], AbstractContextManager[None]] = _no_step  # a progress line while a step runs long
    # this test's pytest-infer markers by name (infer_tolerance, infer_speedup, infer_memory): kwargs, closest first
    markers: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    tolerance_hook: Callable[[Case, Tolerance], Tolerance | None] | None = None  # pytest_infer_tolerance
    rank_plugins: Sequence[Mapping[str, str | None]] = ()  # modules registering techniques, imported by the ranks
    first_calls: MutableMapping[Any, dict[str, float]] = field(default_factory=dict)  # perf: baselines' first calls
    stored_runs: StoredRuns | None = None  # perf: pytest-benchmark's stored run (--infer-compare-fail)
    benchmark_loaded: bool = False  # perf: pytest-benchmark is loaded in this session
    xdist_worker: bool = False  # perf: this process is a pytest-xdist worker (pytest-benchmark disables itself)
    padding: str = ""  # the padding sweep this session runs (--infer-padding, 'auto' resolved by model size)

    def ref_case(self, device: str, dtype: str | None = None) -> Case:
        """The reference on ``device``, in ``dtype`` (default: the reference dtype)."""
        return Case(self.reference, device, dtype or self.config.reference_dtype)

    def baseline_case(self, case: Case) -> Case:
        """The technique the speed and memory of ``case`` are measured against (default: the reference)."""
        return Case(self.registry.get(self.config.baseline or self.config.reference), case.device, case.dtype)

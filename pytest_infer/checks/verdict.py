"""Where results become test outcomes: the one module below the pytest layer that imports pytest.

A failed result fails its test with the result's message (no traceback: the message is the story); a case that
cannot run is skipped (or fails under ``--infer-strict``); a claim the noise cannot decide is skipped as
INCONCLUSIVE. :func:`guard` wraps a check: a case that raises leaves no state behind for the next test, an
out-of-memory says what was asked and what was freed, and an :class:`~pytest_infer.core.errors.ExplainedFailure`
fails without a traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

import pytest

from pytest_infer.core.case import Case
from pytest_infer.core.errors import ExplainedFailure
from pytest_infer.core.redact import mask
from pytest_infer.runtime.capabilities import architecture_reason
from pytest_infer.runtime.memory import out_of_memory_message
from pytest_infer.runtime.model_cache import ModelCache

R = TypeVar("R")


def fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def skip(reason: str) -> NoReturn:
    pytest.skip(reason)


def unsupported(reason: str, strict: bool) -> NoReturn:
    """A case this stack cannot run: skipped with the reason, or a failure under ``--infer-strict``."""
    if strict:
        fail(f"--infer-strict: {reason}")
    skip(reason)


def inconclusive(message: str) -> NoReturn:
    pytest.skip(f"INCONCLUSIVE (noise too large to decide): {message}")


def passed(results: Sequence[R]) -> list[R]:
    """Every result passed: return them; otherwise fail the test with the failed ones' messages."""
    failed = [r for r in results if not r.passed]  # type: ignore[attr-defined]
    if failed:
        fail("\n\n".join(r.message() for r in failed))  # type: ignore[attr-defined]
    return list(results)


def is_verdict(exc: BaseException) -> bool:
    """A test outcome already decided (failed, skipped), not a broken model."""
    return isinstance(exc, (pytest.fail.Exception, pytest.skip.Exception))


@contextlib.contextmanager
def guard(cache: ModelCache, case: Case, key: Hashable, *, strict: bool = False) -> Iterator[None]:
    """A case that raises leaves no state behind for the next test: its model (``key`` in ``cache``) is dropped (a
    failed compile can break later calls of the same model), and where the technique compiles the model,
    torch.compile's caches of this process are reset too. Other techniques' failures keep them: a reset costs
    every compiled model after it a full recompile, and a fresh model is not affected by another's failed compile
    (checked on the flex_attention CPU defect, docs/known-issues.md). An error Transformers raises because this
    architecture cannot take the technique (:func:`~pytest_infer.runtime.capabilities.architecture_reason`) is an
    unsupported case: a skip with the reason, a failure under ``--infer-strict``."""
    try:
        yield
    except BaseException as exc:
        if is_verdict(exc):
            raise  # a verdict (parity failed, inconclusive), not a broken model: keep it and the compile caches
        before = _allocated(case.device)
        cache.discard(key)
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is not None and case.technique.compiled:
            dynamo.reset()
        if type(exc).__name__ == "OutOfMemoryError":
            exc.__traceback__ = None  # its frames hold the tensors of the failed call
            after = _allocated(case.device)
            freed = None if before is None or after is None else before - after
            message = f"{case.technique.name}: {out_of_memory_message(exc, case.device, freed)}"
            raise pytest.fail.Exception(message, pytrace=False) from None
        reason = architecture_reason(exc)
        if reason is not None:
            message = f"{case.technique.name}: this architecture does not take it: {reason}"
            if strict:
                raise pytest.fail.Exception(f"--infer-strict: {message}", pytrace=False) from None
            raise pytest.skip.Exception(message) from None
        if isinstance(exc, ExplainedFailure):
            raise pytest.fail.Exception(mask(str(exc)), pytrace=False) from None
        raise


def _allocated(device: str) -> int | None:
    """Device memory allocated now (cuda), after freeing what a failed case left behind; None elsewhere."""
    torch: Any = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_initialized():
        return None
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    return int(torch.cuda.memory_allocated(device))

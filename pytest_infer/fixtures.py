"""The fixtures, thin: each hands out a piece of the session (config, stack, model, prompts, reference)
or a check bound to the current test. The parametrized ones (``infer_case`` and one per family, e.g.
``attention_technique``) are parametrized by :mod:`pytest_infer.collection`.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_infer.checks.batching import BatchingChecks
from pytest_infer.checks.models import CaseModels
from pytest_infer.checks.parity import ParityChecks
from pytest_infer.checks.perf import PerfChecks
from pytest_infer.core.config import InferConfig
from pytest_infer.core.registry import Registry
from pytest_infer.core.stack import Stack
from pytest_infer.session import SESSION_KEY, InferSession


def _session(request: pytest.FixtureRequest) -> InferSession:
    return request.config.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def infer_session(request: pytest.FixtureRequest) -> InferSession:
    """The pytest-infer session: config, registry, stack, model cache and results."""
    return _session(request)


@pytest.fixture(scope="session")
def infer_config(infer_session: InferSession) -> InferConfig:
    """The resolved configuration (command line, then ini, then defaults)."""
    return infer_session.config


@pytest.fixture(scope="session")
def infer_stack(infer_session: InferSession) -> Stack:
    """The :class:`~pytest_infer.core.stack.Stack` fingerprint of the first selected device."""
    return infer_session.stack


@pytest.fixture(scope="session")
def infer_registry(infer_session: InferSession) -> Registry:
    """Every known technique (built-ins and those added through the hook)."""
    return infer_session.registry


@pytest.fixture(scope="session")
def infer_prompts(infer_session: InferSession) -> tuple[str, ...]:
    """The prompt set (``--infer-prompts`` or the bundled default). Override this fixture to use your own."""
    return infer_session.prompts


@pytest.fixture(scope="session")
def infer_tokenizer(infer_session: InferSession) -> Any:
    """The model's tokenizer, left padding."""
    return infer_session.tokenizer()


@pytest.fixture(scope="session")
def infer_model_loader(infer_session: InferSession, infer_tokenizer: Any, infer_prompts: tuple[str, ...]) -> Any:
    """``infer_model_loader(case)`` -> the model with the case's technique applied (from the session cache)."""
    return CaseModels(infer_session.check_context(None, infer_tokenizer, infer_prompts)).model


@pytest.fixture
def infer_perf(infer_parity: ParityChecks) -> PerfChecks:
    """Speed/memory checks bound to this test: ``infer_perf.assert_decode(case, benchmark)``."""
    return PerfChecks(infer_parity)


@pytest.fixture
def infer_parity(
    infer_session: InferSession, request: pytest.FixtureRequest, infer_tokenizer: Any, infer_prompts: tuple[str, ...]
) -> ParityChecks:
    """The parity checks, bound to this test (its markers, its report):

    ``infer_parity.assert_logits(case)``, ``.assert_padding(case)``, ``.assert_generation(case)`` fail the
    test with the result's message; ``.logits(case)`` etc. return the result objects.
    """
    return ParityChecks(infer_session.check_context(request.node, infer_tokenizer, infer_prompts))


@pytest.fixture
def infer_batching(infer_parity: ParityChecks) -> BatchingChecks:
    """The continuous-batching checks bound to this test: ``infer_batching.assert_budget_parity(case)``."""
    return BatchingChecks(infer_parity)

"""The fixtures, thin: each hands out a piece of the session (config, stack, model, prompts, reference)
or a check bound to the current test. The parametrized ones (``infer_case`` and one per family, e.g.
``attention_technique``) are parametrized by the session's ``pytest_generate_tests``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_infer.session import SESSION_KEY, Case, InferSession

if TYPE_CHECKING:
    from pytest_infer.config import InferConfig
    from pytest_infer.parity import LogitParityResult
    from pytest_infer.stack import Stack
    from pytest_infer.technique import Registry


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
    """The :class:`~pytest_infer.stack.Stack` fingerprint of the first selected device."""
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
    from pytest_infer.models import load_tokenizer

    return infer_session.cache.tensor(("tokenizer", infer_session.source), lambda: load_tokenizer(infer_session.source))


class ModelLoader:
    """Loads the session's model for a case, through the session's bounded cache."""

    def __init__(self, session: InferSession) -> None:
        self._session = session

    def __call__(self, case: Case) -> Any:
        from pytest_infer.models import load_model

        s = self._session
        key = (s.source, case.technique.load_signature(), case.dtype, case.device)
        return s.cache.model(key, lambda: load_model(s.source, case.technique, case.dtype, case.device))


@pytest.fixture(scope="session")
def infer_model_loader(infer_session: InferSession) -> ModelLoader:
    """``infer_model_loader(case)`` -> the model with the case's technique applied (cached)."""
    return ModelLoader(infer_session)


class LogitParity:
    """Logit parity of a case against the session's reference; bound to the requesting test."""

    def __init__(self, session: InferSession, request: pytest.FixtureRequest, tokenizer: Any, prompts: tuple[str, ...]) -> None:
        self._session = session
        self._request = request
        self._tokenizer = tokenizer
        self._prompts = prompts

    def reference_logits(self, device: str) -> tuple[Any, Any]:
        """(logits, attention_mask) of the reference technique for the prompts, computed once."""
        from pytest_infer.models import encode, forward_logits

        s = self._session
        ref_case = Case(s.reference, device, s.config.reference_dtype)
        key = ("reference", s.source, s.reference.name, s.config.reference_dtype, device, self._prompts)

        def compute() -> tuple[Any, Any]:
            model = ModelLoader(s)(ref_case)
            batch = encode(self._tokenizer, self._prompts, device)
            return forward_logits(model, batch, s.reference), batch.attention_mask

        return s.cache.tensor(key, compute)

    def check(self, case: Case, model: Any | None = None) -> LogitParityResult:
        """Run ``case`` (or ``model``, already loaded) on the prompts and compare with the reference."""
        from pytest_infer.models import encode, forward_logits
        from pytest_infer.parity import compare_logits

        s = self._session
        marker = self._request.node.get_closest_marker("infer_tolerance")
        tolerance = s.tolerance(case, dict(marker.kwargs) if marker else None)
        ref_logits, mask = self.reference_logits(case.device)
        if model is None:
            model = ModelLoader(s)(case)
        batch = encode(self._tokenizer, self._prompts, case.device)
        logits = forward_logits(model, batch, case.technique)
        result = compare_logits(
            ref_logits,
            logits,
            mask,
            tolerance,
            technique=case.technique.name,
            reference_name=s.reference.name,
            device=case.device,
            dtype=case.dtype,
            reference_dtype=s.config.reference_dtype,
            prompts=self._prompts,
        )
        s.record(result.to_dict())
        self._request.node.user_properties.append(("infer_result", result.to_dict()))
        return result

    def assert_parity(self, case: Case, model: Any | None = None) -> LogitParityResult:
        result = self.check(case, model)
        if not result.passed:
            pytest.fail(result.message(), pytrace=False)
        return result


@pytest.fixture
def infer_parity(
    infer_session: InferSession, request: pytest.FixtureRequest, infer_tokenizer: Any, infer_prompts: tuple[str, ...]
) -> LogitParity:
    """Logit-parity checker: ``infer_parity.assert_parity(case)`` fails the test with the metrics table."""
    return LogitParity(infer_session, request, infer_tokenizer, infer_prompts)

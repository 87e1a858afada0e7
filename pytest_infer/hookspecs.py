"""Hooks a model repository implements in its ``conftest.py`` to extend pytest-infer."""

from __future__ import annotations

import pytest

from pytest_infer.core.registry import Registry
from pytest_infer.core.technique import Technique
from pytest_infer.core.tolerance import Tolerance


def pytest_infer_register_techniques(registry: Registry) -> None:
    """Add techniques to the registry (called once, at configure time).

    Example::

        from pytest_infer import Technique
        from pytest_infer.techniques.attention import attention_function_technique

        def pytest_infer_register_techniques(registry):
            registry.add(attention_function_technique("my_attention", my_attention_forward))
            registry.add(Technique(name="sdpa_bf16_cache", family="custom", load_kwargs={...}))

    Return value is ignored; raise ``pytest_infer.TechniqueError`` for an invalid technique.
    """


@pytest.hookspec(firstresult=True)
def pytest_infer_tolerance(technique: Technique, dtype: str, device: str, default: Tolerance) -> Tolerance | None:
    """Return the tolerance for ``technique`` in ``dtype`` on ``device``, or None to keep ``default``.

    ``default`` already includes the built-in table, the technique's own override and
    ``infer_tolerance`` ini/command-line specs; a ``@pytest.mark.infer_tolerance`` on a test wins over this.

    Example::

        def pytest_infer_tolerance(technique, dtype, device, default):
            if technique.name == "sdpa" and dtype == "bfloat16":
                return default.replace(max_abs=0.5)
    """

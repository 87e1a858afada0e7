"""pytest-infer: prove that Transformers inference optimizations give the same answers and still pay off.

Load with ``pytest -p pytest_infer``. This module stays tiny so that loading the plugin imports
neither torch nor transformers; the hooks live in :mod:`pytest_infer.plugin`.

PYTEST_DONT_REWRITE (the plugin reports through pytest.fail, not assert; this keeps in-process runs quiet)
"""

from __future__ import annotations

from pytest_infer.core.version import __version__

pytest_plugins = ["pytest_infer.plugin"]

_EXPORTS = {
    "Technique": "pytest_infer.core.technique",
    "Lazy": "pytest_infer.core.technique",
    "Probe": "pytest_infer.core.probe",
    "Tolerance": "pytest_infer.core.tolerance",
    "Expectation": "pytest_infer.core.expectation",
    "ByStack": "pytest_infer.core.stack",
    "Registry": "pytest_infer.core.registry",
    "TechniqueError": "pytest_infer.core.errors",
    "compose": "pytest_infer.core.registry",
    "Requirements": "pytest_infer.core.requirements",
    "Stack": "pytest_infer.core.stack",
    "detect_stack": "pytest_infer.core.detect",
    "attention_function_technique": "pytest_infer.techniques.attention",
    "LogitParityResult": "pytest_infer.parity.logits",
    "compare_logits": "pytest_infer.parity.logits",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    # Lazy: `import pytest_infer` (what `-p pytest_infer` does) stays cheap.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pytest_infer' has no attribute {name!r}")

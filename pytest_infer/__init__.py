"""pytest-infer: prove that Transformers inference optimizations give the same answers and still pay off.

Load with ``pytest -p pytest_infer``. This module stays tiny so that loading the plugin imports
neither torch nor transformers; the hooks live in :mod:`pytest_infer.plugin`.

PYTEST_DONT_REWRITE (the plugin reports through pytest.fail, not assert; this keeps in-process runs quiet)
"""

from __future__ import annotations

__version__ = "0.1.0"

pytest_plugins = ["pytest_infer.plugin"]

_EXPORTS = {
    "Technique": "pytest_infer.technique",
    "Tolerance": "pytest_infer.technique",
    "Expectation": "pytest_infer.technique",
    "Registry": "pytest_infer.technique",
    "TechniqueError": "pytest_infer.technique",
    "compose": "pytest_infer.technique",
    "Requirements": "pytest_infer.stack",
    "Stack": "pytest_infer.stack",
    "detect_stack": "pytest_infer.stack",
    "attention_function_technique": "pytest_infer.techniques.attention",
    "LogitParityResult": "pytest_infer.parity",
    "compare_logits": "pytest_infer.parity",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    # Lazy: `import pytest_infer` (what `-p pytest_infer` does) stays cheap.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pytest_infer' has no attribute {name!r}")

"""Shared helpers for the plugin's own tests: real pytest sessions through pytester.

Every inner session runs in a subprocess (``--runpytest=subprocess`` in pyproject): pytester's
in-process mode restores ``sys.modules`` after each run, and torch's native extensions cannot be
imported twice in one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# pytester gives each inner session its own HOME; share one compile cache between them so that
# flex_attention is compiled once per machine, not once per test.
_CACHE = os.environ.get("PYTEST_INFER_TEST_CACHE") or str(Path.home() / ".cache" / "pytest-infer")

# Sessions inside pytester run the real plugin; these flags keep their output predictable.
BASE_ARGS = ("-p", "pytest_infer", "-p", "no:cacheprovider", "--infer-cache-dir", _CACHE)


@pytest.fixture
def run_infer(pytester: pytest.Pytester):
    """Run a pytest session in a subprocess with ``-p pytest_infer`` and return its result."""

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(*BASE_ARGS, *args)

    return run

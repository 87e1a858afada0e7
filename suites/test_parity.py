"""Logit parity of every selected technique against the reference (``--infer-suite parity``).

Parametrized by pytest-infer over device x dtype x technique: ``test_logit_parity[cpu-float32-sdpa]``.
"""

from __future__ import annotations

import pytest


def test_logit_parity(infer_case, infer_parity):
    if infer_case.technique.runner != "forward":
        pytest.skip(
            f"{infer_case.technique.name} runs under {infer_case.technique.runner}: "
            "its outputs are compared token by token in --infer-suite generation"
        )
    infer_parity.assert_parity(infer_case)

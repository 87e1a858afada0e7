"""Logits against the stored goldens (``--infer-suite parity`` with ``--infer-golden DIR``; collected only then).

Each case's log-probabilities at the golden's top-k tokens of every real position must stay within the dtype's
bound tightened to the noise floor, and its top-1 token must not change where the golden's margin is decisive.
The logit parity test of the same case hands its logits over: this test runs no model of its own.
"""

from __future__ import annotations

import pytest


def test_logits_golden(infer_case, infer_parity):
    if infer_case.technique.runner not in ("forward", "multiprocess"):
        pytest.skip(
            f"{infer_case.technique.name} runs under {infer_case.technique.runner}: "
            "its golden holds greedy tokens (--infer-suite generation)"
        )
    infer_parity.assert_golden_logits(infer_case)

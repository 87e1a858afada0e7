"""Greedy tokens against the stored goldens (``--infer-suite generation`` with ``--infer-golden DIR``; collected
only then).

Each case's greedy tokens at the longest ``--infer-new-tokens`` must equal its golden's, except past a step where
the golden's own top-1/top-2 margin was a near-tie. The generation parity test of the same case hands its tokens
over: this test runs no model of its own.
"""

from __future__ import annotations


def test_generation_golden(infer_case, infer_parity):
    infer_parity.assert_golden_generation(infer_case)

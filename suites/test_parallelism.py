"""Tensor-parallel checks (``--infer-suite parity``).

Logits and greedy tokens of a tensor-parallel technique are compared with the single-process reference
by ``test_logit_parity`` and ``test_generation_parity`` (they run the ranks through
:mod:`pytest_infer.checks.ranks`). This file adds what only several ranks can get wrong: every rank must
produce the same greedy tokens, request by request and step by step, and hold the same logits.
Parametrized over the parallelism family: ``test_rank_agreement[cpu-float32-tensor_parallel]``.
"""

from __future__ import annotations


def test_rank_agreement(parallelism_technique, infer_parity):
    """Tokens of every rank for every --infer-new-tokens length, and logits, against rank 0's."""
    infer_parity.assert_rank_agreement(parallelism_technique)

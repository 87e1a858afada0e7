"""Continuous-batching checks (``--infer-suite generation``), per technique of the batching family.

Every request is compared token by token with the reference's per-prompt greedy ``generate``, on the prompt set
grown past one batch's token budget (several forwards, long prompts prefilled in chunks), under an explicit KV
budget; every run also fails on a missing request, another attention than the one requested, a forward over the
budget or an attention implementation left switched (:mod:`pytest_infer.checks.batching`); ``infer_batching`` is the plugin's fixture.
"""

from __future__ import annotations

import pytest


def _batching_only(case) -> None:
    if case.technique.runner != "generate_batch":
        pytest.skip(f"{case.technique.name} runs under {case.technique.runner}, not generate_batch")


def test_budget_exceeding_parity(batching_technique, infer_batching):
    """More prompt tokens than one batch holds, some prompts longer than a batch: scheduling and chunked prefill."""
    _batching_only(batching_technique)
    infer_batching.assert_budget_parity(batching_technique)


def test_repeated_generate_batch(batching_technique, infer_batching):
    """Two generate_batch calls in a row on one model: the second returns every request (a Transformers defect
    once dropped them), and the model's attention implementation is restored after each."""
    _batching_only(batching_technique)
    infer_batching.assert_repeat_calls(batching_technique)


def test_manager_api(batching_technique, infer_batching):
    """The long-lived manager: init_continuous_batching, requests added while it runs, results collected, stop
    (skipped with the reason where this Transformers has no manager API for the model)."""
    _batching_only(batching_technique)
    infer_batching.assert_manager_api(batching_technique)

"""Greedy-generation parity of every selected technique (``--infer-suite generation``).

Each configured length (``--infer-new-tokens``, default 16 and 64) is a separate ``generate`` call, so
cache bugs that depend on ``max_new_tokens`` show; divergences are accepted only at measured near-ties.

The recompile guard comes first: it compiles a fresh model from scratch (it has to count the warm-up's
graphs), and the parity test of the same technique, run next, then reuses that compiled model.
"""

from __future__ import annotations


def test_no_recompiles_after_warmup(infer_compiled_case, infer_parity):
    """Compiled techniques: after warm-up, new prompt lengths and new max_new_tokens do not recompile."""
    infer_parity.assert_no_recompiles(infer_compiled_case)


def test_generation_parity(infer_case, infer_parity):
    infer_parity.assert_generation(infer_case)

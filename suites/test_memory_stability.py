"""Memory stability of every selected technique (``--infer-suite stability``): the same generation repeated, host
RSS and device memory level off after warm-up instead of growing call after call (docs/techniques.md, "Memory
stability")."""

from __future__ import annotations


def test_memory_stability(infer_case, infer_parity):
    infer_parity.assert_memory_stability(infer_case)

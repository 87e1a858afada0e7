"""Sampling reproducibility of every selected technique (``--infer-suite stability``): with a fixed seed the same
tokens run to run, and the reference's wherever their distributions agree (a different draw there is a different
random stream: docs/tolerances.md, "Sampling reproducibility")."""

from __future__ import annotations


def test_sampling_reproducible(infer_case, infer_parity):
    infer_parity.assert_sampling(infer_case)

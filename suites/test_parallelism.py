"""Tensor-parallel checks (``--infer-suite parity``)."""

from __future__ import annotations

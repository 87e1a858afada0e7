"""Continuous-batching checks (``--infer-suite generation``)."""

from __future__ import annotations

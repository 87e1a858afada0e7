"""Judging outputs: logit metrics, padding sweeps, near-tie generation comparison, per-request and per-rank
comparison, the noise floor, layer localisation, and how a bound is decided (:mod:`pytest_infer.parity.bounds`)."""

from __future__ import annotations

"""Speed and memory: device-synchronised timing in paired rounds, paired statistics, the one rule for every
speed and memory claim (:mod:`pytest_infer.perf.claims`), scenarios, and the regression gate."""

from __future__ import annotations

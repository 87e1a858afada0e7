"""Checks: each composes the floors below into a result for one case, through a narrow context object
(:mod:`pytest_infer.checks.context`), and :mod:`pytest_infer.checks.verdict` turns results into pass/fail."""

from __future__ import annotations

"""Plain values and rules, no pytest and no torch at import: dtypes, Case, Technique, Requirements, Tolerance,
Expectation, the registry and stacking, Stack and its detection, known issues, resources."""

from __future__ import annotations

"""Reports built from result dictionaries: the terminal matrix, the JSON document, Markdown, merge across
stacks, the plot. Nothing here imports torch or pytest."""

from __future__ import annotations

"""Cache-specific checks of the caching techniques (``--infer-suite generation``)."""

from __future__ import annotations

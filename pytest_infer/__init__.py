"""pytest-infer: prove that Transformers inference optimizations give the same answers and still pay off.

Load with ``pytest -p pytest_infer``. This module stays tiny so that loading the plugin imports
neither torch nor transformers; the hooks live in :mod:`pytest_infer.plugin`.
"""

from __future__ import annotations

__version__ = "0.1.0"

pytest_plugins = ["pytest_infer.plugin"]

"""Output hygiene: third-party noise stays out of the session's output (docs/reliability.md, "Output hygiene").

While pytest-infer is active, the optional backends' first imports run quietly
(:class:`~pytest_infer.runtime.quiet.QuietImports`: torchao's ``Failed to load ...so`` lines, torch's pytree and
``torch.jit`` deprecation messages no longer reach the terminal, the warnings summary or a failing test's captured
output); what they said is shown once, condensed, at the end under ``-v``::

    infer backends: torchao: optional native extensions unavailable: _C_mxfp8, _C_cutlass_90a (Could not load ...)
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_infer.runtime.quiet import QuietImports


class QuietBackends:
    """Registered by the plugin while the session is active; :meth:`close` takes the import hook out again."""

    def __init__(self) -> None:
        self.imports = QuietImports().install()

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        notes = self.imports.notes()
        if notes and terminalreporter.verbosity > 0:
            for note in notes:
                terminalreporter.write_line(f"infer backends: {note}")

    def close(self) -> None:
        self.imports.remove()

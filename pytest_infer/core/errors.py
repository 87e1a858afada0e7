"""Errors whose message says what to fix: a bad configuration value, an invalid technique (or stack), a run that
failed for a reason the user can act on (shown as a test failure without a traceback)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is wrong; the message says what to fix. The plugin raises it as UsageError."""


class TechniqueError(ValueError):
    """A technique, a selection or a stack of techniques is invalid; the message says why."""


class ExplainedFailure(RuntimeError):
    """A run failed and the message is the whole story: a model that does not load (and how to fix it), a kernel
    that was requested but never ran. The pytest layer shows it as a test failure without a traceback: the frames
    would be library internals. ``cause``: the original exception (not chained: its text is in the message)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause

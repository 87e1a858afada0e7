"""Third-party noise kept out of the session's output: what the optional backends print when they are first
imported (torchao's ``Failed to load .../_C_mxfp8...so`` log lines, torch's pytree deprecation records,
bitsandbytes' ``torch.jit.script_method`` deprecation warnings) and Transformers' weight-loading progress bars.

:class:`QuietImports` is a ``sys.meta_path`` finder: wherever a backend module is imported for the first time (our
techniques, Transformers' quantizers and caches, a test body), its module code runs with the warnings and the
log records of this thread captured instead of printed. The finder only wraps the module's execution — the
module keeps its own loader — and what was captured becomes one note per backend (:meth:`QuietImports.notes`):
``torchao: optional native extensions unavailable: _C_mxfp8, _C_cutlass_90a (Could not load this library)``.
Nothing here imports torch or pytest.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import re
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

# top-level modules of the optional backends (pyproject's extras; flash-attn's packages)
BACKEND_MODULES = ("torchao", "bitsandbytes", "optimum", "hqq", "kernels", "flash_attn", "flash_attn_interface")
_NATIVE = re.compile(r"Failed to load (?P<path>\S+?\.so)\S*: (?P<reason>.*)", re.DOTALL)
# bitsandbytes on AVX512-BF16 CPUs: "Failed to load CPU gemm_4bit_forward from kernels-community: <why>. Please ..."
_FROM = re.compile(r"Failed to load (?P<what>.+?) from (?P<source>[\w./-]+): (?P<reason>.*)", re.DOTALL)
_DEPRECATION = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


@contextlib.contextmanager
def captured(records: list[logging.LogRecord], caught: list[warnings.WarningMessage]) -> Iterator[None]:
    """Warnings raised and log records emitted by this thread inside the block go to ``caught``/``records``,
    whatever the warning filters (an ``error`` filter must not turn a backend's import chatter into a failed
    import) and whatever handlers the loggers have (torch's own stderr handler included)."""
    me = threading.get_ident()
    original = logging.Logger.callHandlers

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        if threading.get_ident() == me:
            records.append(record)
        else:
            original(self, record)

    logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            yield
        caught.extend(seen)
    finally:
        logging.Logger.callHandlers = original  # type: ignore[method-assign]


def condense(backend: str, records: Sequence[logging.LogRecord], caught: Sequence[Any]) -> list[str]:
    """What a backend's import said, as notes a person can read once: unavailable native extensions by name and
    reason, other messages by their first line; deprecation chatter of its dependencies counted, not shown."""
    native: dict[str, list[str]] = {}
    other: list[str] = []
    deprecations = 0
    for text, deprecation in [(r.getMessage(), "deprecat" in r.getMessage().lower()) for r in records] + [
        (str(w.message), issubclass(w.category, _DEPRECATION)) for w in caught
    ]:
        match = _NATIVE.match(text.strip())
        if match:
            name = match["path"].rsplit("/", 1)[-1].split(".", 1)[0]
            reason = match["reason"].replace(match["path"], "").strip().rstrip(":").strip() or "no reason given"
            native.setdefault(reason, []).append(name)
        elif hub := _FROM.match(text.strip()):
            reason = re.split(r"(?<=[a-z])\.\s", hub["reason"].strip(), maxsplit=1)[0].rstrip(".")
            other.append(f"{hub['what']} from {hub['source']} unavailable ({reason[:160]}); its fallback runs")
        elif deprecation:
            deprecations += 1
        else:
            other.append(text.strip().splitlines()[0][:200] if text.strip() else "")
    notes = [
        f"{backend}: optional native extension{'s' if len(names) > 1 else ''} unavailable: {', '.join(names)} ({reason})"
        for reason, names in native.items()
    ]
    notes += [f"{backend}: {line}" for line in dict.fromkeys(other) if line]
    if deprecations:
        notes.append(f"{backend}: {deprecations} deprecation message{'s' if deprecations > 1 else ''} hidden")
    return notes


class _QuietLoader(importlib.abc.Loader):
    """Runs one module's code under :func:`captured`; the module keeps the loader it really has."""

    def __init__(self, loader: Any, finder: QuietImports, backend: str) -> None:
        self.loader = loader
        self.finder = finder
        self.backend = backend

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        if module.__spec__ is not None:  # from here on the module names its real loader (resources, source)
            module.__spec__.loader = self.loader
        module.__loader__ = self.loader
        records: list[logging.LogRecord] = []
        caught: list[warnings.WarningMessage] = []
        try:
            with captured(records, caught):
                self.loader.exec_module(module)
        finally:
            self.finder.record(self.backend, records, caught)


class QuietImports(importlib.abc.MetaPathFinder):
    """Install with :meth:`install` (first on ``sys.meta_path``), remove with :meth:`remove`."""

    def __init__(self, backends: Sequence[str] = BACKEND_MODULES) -> None:
        self.backends = frozenset(backends)
        self._captured: dict[str, tuple[list[logging.LogRecord], list[Any]]] = {}
        self._finding = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        backend = fullname.partition(".")[0]
        if backend not in self.backends or getattr(self._finding, "active", False):
            return None
        self._finding.active = True  # the other finders below may import; they must not come back here
        try:
            spec = next(
                (
                    s
                    for finder in sys.meta_path
                    if finder is not self and hasattr(finder, "find_spec")
                    for s in [finder.find_spec(fullname, path, target)]
                    if s is not None
                ),
                None,
            )
        finally:
            self._finding.active = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _QuietLoader(spec.loader, self, backend)
        return spec

    def record(self, backend: str, records: Sequence[logging.LogRecord], caught: Sequence[Any]) -> None:
        if records or caught:
            mine = self._captured.setdefault(backend, ([], []))
            mine[0].extend(records)
            mine[1].extend(caught)

    def notes(self) -> list[str]:
        """One note per kind of message, per backend, in the order the backends were imported."""
        return [
            note for backend, (records, caught) in self._captured.items() for note in condense(backend, records, caught)
        ]

    def install(self) -> QuietImports:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        return self

    def remove(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Transformers' progress bars (``Loading weights``) off for the block: the plugin's own progress lines say
    what is loading (``--infer-progress``), and a bar in a failing test's captured output is noise."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()

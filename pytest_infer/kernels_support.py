"""Helpers of the ``kernels`` family: where kernel repositories come from, whether this stack can load
them, and the proof that the kernel requested is the kernel that ran.

Why the last part: ``kernels.kernelize`` falls back to a layer's original forward *silently* when the
mapping's layer name, device or mode does not match, and Transformers has fallen back to sdpa/eager for
hub attention before. So every kernels technique checks, after loading, that each module it targets
runs the requested kernel (:class:`KernelWatch`), and again around every forward that the kernel ran.

Nothing here imports torch, transformers or kernels at module level.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import inspect
import os
import re
import socket
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlparse

from packaging.version import InvalidVersion, Version

if TYPE_CHECKING:
    from pytest_infer.stack import Stack

FIXTURE_REPOSITORY = "infer-kernels"  # fixtures/kernels/<name>: the bundled local kernel repository
KERNEL_DEVICES = ("cpu", "cuda", "rocm", "mps", "xpu")  # where a pure-torch (torch-universal) kernel runs
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_DECORATOR = re.compile(r"""@use_kernel_forward_from_hub\(\s*["']([^"']+)["']\s*\)""")
PROVENANCE_ATTR = "infer_provenance"  # list of dicts on a prepared model: what each kernel technique loaded


class UnpinnedKernelWarning(UserWarning):
    """A hub kernel is used at a revision that moves (a branch or version), not at a commit."""


# --- local repositories -------------------------------------------------------------------------


def fixture_repository(name: str = FIXTURE_REPOSITORY) -> Path:
    """The bundled local kernel repository ``fixtures/kernels/<name>`` (in a checkout or a wheel)."""
    from pytest_infer.resources import fixtures_dir

    return fixtures_dir() / "kernels" / name


def repository_digest(path: Path) -> str:
    """``sha256:<hex>`` over every file of a kernel repository (relative path and bytes; caches excluded):
    two runs that report the same digest ran the same kernel source."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path)
        if "__pycache__" in rel.parts or f.suffix == ".pyc":
            continue
        h.update(rel.as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return "sha256:" + h.hexdigest()


def is_within(file: str | Path, root: Path) -> bool:
    try:
        Path(file).resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


# --- Transformers' kernels integration: the version range it accepts -----------------------------


def _short(v: str) -> str:
    """``0.19.0`` -> ``0.19`` (trailing zero components dropped, major.minor kept)."""
    parts = v.split(".")
    while len(parts) > 2 and parts[-1] == "0":
        parts.pop()
    return ".".join(parts)


@functools.cache
def transformers_kernels_range() -> tuple[str, str] | None:
    """``(min, max)`` of the ``kernels`` versions the installed Transformers integrates with (its
    ``KERNELS_MIN_VERSION`` / ``KERNELS_MAX_VERSION``), read from its source without importing it when
    it is not loaded yet; None when this Transformers has no such bounds."""
    module = sys.modules.get("transformers.utils.import_utils")
    if module is not None and hasattr(module, "KERNELS_MIN_VERSION"):
        return str(module.KERNELS_MIN_VERSION), str(module.KERNELS_MAX_VERSION)
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        return None
    try:
        text = (Path(spec.origin).parent / "utils" / "import_utils.py").read_text(encoding="utf-8")
    except OSError:
        return None
    found = [re.search(rf"^KERNELS_{b}_VERSION\s*=\s*[\"']([^\"']+)[\"']", text, re.M) for b in ("MIN", "MAX")]
    if found[0] is None or found[1] is None:
        return None
    return found[0].group(1), found[1].group(1)


def kernels_drift_reason(stack: Stack) -> str | None:
    """Why Transformers' own kernels integration (``use_kernels=True``, ``attn_implementation="org/repo"``,
    the ``use_kernel_forward_from_hub`` decorators) is off on this stack, or None when it is on.

    Transformers switches the integration off unless ``min <= kernels < max`` (its ``is_kernels_available``):
    its decorators become no-ops and ``use_kernels=True`` raises.
    """
    tv = stack.version("transformers")
    if tv is None:
        return "transformers not installed"
    bounds = transformers_kernels_range()
    if bounds is None:
        return f"transformers {tv} has no kernels integration (no KERNELS_MIN_VERSION/KERNELS_MAX_VERSION)"
    lo, hi = bounds
    spec = f"kernels>={_short(lo)},<{_short(hi)}"
    kv = stack.version("kernels")
    if kv is None:
        return f"transformers {tv} requires {spec}; kernels is not installed (pip install '{spec}')"
    try:
        ok = Version(lo) <= Version(kv) < Version(hi)
    except InvalidVersion:
        return f"transformers {tv} requires {spec}; cannot compare kernels version {kv!r}"
    return None if ok else f"transformers {tv} requires {spec}; found kernels {kv}"


def transformers_kernel_devices() -> tuple[str, ...]:
    """Device types Transformers' ``KernelConfig`` maps kernels for (it refuses the others, cpu included)."""
    from transformers.utils.kernel_config import KERNELS_SUPPORTED_DEVICE_TYPES

    return tuple(KERNELS_SUPPORTED_DEVICE_TYPES)


# --- hub kernels: pins, the local cache, reachability --------------------------------------------


@dataclass(frozen=True)
class HubRef:
    """A hub kernel repository at a revision (commit, branch, tag) or a kernel version (branch ``vN``)."""

    repo_id: str
    revision: str | None = None
    version: int | None = None

    def __post_init__(self) -> None:
        if (self.revision is None) == (self.version is None):
            raise ValueError(f"hub kernel {self.repo_id}: give exactly one of revision= or version=")

    @property
    def ref(self) -> str:
        return self.revision if self.revision is not None else f"v{self.version}"

    @property
    def pinned(self) -> bool:
        """Pinned means a full commit hash: branches, tags and versions move."""
        return self.revision is not None and bool(_COMMIT.match(self.revision))

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.ref}"

    def pin_advice(self) -> str:
        return (
            f"hub kernel {self} is not pinned: {self.ref!r} is a {'version branch' if self.version else 'ref'} "
            f"that moves. Pin it to a commit: revision='<40-hex commit>' (attn_implementation "
            f"'{self.repo_id}@<commit>'); list commits with huggingface_hub.list_repo_commits('{self.repo_id}', "
            f"repo_type='kernel') or lock it with `kernels lock`"
        )


def hub_cache_root() -> Path:
    """Where ``kernels`` keeps hub snapshots: ``$KERNELS_CACHE``, else the Hugging Face hub cache."""
    from huggingface_hub import constants

    return Path(os.environ.get("KERNELS_CACHE") or constants.HF_HUB_CACHE)


def cached_snapshot(ref: HubRef, root: Path | None = None) -> Path | None:
    """The local snapshot of ``ref`` (with a ``build`` folder), or None when it was never downloaded."""
    root = hub_cache_root() if root is None else root
    org_name = ref.repo_id.replace("/", "--")
    for kind in ("kernels", "models"):  # the "kernel" repo type, and the legacy model-type layout
        folder = root / f"{kind}--{org_name}"
        commit = ref.ref
        if not _COMMIT.match(commit):
            try:
                commit = (folder / "refs" / ref.ref).read_text(encoding="utf-8").strip()
            except OSError:
                continue
        snapshot = folder / "snapshots" / commit
        if (snapshot / "build").is_dir():
            return snapshot
    return None


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.cache
def hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when a TCP connection to the hub endpoint opens, else why not (probed once per process)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.__class__.__name__}: {exc}"


def hub_availability_reason(
    ref: HubRef, *, probe: Callable[[], str | None] = hub_unreachable, root: Path | None = None
) -> str | None:
    """Why ``ref`` cannot be loaded here (not cached and no hub), or None."""
    cached = cached_snapshot(ref, root)
    offline = hub_offline()
    if cached is not None and offline:
        return None
    if cached is None and offline:
        return f"hub kernel {ref} not in the local cache ({hub_cache_root() if root is None else root}) and HF_HUB_OFFLINE is set"
    problem = probe()
    if problem is None:
        return None
    if cached is None:
        return f"hub kernel {ref} not in the local cache and the hub is unreachable ({problem})"
    return (
        f"hub kernel {ref} is in the local cache but the hub is unreachable ({problem}) and HF_HUB_OFFLINE is not "
        "set: kernels resolves hub kernels online; export HF_HUB_OFFLINE=1 to load the cached snapshot"
    )


def strict_mode() -> bool:
    """Whether the running pytest-infer session was started with ``--infer-strict``."""
    from pytest_infer import session

    active = getattr(session, "active_session", None)
    current = active() if callable(active) else None
    return bool(current is not None and current.config.strict)


def pin_check(ref: HubRef) -> Callable[[Stack], str | None]:
    """A requirement: refused under ``--infer-strict`` when ``ref`` is not pinned to a commit."""

    def kernel_pinned(stack: Stack) -> str | None:
        return ref.pin_advice() if not ref.pinned and strict_mode() else None

    return kernel_pinned


def warn_unpinned(ref: HubRef, technique: str) -> None:
    if not ref.pinned:
        warnings.warn(UnpinnedKernelWarning(f"{technique}: {ref.pin_advice()}"), stacklevel=2)


# --- making a model's layers kernelizable ---------------------------------------------------------


_DECLARED: dict[type, str | None] = {}


def _declared_kernel_layer(cls: type) -> str | None:
    """The layer name of ``@use_kernel_forward_from_hub("...")`` written on ``cls`` in its source."""
    if cls not in _DECLARED:
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = ""
        head = source.split("class ", 1)[0]  # the decorator lines above the class statement
        match = _DECORATOR.search(head)
        _DECLARED[cls] = match.group(1) if match else None
    return _DECLARED[cls]


def ensure_kernel_layers(model: Any, layer_name: str) -> list[str]:
    """Register the model's layer classes that Transformers declares as ``layer_name`` with ``kernels``.

    Transformers decorates e.g. ``LlamaRMSNorm`` with ``@use_kernel_forward_from_hub("RMSNorm")``, but the
    decorator is a no-op unless its kernels version range holds (see :func:`kernels_drift_reason`); then
    ``kernelize`` would see no layer at all. The same registration is done here through
    ``kernels.replace_kernel_forward_from_hub``, for the classes the source declares and only those.
    Returns the names of the classes registered here (empty when Transformers did it).
    """
    from kernels import replace_kernel_forward_from_hub

    done = []
    for cls in dict.fromkeys(type(m) for m in model.modules()):
        if getattr(cls, "kernel_layer_name", None) is None and _declared_kernel_layer(cls) == layer_name:
            replace_kernel_forward_from_hub(cls, layer_name)
            done.append(cls.__name__)
    return done


def kernel_layer_modules(model: Any, layer_name: str) -> list[tuple[str, Any]]:
    """``(name, module)`` of every module ``kernelize`` considers for ``layer_name``."""
    out = []
    for name, module in model.named_modules():
        cls = type(module)
        if getattr(cls, "kernel_layer_name", None) == layer_name:
            condition = getattr(cls, "kernel_condition", None)
            if condition is None or condition(module):
                out.append((name, module))
    return out


# --- requested == effective ------------------------------------------------------------------------


def fail(message: str) -> NoReturn:
    """Fail the running test with ``message`` only (no traceback): the message says what ran instead."""
    import pytest

    pytest.fail(message, pytrace=False)


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass
class _Use:
    """One prepared model watched by a :class:`KernelWatch`: its counters (the hooks write them)."""

    model: weakref.ref[Any]
    modules: list[str]  # layer kind: the kernelized modules; attention kind: unused
    per_forward: int  # attention kind: kernel calls expected per forward (one per decoder layer)
    forwards: int = 0
    ran_kernel: set[str] = field(default_factory=set)
    ran_other: dict[str, str] = field(default_factory=dict)  # module -> the forward it ran instead


class KernelWatch:
    """Requested == effective for one technique: a static check after loading and a runtime check
    around every call (entered as the technique's ``context``).

    ``kind="layer"``: each module registered for the layer name must have the kernel layer's forward
    after ``kernelize``, and run it in every call. ``kind="attention"``: the attention implementation
    registered under the technique's name must be the kernel function, and run once per decoder layer
    in each forward.
    """

    def __init__(self, technique: str, kind: str, requested: str) -> None:
        if kind not in ("layer", "attention"):
            raise ValueError(f"KernelWatch kind must be 'layer' or 'attention', got {kind!r}")
        self.technique = technique
        self.kind = kind
        self.requested = requested  # human text: which kernel, from where
        self._uses: list[_Use] = []
        self._depth = 0
        self.attention_calls = 0

    # -- layers --
    def watch_layers(
        self, model: Any, layer_name: str, kernel_forward: Callable[..., Any] | None, diagnosis: str
    ) -> int:
        """After ``kernelize``: fail unless every module registered for ``layer_name`` runs
        ``kernel_forward``; then count, per call, which forward each of them runs."""
        targets = kernel_layer_modules(model, layer_name)
        if not targets:
            classes = sorted(
                {
                    f"{type(m).__name__} as {type(m).kernel_layer_name!r}"
                    for _, m in model.named_modules()
                    if getattr(type(m), "kernel_layer_name", None) is not None
                }
            )
            fail(
                f"{self.technique}: requested {self.requested}, but no module of {type(model).__name__} is registered "
                f"for kernel layer {layer_name!r} (registered layer classes: {', '.join(classes) or 'none'}): "
                "nothing was kernelized"
            )
        missed = [
            n
            for n, m in targets
            if kernel_forward is None or getattr(m.forward, "__func__", None) is not kernel_forward
        ]
        if missed:
            kept = sorted({type(m).__name__ for n, m in targets if n in missed})
            fail(
                f"{self.technique}: requested {self.requested}, but kernelize kept the original forward of "
                f"{len(missed)} of {len(targets)} {'/'.join(kept)} modules ({_names(missed)}): {diagnosis}"
            )
        use = _Use(weakref.ref(model), [n for n, _ in targets], 0)
        model.register_forward_pre_hook(_count_forward(use))
        for name, module in targets:
            module.register_forward_pre_hook(_layer_probe(use, name, kernel_forward))
        self._uses.append(use)
        return len(targets)

    # -- attention --
    def counting(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` wrapped to count its calls (register this one, not ``function``)."""

        @functools.wraps(function)
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.attention_calls += 1
            return function(*args, **kwargs)

        counted.__infer_kernel_watch__ = self  # type: ignore[attr-defined]
        return counted

    def watch_attention(
        self, model: Any, registered: Callable[..., Any] | None, kernel: Callable[..., Any] | None
    ) -> None:
        """After loading: fail unless the implementation registered for the model's attention name is
        the counted ``kernel``; then count its calls per forward."""
        impl = getattr(model.config, "_attn_implementation", None)
        inner = getattr(registered, "__wrapped__", None)
        if getattr(registered, "__infer_kernel_watch__", None) is not self or inner is not kernel:
            what = getattr(registered, "__qualname__", repr(registered))
            fail(
                f"{self.technique}: requested {self.requested}, but the attention implementation registered as "
                f"{impl!r} is {what} from {getattr(registered, '__module__', '?')}: the kernel would not run"
            )
        layers = int(getattr(model.config, "num_hidden_layers", 0) or 0) or 1
        use = _Use(weakref.ref(model), [], layers)
        model.register_forward_pre_hook(_count_forward(use))
        self._uses.append(use)

    # -- runtime --
    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Around one call (forward or generate): afterwards, every watched model that ran must have run
        the kernel (only the outermost of nested contexts of this technique judges)."""
        self._depth += 1
        if self._depth > 1:
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._uses = [u for u in self._uses if u.model() is not None]
        start = [u.forwards for u in self._uses]
        for u in self._uses:
            u.ran_kernel.clear()
            u.ran_other.clear()
        calls = self.attention_calls
        try:
            yield
        finally:
            self._depth -= 1
        problems = [
            self._verdict(u, u.forwards - s, self.attention_calls - calls)
            for u, s in zip(self._uses, start, strict=True)
        ]
        found = [p for p in problems if p]
        if found:
            fail("\n".join(found))

    def _verdict(self, use: _Use, forwards: int, attention_calls: int) -> str | None:
        if forwards <= 0:
            return None
        if self.kind == "attention":
            expected = forwards * use.per_forward
            if attention_calls < expected:
                return (
                    f"{self.technique}: requested {self.requested}, but it ran {attention_calls} of the {expected} "
                    f"attention calls of {forwards} forward(s) x {use.per_forward} layers: another attention "
                    "implementation ran instead"
                )
            return None
        if use.ran_other:
            pairs = [f"{n} ran {f}" for n, f in sorted(use.ran_other.items())]
            return (
                f"{self.technique}: requested {self.requested}, but during the last call {len(use.ran_other)} of "
                f"{len(use.modules)} kernelized modules ran another forward ({_names(pairs, 3)}): the kernel was "
                "replaced after kernelize"
            )
        idle = [n for n in use.modules if n not in use.ran_kernel]
        if idle:
            return (
                f"{self.technique}: requested {self.requested}, but {len(idle)} of {len(use.modules)} kernelized modules "
                f"never ran in {forwards} forward(s) ({_names(idle)}): the model bypassed them"
            )
        return None


def _count_forward(use: _Use) -> Callable[..., None]:
    def hook(_module: Any, _args: Any) -> None:
        use.forwards += 1

    return hook


def _layer_probe(use: _Use, name: str, kernel_forward: Callable[..., Any] | None) -> Callable[..., None]:
    def hook(module: Any, _args: Any) -> None:
        func = getattr(module.forward, "__func__", module.forward)
        if func is kernel_forward:
            use.ran_kernel.add(name)
        else:
            use.ran_other[name] = getattr(func, "__qualname__", repr(func))

    return hook


def add_provenance(model: Any, entry: dict[str, Any]) -> None:
    """Record on the model what a kernels technique loaded (stacks add one entry each)."""
    entries = list(getattr(model, PROVENANCE_ATTR, None) or [])
    entries.append(entry)
    setattr(model, PROVENANCE_ATTR, entries)


def provenance_lines(model: Any) -> list[str]:
    """One line per kernel the model runs: for the test report section."""
    return [f"kernel: {e['summary']}" for e in getattr(model, PROVENANCE_ATTR, None) or []]

"""Helpers of the ``kernels`` family: where kernel repositories come from, whether this stack can load
them, and the proof that the kernel requested is the kernel that ran.

Why the last part: ``kernels.kernelize`` falls back to a layer's original forward *silently* when the
mapping's layer name, device or mode does not match, and Transformers has fallen back to sdpa/eager for
hub attention before. So every kernels technique checks, after loading, that each module it targets
runs the requested kernel (:class:`KernelWatch`), and again around every forward that the kernel ran.

Nothing here imports torch, transformers or kernels at module level.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import os
import re
import socket
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from packaging.version import InvalidVersion, Version

from pytest_infer.core.resources import fixtures_dir
from pytest_infer.core.stack import Stack

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


def pin_check(ref: HubRef) -> Callable[[Stack], str | None]:
    """A strict-only requirement (``Requirements(strict=...)``): under ``--infer-strict`` a hub kernel must be pinned
    to a commit."""

    def kernel_pinned(stack: Stack) -> str | None:
        return ref.pin_advice() if not ref.pinned else None

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


def add_provenance(model: Any, entry: dict[str, Any]) -> None:
    """Record on the model what a kernels technique loaded (stacks add one entry each)."""
    entries = list(getattr(model, PROVENANCE_ATTR, None) or [])
    entries.append(entry)
    setattr(model, PROVENANCE_ATTR, entries)


def provenance_lines(model: Any) -> list[str]:
    """One line per kernel the model runs: for the test report section."""
    return [f"kernel: {e['summary']}" for e in getattr(model, PROVENANCE_ATTR, None) or []]

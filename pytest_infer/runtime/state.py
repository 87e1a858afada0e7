"""The process-wide state a technique (or a test body) can leave behind for the tests after it: what is watched, a
snapshot of it, what changed since, and putting it back.

Watched (each only once its library is imported; nothing here imports torch or transformers):

- **functions**: every function and class attribute of torch's and Transformers' modules that a technique would
  patch (``torch``, ``torch.nn.functional``, ``torch.nn.modules.*``, ``torch.nn.attention*``, ``torch.Tensor``,
  Transformers' modeling, masking, cache, generation and integration modules, ``transformers.models.*.modeling_*``)
  and the methods of the classes they define. A *replaced* or *deleted* one is a change; a new attribute is not
  (lazy modules add attributes as they are first used).
- **thread counts**: ``torch.get_num_threads()``, ``torch.get_num_interop_threads()`` (the latter can be set once
  per process: reported, not restorable).
- **environment variables**: all of them, except the few torch sets itself on first use
  (:data:`LIBRARY_ENVIRONMENT`). Names only are reported, never values (they may be secrets).
- **global flags**: default dtype and device, grad mode, anomaly mode, deterministic algorithms, float32 matmul
  precision, TF32 and reduced-precision reductions, cuDNN benchmark/deterministic, the SDPA backends, and every
  key of ``torch._dynamo.config`` and ``torch._inductor.config``.
- **registered functions**: Transformers' ``AttentionInterface`` and ``AttentionMaskInterface`` (entries of the
  session's selected techniques are theirs to keep).

:func:`snapshot` takes it, :func:`changes` lists what differs as one line each, :func:`restore` puts it back.
"""

from __future__ import annotations

import fnmatch
import inspect
import operator
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

MODULE_PATTERNS = (
    "torch",
    "torch.functional",
    "torch.nn.functional",
    "torch.nn.modules.*",
    "torch.nn.attention*",
    "transformers.modeling_utils",
    "transformers.masking_utils",
    "transformers.modeling_*",
    "transformers.cache_utils",
    "transformers.pytorch_utils",
    "transformers.generation.utils",
    "transformers.integrations.*",
    "transformers.models.*.modeling_*",
)
_WATCHED = re.compile("|".join(fnmatch.translate(p) for p in MODULE_PATTERNS))
CLASSES = (("torch._tensor", "Tensor"),)  # classes defined outside the watched modules
FOLLOWERS = frozenset({"torch.Storage"})
# torch patches itself when dynamo is first used (Module.__init__ tagging, manual_seed wrapped to disable dynamo),
# once per process: a replacement whose code lives here is torch's own, neither a change nor put back
LIBRARY_CODE = (
    os.path.join("torch", "_dynamo", ""),
    os.path.join("torch", "_compile.py"),
)  # torch rebinds it in set_default_dtype: the dtype flag reports that
# set by torch on first use (the inductor's cache folder, CUDA's lazy module loading), never by a technique
LIBRARY_ENVIRONMENT = (
    "_TORCHINDUCTOR_*",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "CUDA_MODULE_LOADING",
    "PYTEST_CURRENT_TEST",  # pytest's own, per test phase
    "TOKENIZERS_PARALLELISM",  # Transformers' generate sets it to 0 whenever it compiles (a static cache): no output depends on it
)
CONFIG_MODULES = ("torch._dynamo.config", "torch._inductor.config")
REGISTRIES = (
    ("transformers.modeling_utils", "AttentionInterface"),
    ("transformers.masking_utils", "AttentionMaskInterface"),
)


@dataclass(frozen=True)
class Flag:
    """One global setting of torch: how to read it and how to set it back (None: it cannot be)."""

    name: str
    get: Callable[[Any], Any]
    put: Callable[[Any, Any], None] | None = None


def _attr(path: str) -> Flag:
    owner, _, name = path.rpartition(".")

    def get(torch: Any) -> Any:
        return getattr(_resolve(torch, owner), name)

    def put(torch: Any, value: Any) -> None:
        setattr(_resolve(torch, owner), name, value)

    return Flag(path, get, put)


def _resolve(torch: Any, dotted: str) -> Any:
    obj = torch
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def _deterministic(torch: Any) -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


def _sdp(kind: str) -> Flag:
    return Flag(
        f"torch.backends.cuda.{kind}_sdp_enabled()",
        lambda t: getattr(t.backends.cuda, f"{kind}_sdp_enabled")(),
        lambda t, v: getattr(t.backends.cuda, f"enable_{kind}_sdp")(v),
    )


FLAGS = (
    Flag("torch.get_default_dtype()", lambda t: t.get_default_dtype(), lambda t, v: t.set_default_dtype(v)),
    Flag("torch.get_default_device()", lambda t: t.get_default_device(), lambda t, v: t.set_default_device(v)),
    Flag("torch.get_num_threads()", lambda t: t.get_num_threads(), lambda t, v: t.set_num_threads(v)),
    Flag("torch.get_num_interop_threads()", lambda t: t.get_num_interop_threads()),
    Flag("torch.is_grad_enabled()", lambda t: t.is_grad_enabled(), lambda t, v: t.set_grad_enabled(v)),
    Flag("torch.is_anomaly_enabled()", lambda t: t.is_anomaly_enabled(), lambda t, v: t.set_anomaly_enabled(v)),
    Flag(
        "torch.are_deterministic_algorithms_enabled() (warn_only)",
        _deterministic,
        lambda t, v: t.use_deterministic_algorithms(v[0], warn_only=v[1]),
    ),
    Flag(
        "torch.get_float32_matmul_precision()",
        lambda t: t.get_float32_matmul_precision(),
        lambda t, v: t.set_float32_matmul_precision(v),
    ),
    _attr("torch.backends.cuda.matmul.allow_tf32"),
    _attr("torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction"),
    _attr("torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction"),
    _attr("torch.backends.cudnn.allow_tf32"),
    _attr("torch.backends.cudnn.benchmark"),
    _attr("torch.backends.cudnn.deterministic"),
    _attr("torch.backends.cudnn.enabled"),
    _sdp("flash"),
    _sdp("mem_efficient"),
    _sdp("math"),
    _sdp("cudnn"),
)


@dataclass
class Snapshot:
    """The watched state at one moment (see the module docstring)."""

    owners: list[tuple[Any, str, dict[str, Any]]] = field(default_factory=list)  # (owner, its name, its attributes)
    flags: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    registries: dict[str, dict[str, Any]] = field(default_factory=dict)


def _watched_modules() -> Iterator[Any]:
    for name, module in list(sys.modules.items()):
        if module is not None and _WATCHED.match(name):
            yield module


def _patchable(value: Any) -> bool:
    return callable(value) or isinstance(value, (staticmethod, classmethod, property))


_owner_cache: dict[str, Any] = {"modules": -1, "owners": []}


def _owners() -> list[tuple[Any, str]]:
    """(object whose attributes are watched, its dotted name): the watched modules and the classes they define;
    found again only when modules were imported since (a walk over every module costs ~0.1 s)."""
    if _owner_cache["modules"] == len(sys.modules):
        return list(_owner_cache["owners"])
    owners: list[tuple[Any, str]] = []
    for module in _watched_modules():
        name = module.__name__
        owners.append((module, name))
        for attr, value in list(vars(module).items()):
            if isinstance(value, type) and value.__module__ == name:
                owners.append((value, f"{name}.{attr}"))
    for module_name, cls_name in CLASSES:
        cls = getattr(sys.modules.get(module_name), cls_name, None)
        if isinstance(cls, type):
            owners.append((cls, f"torch.{cls_name}"))
    unique = {id(o): (o, w) for o, w in reversed(owners)}  # torch.Tensor is in torch too: its first name wins
    owners = list(reversed(unique.values()))
    _owner_cache.update(modules=len(sys.modules), owners=owners)
    return list(owners)


def _registries() -> Iterator[tuple[str, dict[str, Any]]]:
    for module, name in REGISTRIES:
        mapping = getattr(getattr(sys.modules.get(module), name, None), "_global_mapping", None)
        if isinstance(mapping, dict):
            yield name, mapping


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not any(fnmatch.fnmatchcase(k, p) for p in LIBRARY_ENVIRONMENT)}


def snapshot() -> Snapshot:
    """The watched state now (modules and libraries not imported yet are not watched)."""
    snap = Snapshot(environment=_environment())
    snap.owners = [(owner, where, dict(vars(owner))) for owner, where in _owners()]  # a C-level copy: fast
    torch = sys.modules.get("torch")
    if torch is not None:
        for flag in FLAGS:
            try:
                snap.flags[flag.name] = flag.get(torch)
            except Exception:  # a flag this torch build does not have
                continue
    for name in CONFIG_MODULES:
        config = sys.modules.get(name)
        if config is not None and hasattr(config, "get_config_copy"):
            snap.configs[name] = config.get_config_copy()
    snap.registries = {name: dict(mapping) for name, mapping in _registries()}
    return snap


Exempt = frozenset[tuple[int, Any]]  # (id of an owner or mapping, attribute or key) someone else puts back


def _replaced(before: Snapshot, exempt: Exempt = frozenset()) -> Iterator[tuple[str, str, Any]]:
    """(owner's name, attribute, its value now or _MISSING) for each watched function replaced or deleted."""
    for owner, where, saved in before.owners:
        now = vars(owner)
        if len(now) == len(saved) and all(map(operator.is_, saved.values(), now.values())):
            continue  # the common case, decided in C
        for attr, value in saved.items():
            current = now.get(attr, _MISSING)
            if current is value or (id(owner), attr) in exempt or _library_own(current):
                continue
            if _patchable(value) and f"{where}.{attr}" not in FOLLOWERS:
                yield where, attr, current
        if isinstance(owner, type):  # a method set on a class over the one it inherits (torch.Tensor.softmax = f)
            for attr in set(now) - set(saved):
                if (
                    (id(owner), attr) not in exempt
                    and _patchable(now[attr])
                    and any(attr in vars(base) for base in owner.__mro__[1:])
                ):
                    yield where, attr, now[attr]


def _library_own(value: Any) -> bool:
    """Whether ``value`` is torch's own first-use patch (its code in :data:`LIBRARY_CODE`)."""
    try:
        code = getattr(getattr(value, "__func__", value), "__code__", None)
        return any(part in code.co_filename for part in LIBRARY_CODE) if code is not None else False
    except Exception:  # objects whose attribute lookup raises (torch's class proxies)
        return False


def _differs(a: Any, b: Any) -> bool:
    try:
        return bool(a != b)
    except Exception:  # values that cannot be compared (tensors, ...): identity decides
        return a is not b


def _origin(value: Any) -> str:
    """Where a replacement function comes from: ``name (file:line)``, for the message."""
    target = getattr(value, "__func__", value)
    name = getattr(target, "__qualname__", None) or type(target).__name__
    try:
        return f"{name} ({inspect.getsourcefile(target)}:{inspect.getsourcelines(target)[1]})"
    except (TypeError, OSError):
        return str(name)


def changes(
    before: Snapshot, allowed_registrations: frozenset[str] = frozenset(), exempt: Exempt = frozenset()
) -> list[str]:
    """What differs now from ``before``, one line each (empty: nothing); ``exempt``: what someone else puts back
    (pytest's ``monkeypatch`` at teardown), neither reported nor restored."""
    out: list[str] = []
    for where, attr, now in _replaced(before, exempt):
        out.append(f"{where}.{attr} deleted" if now is _MISSING else f"{where}.{attr} replaced by {_origin(now)}")
    torch = sys.modules.get("torch")
    for flag in FLAGS:
        if flag.name in before.flags and torch is not None:
            now = flag.get(torch)
            if _differs(now, before.flags[flag.name]):
                kept = "" if flag.put is not None else " (cannot be set back in this process)"
                out.append(f"{flag.name}: {before.flags[flag.name]!r} -> {now!r}{kept}")
    environment = _environment()
    for name in sorted(set(before.environment) | set(environment)):
        if (id(os.environ), name) in exempt:
            continue
        if name not in environment:
            out.append(f"environment variable {name} unset")
        elif name not in before.environment:
            out.append(f"environment variable {name} set")
        elif environment[name] != before.environment[name]:
            out.append(f"environment variable {name} changed")
    for name, old in before.configs.items():
        new = sys.modules[name].get_config_copy()
        out.extend(
            f"{name}.{k}: {old.get(k)!r} -> {new.get(k)!r}"
            for k in sorted(new)
            if (id(sys.modules[name]), k) not in exempt and _differs(new.get(k), old.get(k))
        )
    for name, mapping in _registries():
        if name not in before.registries:
            continue  # imported during the test: its entries are Transformers' own
        old = before.registries[name]
        mine = allowed_registrations | {k for i, k in exempt if i == id(mapping)}
        for key in sorted(set(mapping) - set(old) - mine):
            out.append(f"{name}: function {key!r} registered ({_origin(mapping[key])})")
        for key in sorted(set(old) - mine):
            if key not in mapping:
                out.append(f"{name}: function {key!r} removed")
            elif mapping[key] is not old[key]:
                out.append(f"{name}: function {key!r} replaced by {_origin(mapping[key])}")
    return out


def restore(
    before: Snapshot, allowed_registrations: frozenset[str] = frozenset(), exempt: Exempt = frozenset()
) -> None:
    """Put back what :func:`changes` reports (what can be set back)."""
    for owner, _, attributes in before.owners:
        for attr, value in attributes.items():
            current = vars(owner).get(attr, _MISSING)
            if current is value or (id(owner), attr) in exempt or _library_own(current):
                continue
            if _patchable(value):
                setattr(owner, attr, value)
    by_name = {where: (owner, attributes) for owner, where, attributes in before.owners}
    for where, attr, _ in list(_replaced(before, exempt)):  # what is left: methods set over inherited ones
        owner, attributes = by_name[where]
        if attr not in attributes and attr in vars(owner):
            delattr(owner, attr)
    torch = sys.modules.get("torch")
    if torch is not None:
        for flag in FLAGS:  # matmul precision before the TF32 flags it also sets
            if (
                flag.put is not None
                and flag.name in before.flags
                and _differs(flag.get(torch), before.flags[flag.name])
            ):
                flag.put(torch, before.flags[flag.name])
    environment = _environment()
    for name in set(environment) - set(before.environment):
        if (id(os.environ), name) not in exempt:
            del os.environ[name]
    for name, value in before.environment.items():
        if environment.get(name) != value and (id(os.environ), name) not in exempt:
            os.environ[name] = value
    for name, old in before.configs.items():
        config = sys.modules[name]
        new = config.get_config_copy()
        for key in new:
            if (id(config), key) not in exempt and _differs(new[key], old.get(key)):
                setattr(config, key, old.get(key))
    for name, mapping in _registries():
        if name not in before.registries:
            continue
        old = before.registries[name]
        mine = allowed_registrations | {k for i, k in exempt if i == id(mapping)}
        for key in set(mapping) - set(old) - mine:
            del mapping[key]
        for key in set(old) - mine:
            if mapping.get(key, _MISSING) is not old[key]:
                mapping[key] = old[key]


_MISSING = object()

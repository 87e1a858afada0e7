"""What a technique needs from the stack (device kinds, compute capability, packages, modules, GPU count, custom
checks), and the first unmet need as a reason a person can act on."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.machinery import PathFinder
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from pytest_infer.core.stack import DEVICE_KINDS, Stack, _cc_parse, _cc_str, _norm, _one_line

Check = Callable[[Stack], "str | None"]


@dataclass(frozen=True)
class Requirements:
    """What a technique needs from the stack; :meth:`check` gives the first unmet need.

    ``strict``: checks that apply only under ``--infer-strict`` (e.g. a hub kernel must be pinned to a commit):
    the session passes its strictness in, nothing reads it from a global."""

    device_kinds: frozenset[str] = frozenset()
    min_compute_capability: tuple[int, int] | None = None
    packages: tuple[tuple[str, str], ...] = ()
    min_device_count: int = 1
    custom: tuple[Check, ...] = ()
    strict: tuple[Check, ...] = ()
    python_modules: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device_kinds", frozenset(self.device_kinds))
        unknown = self.device_kinds - set(DEVICE_KINDS)
        if unknown:
            raise ValueError(f"unknown device kinds {sorted(unknown)}, expected {DEVICE_KINDS}")
        object.__setattr__(self, "min_compute_capability", _cc_parse(self.min_compute_capability))
        pkgs = self.packages.items() if isinstance(self.packages, Mapping) else self.packages
        object.__setattr__(self, "packages", tuple((str(p), str(s or "")) for p, s in pkgs))
        object.__setattr__(self, "custom", tuple(self.custom))
        object.__setattr__(self, "strict", tuple(self.strict))
        object.__setattr__(self, "python_modules", tuple(self.python_modules))
        for pkg, spec in self.packages:
            try:
                SpecifierSet(spec)
            except InvalidSpecifier:
                raise ValueError(f"invalid version specifier {spec!r} for {pkg}") from None

    def check(self, stack: Stack, *, strict: bool = False) -> str | None:
        reason = self._check(stack, strict)
        return None if reason is None else _one_line(reason)

    def _check(self, stack: Stack, strict: bool) -> str | None:
        if self.device_kinds and stack.device_kind not in self.device_kinds:
            kinds = " or ".join(sorted(self.device_kinds))
            return f"needs a {kinds} device, running on {stack.device_kind}"
        n, kind = stack.device_count, stack.device_kind
        if n < self.min_device_count:
            return f"needs {self.min_device_count} {kind} devices, found {n}"
        want, cc = self.min_compute_capability, stack.compute_capability
        if want is not None and (cc is None or cc < want):
            found = f"{cc[0]}.{cc[1]}" if cc else f"none ({stack.device_kind} device)"
            return f"needs compute capability >= {want[0]}.{want[1]}, found {found}"
        for pkg, spec in self.packages:
            found_v = stack.version(pkg)
            if found_v is None:
                target = repr(f"{pkg}{spec}") if spec else pkg
                return f"{pkg} not installed (pip install {target})"
            try:
                ok = SpecifierSet(spec, prereleases=True).contains(Version(found_v))
            except InvalidVersion:
                return f"cannot check {pkg}{spec}: version {found_v!r} is not PEP 440"
            if not ok:
                return f"needs {pkg}{spec}, found {found_v}"
        for module in self.python_modules:
            if not _module_available(module):
                return f"module {module} not importable"
        for fn in (self.strict if strict else ()) + self.custom:
            try:
                reason = fn(stack)
            except Exception as exc:
                return f"check {getattr(fn, '__name__', fn)!s} failed: {type(exc).__name__}: {exc}"
            if reason:
                return reason
        return None

    def merge(self, other: Requirements) -> Requirements:
        """Requirements of two stacked techniques: both must hold."""
        kinds = self.device_kinds & other.device_kinds
        if self.device_kinds and other.device_kinds and not kinds:
            mine, theirs = ("/".join(sorted(r.device_kinds)) for r in (self, other))
            raise ValueError(
                f"contradictory requirements: {self._label()} needs {mine}, {other._label()} needs {theirs}"
            )
        specs: dict[str, tuple[str, list[str]]] = {}
        for pkg, spec in self.packages + other.packages:
            parts = specs.setdefault(_norm(pkg), (pkg, []))[1]
            parts += [x for x in (y.strip() for y in spec.split(",")) if x and x not in parts]
        caps = [c for c in (self.min_compute_capability, other.min_compute_capability) if c]
        return Requirements(
            device_kinds=kinds or self.device_kinds or other.device_kinds,
            min_compute_capability=max(caps) if caps else None,
            packages=tuple((name, ",".join(parts)) for name, parts in specs.values()),
            min_device_count=max(self.min_device_count, other.min_device_count),
            custom=tuple(dict.fromkeys(self.custom + other.custom)),
            strict=tuple(dict.fromkeys(self.strict + other.strict)),
            python_modules=tuple(dict.fromkeys(self.python_modules + other.python_modules)),
            name=" + ".join(n for n in (self.name, other.name) if n),
        )

    def _label(self) -> str:
        return self.name or f"({self.describe()})"

    def describe(self) -> str:
        parts = ["|".join(sorted(self.device_kinds))] if self.device_kinds else []
        if self.min_device_count > 1:
            parts.append(f"{self.min_device_count} devices")
        if self.min_compute_capability:
            parts.append(f"sm>={_cc_str(self.min_compute_capability)}")
        parts += [f"{p}{s}" for p, s in self.packages]
        parts += [f"module {m}" for m in self.python_modules]
        parts += [f"check {getattr(fn, '__name__', 'custom')}" for fn in self.custom]
        parts += [f"under --infer-strict: check {getattr(fn, '__name__', 'strict')}" for fn in self.strict]
        return ", ".join(parts) or "any device"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device_kinds": sorted(self.device_kinds),
            "min_compute_capability": _cc_str(self.min_compute_capability),
            "packages": [[p, s] for p, s in self.packages],
            "min_device_count": self.min_device_count,
            "python_modules": list(self.python_modules),
            "custom": [str(getattr(fn, "__qualname__", fn)) for fn in self.custom],
        }


def _module_available(name: str) -> bool:
    """Whether ``name`` can be imported, without executing any package ``__init__``."""
    if name in sys.modules:
        return True
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for i in range(1, len(parts)):
            locations = None if spec is None else spec.submodule_search_locations
            if locations is None:
                return False
            loaded = sys.modules.get(".".join(parts[: i + 1]))
            spec = loaded.__spec__ if loaded else PathFinder.find_spec(parts[i], list(locations))
    except (ImportError, ValueError, AttributeError):
        return False
    return spec is not None

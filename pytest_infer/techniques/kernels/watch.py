"""Proof that a kernel ran: :class:`KernelWatch` counts the calls of the kernel layers and attention functions a
technique installs, and fails a run in which the requested kernel never ran."""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pytest_infer.core.errors import ExplainedFailure
from pytest_infer.techniques.kernels.support import kernel_layer_modules


class KernelNotRun(ExplainedFailure):
    """The kernel a technique requested never ran (or another ran instead); the message says what ran."""


def fail(message: str) -> NoReturn:
    """Fail the running check with ``message`` only (no traceback): the message says what ran instead."""
    raise KernelNotRun(message)


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

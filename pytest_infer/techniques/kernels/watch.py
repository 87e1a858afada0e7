"""Proof that a kernel ran: :class:`KernelWatch`, the kernels family's :class:`~pytest_infer.core.probe.Probe`, counts
the calls of the kernel layers and attention functions a technique installs, and fails a run in which the requested
kernel never ran (judged by ``Technique.active`` like every probe)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from pytest_infer.core.probe import Probe, ProbeFailure, compile_safe
from pytest_infer.techniques.kernels.support import kernel_layer_modules


class KernelNotRun(ProbeFailure):
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


class KernelWatch(Probe):
    """Requested == effective for one technique: a static check after loading and a runtime check
    around every call (declared as the technique's probe).

    ``kind="layer"``: each module registered for the layer name must have the kernel layer's forward
    after ``kernelize``, and run it in every call. ``kind="attention"``: the attention implementation
    registered under the technique's name must be the kernel function, and run once per decoder layer
    in each forward.
    """

    def __init__(self, technique: str, kind: str, requested: str) -> None:
        if kind not in ("layer", "attention"):
            raise ValueError(f"KernelWatch kind must be 'layer' or 'attention', got {kind!r}")
        super().__init__(requested)
        self.owner = technique
        self.technique = technique
        self.kind = kind
        self.requested = requested  # human text: which kernel, from where
        self._uses: list[_Use] = []

    @property
    def attention_calls(self) -> int:
        return self.calls

    def attach(self, model: Any) -> None:
        """Nothing to add after loading: the technique's ``prepare`` watched the model (:meth:`watch_layers`,
        :meth:`watch_attention`)."""

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
            module.register_forward_pre_hook(compile_safe(_layer_probe(use, name, kernel_forward)))
        self._uses.append(use)
        return len(targets)

    # -- attention --
    def counting(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` wrapped to count its calls (register this one, not ``function``)."""
        counted = self.count(function)
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

    # -- runtime: judged after every call by Technique.active --
    def begin(self) -> Any:
        self._make_safe()
        self._uses = [u for u in self._uses if u.model() is not None]
        for u in self._uses:
            u.ran_kernel.clear()
            u.ran_other.clear()
        return ([u.forwards for u in self._uses], self.calls)

    def end(self, start: Any) -> str | None:
        forwards, calls = start
        ran = sum(u.forwards - s for u, s in zip(self._uses, forwards, strict=False))
        ran_calls = self.calls - calls if self.kind == "attention" else sum(len(u.ran_kernel) for u in self._uses)
        self.last = {"calls": ran_calls, "forwards": ran}
        problems = [
            self._verdict(u, u.forwards - s, self.calls - calls) for u, s in zip(self._uses, forwards, strict=False)
        ]
        return "\n".join(p for p in problems if p) or None

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

    return compile_safe(hook)


def _layer_probe(use: _Use, name: str, kernel_forward: Callable[..., Any] | None) -> Callable[..., None]:
    def hook(module: Any, _args: Any) -> None:
        func = getattr(module.forward, "__func__", module.forward)
        if func is kernel_forward:
            use.ran_kernel.add(name)
        else:
            use.ran_other[name] = getattr(func, "__qualname__", repr(func))

    return hook

"""The session's bounded cache of loaded models and computed tensors.

A model is loaded once per (source, technique load signature, dtype, device); reference tensors are computed once
per key. Models stay resident across tests and suite files (a compiled model keeps its compiled code) within a
bound: ``max_models`` models, or by default (``auto``) as many as fit, per device kind, in a quarter of its memory
(host RAM for cpu, the current GPU's for cuda), never fewer than two (a baseline and a candidate). Beyond it, the
least recently used one is dropped and device memory is released.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from pytest_infer.runtime.memory import weight_bytes

RECENT_SLOTS = 2  # forwards kept beyond the session's reference tensors (a real vocabulary's logits are large)


class ModelCache:
    """Least-recently-used store of loaded models and computed reference tensors, bounded in count
    (``max_models``) or, with ``max_models=0`` (``auto``), by weight bytes: the resident models of each device
    kind against a quarter of its memory (host RAM for cpu, the current GPU's for cuda), or all of them
    against ``budget_bytes`` where given; at least two stay (a baseline and a candidate)."""

    def __init__(self, max_models: int, budget_bytes: int | None = None) -> None:
        self.max_models = max_models
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes: dict[Hashable, int] = {}
        self._device: dict[Hashable, str] = {}
        self._tensors: dict[Hashable, Any] = {}
        self.refused: dict[Hashable, str] = {}  # (source, dtype) -> why its checkpoint was refused: not loaded again
        self._recent: OrderedDict[Hashable, Any] = OrderedDict()  # the last few forwards (see recent)
        self.loads = 0
        self.evictions = 0

    def model(self, key: Hashable, factory: Callable[[], Any]) -> Any:
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        self._make_room(max(self._bytes.values(), default=0))  # the next model: about the largest seen so far
        model = factory()
        self.loads += 1
        self._models[key] = model
        self._bytes[key] = _resident_bytes(model)
        self._device[key] = _device_type(model)
        return model

    @property
    def resident_bytes(self) -> int:
        return sum(self._bytes.values())

    def budget(self, device_type: str = "cpu") -> int:
        if self.budget_bytes is not None:
            return self.budget_bytes
        return memory_of(device_type) // 4

    def _over(self, incoming: int) -> bool:
        """Would a model of ``incoming`` bytes on any device kind already in use exceed that kind's budget?"""
        if self.budget_bytes is not None:
            return self.resident_bytes + incoming > self.budget_bytes
        kinds = set(self._device.values())
        return any(
            sum(n for k, n in self._bytes.items() if self._device.get(k) == kind) + incoming > self.budget(kind)
            for kind in kinds
        )

    def _make_room(self, incoming: int) -> None:
        if self.max_models:
            while len(self._models) >= self.max_models:
                self._evict()
            return
        while len(self._models) >= 2 and self._over(incoming):
            self._evict()

    def tensor(self, key: Hashable, factory: Callable[[], Any]) -> Any:
        """A computed value kept for the session (reference tensors, launches, preflight answers)."""
        if key not in self._tensors:
            self._tensors[key] = factory()
        return self._tensors[key]

    def recent(self, key: Hashable, factory: Callable[[], Any], slots: int = RECENT_SLOTS) -> Any:
        """A computed value kept among the last ``slots`` (a forward two checks of one technique both need: the
        logit check's padded batch is the padding sweep's first point), or a session value under the same key."""
        if key in self._tensors:
            return self._tensors[key]
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        value = factory()
        self._recent[key] = value
        while len(self._recent) > slots:
            self._recent.popitem(last=False)
        return value

    def discard(self, key: Hashable) -> None:
        """Drop one model (e.g. after it raised: compiled state may be left half-built)."""
        self._bytes.pop(key, None)
        self._device.pop(key, None)
        if self._models.pop(key, None) is not None:
            release_memory()

    def _evict(self) -> None:
        key, model = self._models.popitem(last=False)
        self._bytes.pop(key, None)
        self._device.pop(key, None)
        self.evictions += 1
        del model
        release_memory()

    def clear(self) -> None:
        self._models.clear()
        self._bytes.clear()
        self._device.clear()
        self._tensors.clear()
        self._recent.clear()
        release_memory()

    def __len__(self) -> int:
        return len(self._models)


def _resident_bytes(model: Any) -> int:

    try:
        return weight_bytes(model)
    except Exception:  # not a torch module (a test double): count it as nothing
        return 0


def _device_type(model: Any) -> str:
    device = getattr(model, "device", None)
    return str(getattr(device, "type", device or "cpu"))


def memory_of(device_type: str) -> int:
    """Total memory of a device kind: host RAM for cpu (and devices without their own query), the current GPU's
    memory for cuda; 0 where unknown (then nothing beyond two models stays resident)."""
    if device_type == "cuda":
        import torch

        try:
            return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
        except Exception:
            return 0
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def release_memory() -> None:
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()

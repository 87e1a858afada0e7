"""Model and tokenizer loading through the real ``from_pretrained``, and the bounded session cache.

A model is loaded once per (source, technique load signature, dtype, device); reference logits are
computed once per (prompts, reference, dtype, device). Models stay resident across tests and suite files
(a compiled model keeps its compiled code) within a bound: ``max_models`` models, or by default (``auto``)
as many as fit, per device kind, in a quarter of its memory (host RAM for cpu, the current GPU's for cuda),
never fewer than two (a baseline and a candidate). Beyond it, the least recently used one is dropped and device memory
is released.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _pytest.outcomes import Failed  # pytest.fail.Exception, importable as a base class

from pytest_infer.technique import Technique

if TYPE_CHECKING:
    import torch


class ModelLoadError(Failed, RuntimeError):
    """Loading failed for a reason the user can fix; the message says how.

    A test failure without a traceback (``pytest.fail(message, pytrace=False)``): the frames would be
    Transformers' internals, and the message already says what to change. Still a RuntimeError for code
    that catches exceptions outside pytest."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message, pytrace=False)
        self.cause = cause  # the original exception (not chained: pytest would print its text twice)


def _why(exc: BaseException, source: ModelSource, limit: int = 600) -> str:
    """An exception from ``from_pretrained`` as one line, with what to do for the causes we recognise."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    name = type(exc).__name__
    if name == "SafetensorError" or "deserializing header" in text:
        text += " -- a weights file is truncated or corrupt (an interrupted download?): save or download it again"
    elif "Weights only load failed" in text:
        text += (
            " -- pytest-infer loads pickle checkpoints only with torch.load(weights_only=True), never with "
            "arbitrary objects: convert the checkpoint to safetensors"
        )
    elif name == "JSONDecodeError":
        text += " -- a JSON file of the model directory is corrupt: save or download it again"
    if "trust_remote_code" in text and not source.trust_remote_code:
        text += " -- this model needs its own code: pass --infer-trust-remote-code if you trust it"
    if not source.is_local:
        text += f" -- {source.name_or_path!r} is not a local directory, so it was looked up on the hub as a model id"
    return text


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from and what loading it may do."""

    name_or_path: str
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @property
    def is_local(self) -> bool:
        return Path(self.name_or_path).is_dir()

    @property
    def label(self) -> str:
        return Path(self.name_or_path).name if self.is_local else self.name_or_path


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_device(spec: str) -> str:
    """``auto`` -> the best device present; ``cuda`` -> ``cuda:0``; others unchanged."""
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        if hasattr(torch, "xpu") and torch.xpu.is_available():
            return "xpu:0"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if spec in ("cuda", "xpu"):
        return f"{spec}:0"
    return spec


def device_kind(device: str) -> str:
    return device.split(":")[0]


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.name_or_path, trust_remote_code=source.trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError with long, multi-line texts
        raise ModelLoadError(
            f"could not load a tokenizer for {source.name_or_path}: {_why(exc, source)}", exc
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(source: ModelSource, technique: Technique, dtype: str, device: str) -> Any:
    """Load ``source`` with ``technique`` applied, in ``dtype`` on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM

    if technique.setup is not None:
        technique.setup()
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(dtype),
        "trust_remote_code": source.trust_remote_code,
        "use_safetensors": None if source.allow_pickle else True,
    }
    from pytest_infer.technique import resolve_kwargs

    kwargs.update(resolve_kwargs(technique.load_kwargs, device=device, dtype=dtype))
    try:
        model = AutoModelForCausalLM.from_pretrained(source.name_or_path, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"loading {source.label} with {technique.name} ({dtype}) failed: {_why(exc, source)}", exc
        ) from None
    if "device_map" not in kwargs:
        model.to(device)  # type: ignore[arg-type]  # transformers' overloads of .to()
    model.eval()
    effective = getattr(model.config, "_attn_implementation", None)
    if technique.effective_attention is not None and effective not in technique.effective_attention:
        raise ModelLoadError(
            f"{technique.name}: requested attention {sorted(technique.effective_attention)} but the model runs "
            f"{effective!r} (Transformers fell back silently)"
        )
    if technique.prepare is not None:
        model = technique.prepare(model)
    return model


@dataclass
class Batch:
    """A tokenized prompt batch (left padded) on a device."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompts: tuple[str, ...]

    def rows(self) -> list[Batch]:
        """Each prompt alone, padding removed (for kernels without mask support)."""
        out = []
        for b in range(self.input_ids.shape[0]):
            real = self.attention_mask[b].bool()
            out.append(
                Batch(
                    self.input_ids[b, real].unsqueeze(0),
                    self.attention_mask[b, real].unsqueeze(0),
                    self.prompts[b : b + 1],
                )
            )
        return out


def encode(tokenizer: Any, prompts: Sequence[str], device: str) -> Batch:
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return Batch(enc["input_ids"].to(device), enc["attention_mask"].to(device), tuple(prompts))


def forward_logits(model: Any, batch: Batch, technique: Technique) -> torch.Tensor:
    """Logits ``[batch, seq, vocab]`` (float32, on the batch's device) for every position.

    Techniques whose kernels take no padding mask run each prompt alone; their logits are placed at
    the same (left-padded) positions so the result lines up with a padded reference.
    """
    import torch

    with technique.no_grad(), technique.active():
        if technique.padded_batches:
            # positions count real tokens only, as generate() does for padded batches
            position_ids = (batch.attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            return model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids
            ).logits.float()
        out: torch.Tensor | None = None
        seq = batch.input_ids.shape[1]
        for b, one in enumerate(batch.rows()):
            real = batch.attention_mask[b].bool()
            logits = model(input_ids=one.input_ids).logits.float()
            if out is None:
                out = torch.zeros(batch.input_ids.shape[0], seq, logits.shape[-1], device=logits.device)
            out[b, real] = logits[0]
        assert out is not None
        return out


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
        if key not in self._tensors:
            self._tensors[key] = factory()
        return self._tensors[key]

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
        release_memory()

    def __len__(self) -> int:
        return len(self._models)


def _resident_bytes(model: Any) -> int:
    from pytest_infer.measure import weight_bytes

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

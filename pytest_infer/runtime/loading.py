"""Model and tokenizer loading through the real ``from_pretrained``, with the technique applied; devices."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_infer.core.dtypes import torch_dtype
from pytest_infer.core.errors import ExplainedFailure
from pytest_infer.core.redact import mask
from pytest_infer.core.technique import Technique, resolve_kwargs
from pytest_infer.runtime.checkpoint import loading_problem, nonfinite_problem
from pytest_infer.runtime.quiet import quiet_progress_bars


class ModelLoadError(ExplainedFailure):
    """Loading failed for a reason the user can fix; the message says how (shown without a traceback)."""


class CheckpointError(ModelLoadError):
    """The checkpoint itself is broken (tensors missing, unexpected or not finite): whatever technique loads it
    fails with the checkpoint named, and the session does not load it again in that dtype."""


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
        return mask(Path(self.name_or_path).name if self.is_local else self.name_or_path)


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
            mask(f"could not load a tokenizer for {source.name_or_path}: {_why(exc, source)}"), exc
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
    kwargs.update(resolve_kwargs(technique.load_kwargs, device=device, dtype=dtype))
    quantizing = "quantization_config" in kwargs  # a quantizer may add or drop tensors of its own
    try:
        with quiet_progress_bars(), _inductor_config_kept(quantizing):  # no bar in captured output
            loaded: Any = AutoModelForCausalLM.from_pretrained(source.name_or_path, output_loading_info=True, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            mask(f"loading {source.label} with {technique.name} ({dtype}) failed: {_why(exc, source)}"), exc
        ) from None
    model, info = loaded
    problem = None if quantizing else loading_problem(source.label, dict(info), type(model).__name__)
    if problem is None and "device_map" not in kwargs:
        model.to(device)
    problem = problem or nonfinite_problem(source.label, nonfinite_weights(model), dtype)  # on the device: fast
    if problem is not None:
        del model, loaded
        raise CheckpointError(problem)
    model.eval()
    effective = getattr(model.config, "_attn_implementation", None)
    if technique.effective_attention is not None and effective not in technique.effective_attention:
        raise ModelLoadError(
            f"{technique.name}: requested attention {sorted(technique.effective_attention)} but the model runs "
            f"{effective!r} (Transformers fell back silently)"
        )
    if technique.prepare is not None:
        model = technique.prepare(model)
    for probe in technique.probes:  # count what the technique installed, in every run of this model
        probe.attach(model)
    return model


@contextlib.contextmanager
def _inductor_config_kept(quantizing: bool) -> Iterator[None]:
    """torchao's quantizer sets process-wide inductor options while it loads (its recommended settings for
    torch.compile); they would change every later compiled technique, so a quantizing load puts them back."""
    config: Any = None
    if quantizing:
        with contextlib.suppress(Exception):
            config = importlib.import_module("torch._inductor.config")
    saved = config.get_config_copy() if config is not None else None
    try:
        yield
    finally:
        if config is not None and saved is not None:
            for key, value in config.get_config_copy().items():
                if key in saved and value != saved[key]:
                    setattr(config, key, saved[key])


def nonfinite_weights(model: Any) -> list[tuple[str, int, int]]:
    """(name, non-finite values, values) of each floating-point weight holding NaN or Inf. Plain tensors only:
    quantized and packed weights (integer storage, tensor subclasses) cannot hold either."""
    import torch

    out = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
        if type(data) is not torch.Tensor or not data.is_floating_point() or data.device.type == "meta":
            continue
        finite = torch.isfinite(data)
        if not bool(finite.all()):
            out.append((name, int((~finite).sum()), data.numel()))
    return out

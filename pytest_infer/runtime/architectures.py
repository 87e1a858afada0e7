"""Random-weight models of other architectures, built from the small configs in ``fixtures/configs``.

They share the embedded model's tokenizer (same vocabulary size) and are saved with ``save_pretrained``
so that they load through the real ``from_pretrained(local_path)`` path like any checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pytest_infer.core.resources import fixtures_dir

SPEED_ONLY = {"llama-700m", "qwen3-0.6b"}  # real sizes (0.6-0.7 B): GPU stacks and cost measurements, not CPU tests


def available(include_speed_models: bool = False) -> list[str]:
    names = sorted(p.stem for p in (fixtures_dir() / "configs").glob("*.json"))
    return names if include_speed_models else [n for n in names if n not in SPEED_ONLY]


def main() -> None:
    """``python -m pytest_infer.runtime.architectures NAME OUT_DIR [DTYPE]``: build one model, print its path."""
    import sys

    print(build(sys.argv[1], Path(sys.argv[2]), dtype=sys.argv[3] if len(sys.argv) > 3 else None))


def build(name: str, out: Path, seed: int = 0, dtype: str | None = None) -> Path:
    """Build ``fixtures/configs/<name>.json`` with seeded random weights into ``out`` (reused if present); real-size
    configs in bfloat16 unless ``dtype`` says otherwise (``float32``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target = out / name
    if (target / "model.safetensors").is_file():
        return target
    spec = json.loads((fixtures_dir() / "configs" / f"{name}.json").read_text())
    model_type = spec.pop("model_type")
    spec.pop("architectures", None)
    config = AutoConfig.for_model(model_type, **spec)
    torch.manual_seed(seed)
    chosen = getattr(torch, dtype) if dtype else torch.bfloat16 if name in SPEED_ONLY else None
    model = AutoModelForCausalLM.from_config(config, dtype=chosen)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer_dir = fixtures_dir() / "tiny-llama"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / f, target / f)
    return target


if __name__ == "__main__":
    main()

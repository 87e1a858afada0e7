"""Fingerprints of what a run's outputs depend on besides the code: the model's files (sha256 each), its tokenizer
(the tokenizer files' sha256, and the token ids of the prompt set), and the prompt set itself. A golden records
them, so that a drift can say whether the weights, the tokenizer or the prompts changed.

Hashing reads every weight file once (about 1 s per GB); callers compute it once per session, and only when a golden
is written or has moved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# files of a model folder that decide its outputs (weights, configs, tokenizer, the model's own code)
_MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".txt", ".py", ".tiktoken")
_TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "spiece")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_folder(name_or_path: str) -> Path | None:
    """The local folder of a model: the directory itself, or a hub model's snapshot in the local cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name_or_path, "config.json")
    except Exception:  # an id huggingface_hub rejects, or no cache
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_files(name_or_path: str) -> dict[str, str]:
    """``{file name: sha256}`` of the files of the model's folder that decide its outputs ({} when it has none
    locally)."""
    folder = model_folder(name_or_path)
    if folder is None:
        return {}
    return {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix in _MODEL_SUFFIXES and not p.name.startswith(".")
    }


def tokenizer_hash(files: dict[str, str]) -> str | None:
    """One sha256 over the tokenizer's files (from :func:`model_files`), None when there are none."""
    parts = sorted((n, h) for n, h in files.items() if n.startswith(_TOKENIZER_PREFIXES))
    return sha256_text(json.dumps(parts)) if parts else None


def prompts_hash(prompts: Sequence[str]) -> str:
    return sha256_text("\n".join(prompts))


def prompt_ids_hash(tokenizer: Any, prompts: Sequence[str]) -> str:
    """sha256 of the token ids of each prompt: changes when the tokenizer splits the prompt set differently."""
    ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
    return sha256_text(json.dumps(ids))

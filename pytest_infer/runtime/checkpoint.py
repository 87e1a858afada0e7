"""Is this model usable before anything loads: a local directory with config, weights (safetensors, or pickle only
when allowed), a tokenizer and no custom code unless trusted; or a hub id, reachable or cached."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pytest_infer.core.errors import ConfigError
from pytest_infer.core.resources import embedded_model_path

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def hub_offline_variable() -> str | None:
    """The variable that puts the hub offline (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``), read
    as huggingface_hub reads it; None when online."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:  # huggingface_hub: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE, the first one set decides
            return f"{name}={value}" if value.strip().upper() in {"1", "ON", "YES", "TRUE"} else None
    return None


def hub_cached(repo_id: str) -> tuple[bool, str]:
    """Whether ``repo_id``'s config.json is in the local hub cache (no network), and the cache folder."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # an id huggingface_hub rejects
        found = None
    return isinstance(found, str), str(constants.HF_HUB_CACHE)


def validate_model(model: str, rootdir: Path, allow_pickle: bool) -> str:
    """Return the model as a resolved local path (string) or the hub id; raise ConfigError when unusable."""
    if not model:
        return str(embedded_model_path())
    path = Path(model).expanduser()
    if not path.is_absolute():
        path = (rootdir / path) if not path.exists() else path
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--infer-model {model}: expected a model directory (with config.json), got a file")
        if not (path / "config.json").is_file():
            raise ConfigError(f"--infer-model {model}: no config.json in {path}; point it at a saved model directory")
        weights = list(path.glob("*.safetensors"))
        pickles = list(path.glob("*.bin")) + list(path.glob("*.pt"))
        if not weights and pickles and not allow_pickle:
            raise ConfigError(
                f"--infer-model {model}: only pickle weights ({pickles[0].name}) found; pickle can run arbitrary code. "
                "Convert to safetensors, or pass --infer-allow-pickle if you trust this checkpoint"
            )
        if not weights and not pickles:
            raise ConfigError(
                f"--infer-model {model}: no weights (*.safetensors) in {path}; save the model there with "
                "model.save_pretrained(path)"
            )
        return str(path.resolve())
    if not HUB_ID.fullmatch(model):
        raise ConfigError(f"--infer-model {model}: no such directory ({path}), and not a hub id (org/name)")
    offline = hub_offline_variable()
    if offline is not None:
        cached, cache = hub_cached(model)
        if not cached:
            raise ConfigError(
                f"--infer-model {model}: no such directory ({path}), and as a hub id it is not in the local cache "
                f"({cache}) while {offline} forbids downloads. Download it where the hub is reachable "
                f"(huggingface-cli download {model}), or pass a local model directory"
            )
    return model  # a hub id such as org/name: resolved by from_pretrained


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tekken.json",
)


AUTO_MAP_MODEL_KEYS = ("AutoConfig", "AutoModelForCausalLM", "AutoModel")


def _natively_supported(model_type: str) -> bool:
    """Whether the installed Transformers has a built-in class for ``model_type`` (imports transformers:
    called only for a config that names its own code)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def validate_model_dir(model: str, trust_remote_code: bool) -> None:
    """Checks of a local model directory that need its files: config.json readable, a tokenizer present,
    and no custom code that would run on load unless ``--infer-trust-remote-code`` was given."""
    import json

    path = Path(model)
    if not path.is_dir():
        return  # a hub id
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--infer-model {model}: cannot read config.json ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"--infer-model {model}: config.json is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--infer-model {model}: config.json must hold a JSON object, got {type(data).__name__}")
    auto_map = data.get("auto_map")
    if isinstance(auto_map, dict) and not trust_remote_code:
        custom = {k: v for k, v in auto_map.items() if k in AUTO_MAP_MODEL_KEYS}
        model_type = str(data.get("model_type") or "")
        if custom and not (model_type and _natively_supported(model_type)):
            shown = ", ".join(f"{k} -> {v}" for k, v in custom.items())
            raise ConfigError(
                f"--infer-model {model}: config.json maps the model to its own Python code ({shown}"
                f"{f'; model_type {model_type!r} is not built into Transformers' if model_type else ''}), which "
                "would run when it loads. Remote code is off by default: read that code, and pass "
                "--infer-trust-remote-code (ini: infer_trust_remote_code = true) only if you trust it"
            )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"--infer-model {model}: no tokenizer in {path} (none of {', '.join(TOKENIZER_FILES[:4])}, ...); "
            f"save it next to the weights: tokenizer.save_pretrained({str(path)!r})"
        )

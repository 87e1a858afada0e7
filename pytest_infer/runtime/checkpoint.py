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


# --- what the model can take (issue 20): its positions and its vocabulary, from config.json -------------
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def read_config(model: str) -> dict[str, object]:
    """A local model's config.json as a dict, the text model's keys over the top level ({} when unreadable or a
    hub id: nothing is fetched here)."""
    import json

    try:
        data = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    text = data.get("text_config")
    return {**data, **text} if isinstance(text, dict) else data


def positions(config: dict[str, object]) -> tuple[int, str] | None:
    """The most positions the model takes (prompt and generated tokens together) and the config key that says so;
    None when the config names none (or not as a positive integer)."""
    for key in POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None


def length_problems(
    config: dict[str, object], new_tokens: tuple[int, ...], perf_new_tokens: int, pad_extra: int, context: int = 0
) -> list[tuple[str, str]]:
    """(option, problem) for every length the model cannot take whatever the prompts: more new tokens, or more
    pad tokens, than its positions (a prompt has at least one token), a context longer than its positions or
    leaving no prompt before the new tokens. Checked at start-up from config.json."""
    out = []
    longest = max(new_tokens, default=0)
    if context and context <= longest:
        out.append(
            ("context", f"{context:,} positions leave no prompt before {longest:,} new tokens (--infer-new-tokens); "
             f"give more than {longest:,}")
        )  # fmt: skip
    known = positions(config)
    if known is None:
        return out
    limit, key = known
    where = f"the model takes {limit:,} positions ({key} in config.json)"
    if context > limit:
        out.append(("context", f"{context:,} positions are more than {where}; give at most {limit:,}"))
    for name, wanted, what in (
        ("new_tokens", max(new_tokens, default=0), "new tokens after a prompt"),
        ("perf_new_tokens", perf_new_tokens, "new tokens per timed call after a prompt"),
        ("padding", pad_extra, "pad tokens beside a prompt"),
    ):
        if wanted >= limit:
            out.append((name, f"{wanted:,} {what} need more than {where}; give at most {limit - 1:,}"))
    return out


def prompt_problem(
    token_counts: list[int], config: dict[str, object], new_tokens: int, pad_extra: int, prompts_name: str
) -> str | None:
    """Why the longest prompt, with the new tokens or the pad tokens the run adds, does not fit the model's
    positions (None: it fits). Prompts are refused, never truncated: a truncated prompt is another test."""
    known = positions(config)
    if known is None or not token_counts:
        return None
    limit, key = known
    longest = max(token_counts)
    needed = longest + max(new_tokens, pad_extra)
    if needed <= limit:
        return None
    line = token_counts.index(longest) + 1
    return (
        f"{prompts_name}: prompt {line} is {longest:,} tokens; with {new_tokens:,} new tokens and {pad_extra:,} "
        f"extra pad tokens the run needs {needed:,} positions, but the model takes {limit:,} ({key} in "
        "config.json). pytest-infer refuses such prompts rather than truncate them (a truncated prompt tests "
        "something else): shorten the prompt, or lower --infer-new-tokens / --infer-padding"
    )


def vocabulary_problem(model: str, config: dict[str, object], tokenizer_size: int) -> str | None:
    """Why the checkpoint's embedding is smaller than its tokenizer (None: it is not): a token id past
    ``vocab_size`` has no row (an index error on cpu, a device-side assert that poisons a CUDA context)."""
    vocab = config.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab >= tokenizer_size:
        return None
    return (
        f"checkpoint {model}: its vocabulary (vocab_size {vocab:,} in config.json) is smaller than its tokenizer's "
        f"({tokenizer_size:,} tokens): ids {vocab:,}-{tokenizer_size - 1:,} have no embedding. Save the tokenizer "
        "the model was trained with, or resize the embeddings (model.resize_token_embeddings(len(tokenizer))) "
        "and save the model again"
    )


def loaded_config(model: str, trust_remote_code: bool) -> dict[str, object]:
    """The model's config as :func:`read_config` reads it; for a hub id, through ``AutoConfig`` (from the local
    cache, or fetched as the run would fetch it). {} when it cannot be read: the load reports why."""
    local = read_config(model)
    if local or Path(model).is_dir():
        return local
    try:
        from transformers import AutoConfig

        data = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code).to_dict()
    except Exception:
        return {}
    text = data.get("text_config")
    return {**data, **text} if isinstance(text, dict) else data


# --- a checkpoint that does not match its model (issue 20): refused at load, never blamed on a technique ----
def _listed(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def loading_problem(label: str, info: dict[str, object], architecture: str) -> str | None:
    """Why a checkpoint does not hold this model's weights, from ``from_pretrained(..., output_loading_info=True)``
    (None: it does). A missing tensor is initialised at random, differently in every load, so the reference and
    a candidate would disagree and the technique be blamed; an unexpected one means another architecture."""
    missing = sorted(str(k) for k in info.get("missing_keys") or ())  # type: ignore[attr-defined]
    unexpected = sorted(str(k) for k in info.get("unexpected_keys") or ())  # type: ignore[attr-defined]
    mismatched = [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ()]  # type: ignore[attr-defined]
    parts = []
    if missing:
        parts.append(
            f"its weights lack {len(missing)} tensor(s) {architecture} needs ({_listed(missing)}), which Transformers "
            "would initialise at random, differently in every load"
        )
    if unexpected:
        parts.append(
            f"its weights carry {len(unexpected)} tensor(s) {architecture} does not have ({_listed(unexpected)})"
        )
    if mismatched:
        parts.append(f"{len(mismatched)} tensor(s) have another shape than {architecture}'s ({_listed(mismatched)})")
    if not parts:
        return None
    return (
        f"checkpoint {label} is broken, not the technique: {'; '.join(parts)}. Save the complete model again "
        "(model.save_pretrained) or fix config.json to match its weights"
    )


def nonfinite_problem(label: str, counts: list[tuple[str, int, int]], dtype: str) -> str | None:
    """Why a checkpoint's loaded weights hold NaN or Inf (None: none do); ``counts`` is (tensor, non-finite
    values, values) for each tensor with any."""
    if not counts:
        return None
    shown = ", ".join(f"{name} ({bad:,} of {total:,} values)" for name, bad, total in counts[:4])
    more = f", ... ({len(counts) - 4} more tensors)" if len(counts) > 4 else ""
    half = (
        f" (where they are finite in float32, they overflow {dtype}'s range: test another dtype)"
        if dtype == "float16"
        else ""
    )
    return (
        f"checkpoint {label} is broken, not the technique: its weights in {dtype} hold NaN or Inf: {shown}{more}{half}"
    )

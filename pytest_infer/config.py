"""One resolved, validated, serialisable configuration.

Every ``--infer-*`` option has an ``infer_*`` ini twin. :data:`OPTIONS` is the single table both
are declared from (``plugin.py`` turns it into ``addoption``/``addini`` calls, ``docs/configuration.md``
is checked against it) and :func:`resolve` is the single place a value is decided: command line,
then ini, then default. Nothing here imports pytest, torch or transformers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
SUITES = ("parity", "generation", "perf")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class ConfigError(ValueError):
    """A configuration value is wrong; the message says what to fix. The plugin raises it as UsageError."""


def embedded_model_path() -> Path:
    """The tiny trained model that ships with the project (``fixtures/tiny-llama``)."""
    from pytest_infer.resources import fixtures_dir

    return fixtures_dir() / "tiny-llama"


@dataclass(frozen=True)
class Option:
    """One ``--infer-<name>`` flag and its ``infer_<name>`` ini twin."""

    name: str
    help: str
    default: Any
    kind: str = "str"  # str | list | bool | int | float
    metavar: str = "VALUE"
    choices: tuple[str, ...] = ()
    minimum: int = 1  # for kinds "int" and "float"

    @property
    def flag(self) -> str:
        return "--infer-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "infer_" + self.name


OPTIONS: tuple[Option, ...] = (
    Option(
        "model",
        "model to test: a local directory or a hub id (default: the embedded tiny model)",
        "",
        metavar="PATH|ID",
    ),
    Option(
        "device",
        "device(s) to run on, comma-separated: auto, cpu, cuda, cuda:1, xpu, mps (default: auto)",
        ["auto"],
        "list",
        "DEVICE[,DEVICE]",
    ),
    Option(
        "dtype",
        "dtype(s) to test, comma-separated: float32, bfloat16, float16 (default: float32)",
        ["float32"],
        "list",
        "DTYPE[,DTYPE]",
    ),
    Option(
        "technique",
        "techniques or families to test, comma-separated; 'all' for every one (default: all)",
        ["all"],
        "list",
        "NAME[,NAME]",
    ),
    Option(
        "suite",
        "bundled suites to collect, comma-separated: parity, generation, perf, all (default: none)",
        [],
        "list",
        "SUITE[,SUITE]",
    ),
    Option("reference", "technique the others are compared with (default: eager)", "eager", metavar="NAME"),
    Option("reference_dtype", "dtype of the reference run (default: float32)", "float32", metavar="DTYPE"),
    Option("strict", "fail instead of skip when a selected technique cannot run on this stack", False, "bool"),
    Option("trust_remote_code", "allow the model's own Python code to run (off by default)", False, "bool"),
    Option("allow_pickle", "allow pickle (.bin) checkpoints; only safetensors are loaded otherwise", False, "bool"),
    Option(
        "cache_dir",
        "cache directory for compile caches and built models (default: ~/.cache/pytest-infer)",
        "",
        metavar="DIR",
    ),
    Option("prompts", "prompt file: one prompt per line, UTF-8 (default: the bundled prompt set)", "", metavar="FILE"),
    Option(
        "max_models",
        "how many loaded models stay resident across tests and files: auto keeps them while their weights fit in a "
        "quarter of the memory they live in (at least two), N at most N; beyond, the oldest is evicted",
        "auto",
        "int",
        "N|auto",
        choices=("auto",),
    ),
    Option(
        "tolerance_mode",
        "how default bounds are set: floor (tightened to the measured noise of the reference) or fixed (the per-dtype table)",
        "floor",
        metavar="MODE",
        choices=("floor", "fixed"),
    ),
    Option(
        "new_tokens",
        "greedy tokens generated for generation parity, comma-separated: each length is a separate generate call",
        ["16", "64"],
        "list",
        "N[,N]",
    ),
    Option(
        "padding",
        "padding sweep of the padded-batch check: 'left:N,N;right:N'",
        "left:0,1,7,32;right:0,7",
        metavar="SWEEP",
    ),
    Option(
        "baseline",
        "technique the speed/memory of the others is measured against, in the same session (default: the reference)",
        "",
        metavar="NAME",
    ),
    Option("perf_new_tokens", "tokens generated per timed call in the perf suite (forced length)", 32, "int", "N"),
    Option(
        "perf_scenarios",
        "perf-suite scenarios to time: auto (each technique where its family shows: docs/performance.md), all, "
        "or a comma list of decode,prefill,ttft,load,memory,batching",
        ["auto"],
        "list",
        "auto|all|NAMES",
    ),
    Option("perf_rounds", "timed rounds per technique (each paired with a baseline round)", 5, "int", "N"),
    Option(
        "perf_warmup",
        "extra untimed warm-up calls of each side before the timed rounds (after the first, compiling, call and "
        "the call that sizes the samples and measures memory)",
        0,
        "int",
        "N",
        minimum=0,
    ),
    Option(
        "compare_fail",
        "fail a perf test whose metric regressed against the stored pytest-benchmark baseline, optionally for one "
        "scenario: 'cpu_speedup:8%,load.cpu_speedup:30%,peak_memory:5%' (paired ratios for shared runners)",
        "",
        metavar="[SCENARIO.]METRIC:PCT[,...]",
    ),
    Option(
        "markdown",
        "write the technique x check matrix as Markdown to this path (also appended to $GITHUB_STEP_SUMMARY when set)",
        "",
        metavar="PATH",
    ),
    Option(
        "list",
        "print the technique catalogue with, for this stack, runnable or the skip reason; then exit",
        False,
        "bool",
    ),
    Option(
        "report", "write the JSON report (versioned schema: docs/report-schema.md) to this path", "", metavar="PATH"
    ),
    Option(
        "tp_size",
        "ranks of the tensor-parallel techniques (processes started through torch.distributed)",
        2,
        "int",
        "N",
    ),
    Option(
        "rank_timeout",
        "seconds a multi-process technique's ranks may run before they are stopped and the test fails",
        300,
        "int",
        "SECONDS",
    ),
    Option(
        "gpus_per_worker",
        "under pytest-xdist, GPUs pinned to each worker through CUDA_VISIBLE_DEVICES (0: no pinning)",
        1,
        "int",
        "N",
        minimum=0,
    ),
    Option(
        "isolate",
        "run the tests in a pytest-xdist worker (-n 1 added when no -n is given): a technique that crashes the "
        "process fails its own test and the session goes on",
        False,
        "bool",
    ),
    Option(
        "timeout",
        "seconds one pytest-infer test may run before it fails with where it was (0: no limit)",
        0,
        "int",
        "SECONDS",
        minimum=0,
    ),
    Option(
        "progress",
        "seconds a step (loading, compiling, benchmarking a technique) runs before the terminal names it "
        "(0: never; never under -q or on xdist workers)",
        3.0,
        "float",
        "SECONDS",
        minimum=0,
    ),
    Option(
        "plot",
        "write a PNG of speedup vs memory ratio per technique, parity marked (needs matplotlib: pytest-infer[plot])",
        "",
        metavar="PATH",
    ),
    Option(
        "tolerance",
        "tolerance overrides, ';'-separated: [TECHNIQUE:][DTYPE:]metric=value,... e.g. 'sdpa:bfloat16:max_abs=0.2'",
        [],
        "list",
        "SPEC",
    ),
)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class InferConfig:
    """The resolved configuration of one session (serialisable: see :meth:`to_dict`)."""

    model: str
    devices: tuple[str, ...]
    dtypes: tuple[str, ...]
    techniques: tuple[str, ...]
    suites: tuple[str, ...]
    reference: str
    reference_dtype: str
    strict: bool
    trust_remote_code: bool
    allow_pickle: bool
    cache_dir: str
    prompts: str
    max_models: int  # 0: auto (bounded by memory, see pytest_infer.models.ModelCache)
    tolerance_mode: str = "floor"
    new_tokens: tuple[int, ...] = (16, 64)
    padding: str = "left:0,1,7,32;right:0,7"
    report: str = ""
    markdown: str = ""
    list: bool = False
    baseline: str = ""
    perf_new_tokens: int = 32
    perf_scenarios: tuple[str, ...] = ("auto",)
    perf_rounds: int = 5
    perf_warmup: int = 0
    compare_fail: str = ""
    tp_size: int = 2
    rank_timeout: int = 300
    gpus_per_worker: int = 1
    plot: str = ""
    isolate: bool = False
    timeout: int = 0
    progress: float = 3.0
    tolerance: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)  # option name -> "cli" | "ini" | "default"

    @property
    def model_is_embedded(self) -> bool:
        return Path(self.model) == embedded_model_path()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sources"] = dict(self.sources)
        return d


def parse_bool(value: str | bool, what: str) -> bool:
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{what}: expected true or false, got {value!r}")


def split_list(values: str | Sequence[str], sep: str = ",") -> list[str]:
    """``"a, b" / ["a,b", "c"]`` -> ``["a", "b", "c"]`` (repeated flags and comma lists both work)."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        out.extend(p.strip() for p in item.replace("\n", sep).split(sep) if p.strip())
    return out


def normalize_dtype(name: str) -> str:
    n = name.strip().lower().removeprefix("torch.")
    n = DTYPE_ALIASES.get(n, n)
    if n not in DTYPES:
        raise ConfigError(
            f"unknown dtype {name!r}; valid choices: {', '.join(DTYPES)} (aliases: {', '.join(DTYPE_ALIASES)})"
        )
    return n


def _coerce(opt: Option, raw: Any, source: str, ini_file: str = "") -> Any:
    what = f"{opt.flag}" if source == "cli" else f"ini option {opt.ini}"
    where = f" (set in {ini_file})" if source == "ini" and ini_file else ""
    if opt.kind == "bool":
        try:
            return parse_bool(raw, what)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{where}") from None
    if opt.kind == "list":
        return split_list(raw, ";" if opt.name == "tolerance" else ",")
    if opt.kind == "int":
        if str(raw).strip().lower() in opt.choices:  # a word the option takes besides integers (auto)
            return str(raw).strip().lower()
        try:
            value = int(str(raw).strip())
        except ValueError:
            words = "".join(f" or {c}" for c in opt.choices)
            raise ConfigError(f"{what}: expected an integer{words}, got {raw!r}{where}") from None
        if value < opt.minimum:
            raise ConfigError(f"{what}: must be at least {opt.minimum}, got {value}{where}")
        return value
    if opt.kind == "float":
        try:
            number = float(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{what}: expected a number, got {raw!r}{where}") from None
        if not number >= opt.minimum:  # also rejects nan
            raise ConfigError(f"{what}: must be at least {opt.minimum}, got {raw!r}{where}")
        return number
    return str(raw).strip()


def _blank(opt: Option, raw: Any) -> bool:
    """An option given on the command line with nothing in it (``--infer-model "$UNSET"``)."""
    if opt.kind == "bool":
        return False
    if opt.kind == "list":
        return not split_list(raw, ";" if opt.name == "tolerance" else ",")
    return not str(raw).strip()


def resolve_raw(
    cli: Callable[[str], Any], ini: Callable[[str], Any], ini_file: str = ""
) -> tuple[dict[str, Any], dict[str, str]]:
    """Pick each option's value: command line, then ini, then default. ``cli``/``ini`` return None/"" when unset.

    An option given on the command line with an empty value is an error rather than the default: it is
    almost always an unset shell variable (``--infer-model "$MODEL"``), and silently testing the embedded
    model instead of the user's would report a pass for the wrong model."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        raw = cli(opt.name)
        if raw is not None and raw != [] and _blank(opt, raw):
            raise ConfigError(
                f"{opt.flag}: empty value (an unset shell variable?); give a value, or leave the option out "
                "to use its default"
            )
        if raw is not None and raw != [] and raw != "":
            values[opt.name], sources[opt.name] = _coerce(opt, raw, "cli"), "cli"
            continue
        raw = ini(opt.ini)
        if raw is not None and raw != "" and raw != []:
            values[opt.name], sources[opt.name] = _coerce(opt, raw, "ini", ini_file), "ini"
            continue
        values[opt.name] = list(opt.default) if isinstance(opt.default, list) else opt.default
        sources[opt.name] = "default"
    return values, sources


def origin(name: str, sources: Mapping[str, str]) -> str:
    """How the user wrote option ``name``: ``--infer-dtype``, or ``ini option infer_dtype`` when the value
    came from the ini file (so a message points at the line to fix)."""
    opt = OPTION_BY_NAME[name]
    return f"ini option {opt.ini}" if sources.get(name) == "ini" else opt.flag


@contextlib.contextmanager
def blamed(name: str, sources: Mapping[str, str], *errors: type[Exception], ini_file: str = "") -> Iterator[None]:
    """Re-raise :class:`ConfigError` (and ``errors``) raised inside as a ConfigError that starts with how the
    user wrote option ``name`` (``--infer-dtype: ...`` or ``ini option infer_dtype: ... (set in tox.ini)``)."""
    caught: tuple[type[Exception], ...] = (ConfigError, *errors)
    try:
        yield
    except caught as exc:
        text, flag, where = str(exc), OPTION_BY_NAME[name].flag, origin(name, sources)
        if text.startswith(flag):
            text = where + text[len(flag) :]
        elif not text.startswith(where):
            text = f"{where}: {text}"
        if sources.get(name) == "ini" and ini_file:
            text += f" (set in {ini_file})"
        raise ConfigError(text) from None


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-infer"


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


def validate_dtypes(names: Sequence[str]) -> tuple[str, ...]:
    if not names:
        raise ConfigError("no dtype given; valid choices: " + ", ".join(DTYPES))
    return tuple(dict.fromkeys(normalize_dtype(n) for n in names))


def validate_suites(names: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for n in names:
        n = n.lower()
        if n == "all":
            out.extend(SUITES)
        elif n in SUITES:
            out.append(n)
        else:
            raise ConfigError(f"unknown suite {n!r}; valid choices: {', '.join(SUITES)}, all")
    return tuple(dict.fromkeys(out))


def validate_perf_scenarios(values: Sequence[str]) -> tuple[str, ...]:
    from pytest_infer.scenarios import ScenarioError, validate

    try:
        return validate(values)
    except ScenarioError as exc:
        raise ConfigError(str(exc)) from None


def validate_choice(opt: Option, value: str) -> str:
    if value not in opt.choices:
        raise ConfigError(f"{opt.flag}: unknown value {value!r}; valid choices: {', '.join(opt.choices)}")
    return value


def validate_new_tokens(values: Sequence[str]) -> tuple[int, ...]:
    out = []
    for v in values:
        if not str(v).strip().isdigit() or int(v) < 1:
            raise ConfigError(f"--infer-new-tokens: {v!r} is not a positive integer (e.g. 16,64)")
        out.append(int(v))
    return tuple(sorted(set(out)))


def validate_padding(spec: str) -> str:
    from pytest_infer.padding import parse_sweep

    try:
        parse_sweep(spec)
    except ValueError as exc:
        raise ConfigError(f"--infer-padding: {exc}") from None
    return spec


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: tried for real, because ``os.access`` answers yes to
    root on a read-only mount."""
    import tempfile

    if not os.access(folder, os.W_OK):
        return False
    try:
        fd, probe = tempfile.mkstemp(prefix=".pytest-infer-probe-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def validate_report_path(path: str, rootdir: Path, flag: str = "--infer-report") -> str:
    if not path:
        return ""
    p = Path(path).expanduser()
    if p.is_dir():
        example = {"--infer-markdown": "report.md", "--infer-plot": "plot.png"}.get(flag, "report.json")
        raise ConfigError(f"{flag} {path}: is a directory; give a file path, e.g. {p / example}")
    folder = p.parent if p.parent != Path("") else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: folder {folder} does not exist; create it or choose another path")
    if not _writable(folder):
        raise ConfigError(f"{flag} {path}: folder {folder} is not writable; choose a writable folder")
    return str(p)


def validate_compare_fail(spec: str) -> str:
    if spec:
        from pytest_infer.bench import parse_compare_fail

        try:
            parse_compare_fail(spec)
        except ValueError as exc:
            raise ConfigError(f"--infer-compare-fail: {exc}") from None
    return spec


def validate_cache_dir(path: str) -> str:
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--infer-cache-dir {path}: is a file; give a directory (created when missing)")
    return str(p)


def build(values: Mapping[str, Any], sources: Mapping[str, str], rootdir: Path, ini_file: str = "") -> InferConfig:
    """Validate what :func:`resolve_raw` picked; techniques and devices are validated by the session.
    Each message names the option as the user set it (flag or ini option, see :func:`blamed`)."""

    def check(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        with blamed(name, sources, ini_file=ini_file):
            return fn(*args)

    model = check("model", validate_model, values["model"], rootdir, values["allow_pickle"])
    if values["model"]:
        check("model", validate_model_dir, model, values["trust_remote_code"])
    cache_dir = values["cache_dir"] or str(default_cache_dir())
    return InferConfig(
        model=model,
        devices=tuple(dict.fromkeys(d.lower() for d in values["device"])) or ("auto",),
        dtypes=check("dtype", validate_dtypes, values["dtype"]),
        techniques=tuple(values["technique"]) or ("all",),
        suites=check("suite", validate_suites, values["suite"]),
        reference=values["reference"],
        reference_dtype=check("reference_dtype", normalize_dtype, values["reference_dtype"]),
        strict=values["strict"],
        trust_remote_code=values["trust_remote_code"],
        allow_pickle=values["allow_pickle"],
        cache_dir=check("cache_dir", validate_cache_dir, cache_dir),
        prompts=values["prompts"],
        max_models=0 if values["max_models"] == "auto" else values["max_models"],
        tolerance_mode=check(
            "tolerance_mode", validate_choice, OPTION_BY_NAME["tolerance_mode"], values["tolerance_mode"]
        ),
        new_tokens=check("new_tokens", validate_new_tokens, values["new_tokens"]),
        padding=check("padding", validate_padding, values["padding"]),
        report=check("report", validate_report_path, values["report"], rootdir),
        markdown=check("markdown", validate_report_path, values["markdown"], rootdir, "--infer-markdown"),
        list=values["list"],
        baseline=values["baseline"],
        perf_new_tokens=values["perf_new_tokens"],
        perf_scenarios=check("perf_scenarios", validate_perf_scenarios, values["perf_scenarios"]),
        perf_rounds=values["perf_rounds"],
        perf_warmup=values["perf_warmup"],
        compare_fail=check("compare_fail", validate_compare_fail, values["compare_fail"]),
        tp_size=values["tp_size"],
        rank_timeout=values["rank_timeout"],
        gpus_per_worker=values["gpus_per_worker"],
        plot=check("plot", validate_report_path, values["plot"], rootdir, "--infer-plot"),
        isolate=values["isolate"],
        timeout=values["timeout"],
        progress=values["progress"],
        tolerance=tuple(values["tolerance"]),
        sources=dict(sources),
    )


# --- markers and hooks: validated before any model loads -------------------------------------------

MEMORY_METRICS = (
    "weight_memory_ratio",
    "quantized_layers_ratio",
    "peak_memory_ratio",
    "peak_rss_ratio",
    "kv_memory_ratio",
)  # what infer_memory(metric=...) can bound: the ratios perf.py and storage.py measure
_NUMBER_KEYS = {"infer_speedup": "min", "infer_memory": "max"}


def _stack_key_problem(key: Any) -> str | None:
    from pytest_infer.stack import DEVICE_KINDS

    if key is None:
        return None  # everywhere
    if not isinstance(key, str):
        return f"stack={key!r} must be a string such as 'cuda', 'cuda:9' or 'cuda:9.0'"
    if key in ("default", "*", ""):
        return None
    kind, _, cap = key.partition(":")
    if kind not in DEVICE_KINDS or (cap and not re.fullmatch(r"\d+(\.\d+)?", cap)):
        return (
            f"stack={key!r} matches no stack: use a device kind ({', '.join(DEVICE_KINDS)}), optionally with a "
            "compute capability ('cuda:9', 'cuda:9.0'), or 'default'"
        )
    return None


def _number_problem(key: str, value: Any, allow_none: bool) -> str | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key}={value!r} is not a number"
    if value != value or value < 0:  # NaN or negative
        return f"{key}={value!r} must be a non-negative number"
    return None


def marker_problem(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """What is wrong with a pytest-infer marker's arguments, or None (other markers: None).

    Checked at collection so that a typo fails the session before any model loads, instead of failing
    (or, for an unknown stack key or metric, silently not applying) after the measurement."""
    if name == "infer_tolerance":
        from pytest_infer.technique import TOLERANCE_METRICS

        usage = f"@pytest.mark.infer_tolerance(METRIC=NUMBER, ..., stack=None) with METRIC one of {', '.join(TOLERANCE_METRICS)}"
        if args:
            return f"@pytest.mark.infer_tolerance takes keywords only, got {args!r}: {usage}"
        unknown = sorted(set(kwargs) - {*TOLERANCE_METRICS, "stack"})
        if unknown:
            return f"@pytest.mark.infer_tolerance: unknown keyword(s) {', '.join(unknown)}; {usage}"
        for key, value in kwargs.items():
            problem = _stack_key_problem(value) if key == "stack" else _number_problem(key, value, True)
            if problem:
                return f"@pytest.mark.infer_tolerance: {problem}"
        return None
    if name in _NUMBER_KEYS:
        bound = _NUMBER_KEYS[name]
        usage = f"@pytest.mark.{name}({bound}=NUMBER[, stack='cuda:9.0'][, metric=...])"
        if name == "infer_memory":
            usage += f" with metric one of {', '.join(MEMORY_METRICS)}"
        if args:
            return f"@pytest.mark.{name} takes keywords only, got {args!r}: {usage}"
        unknown = sorted(set(kwargs) - {bound, "stack", "metric"})
        if unknown:
            return f"@pytest.mark.{name}: unknown keyword(s) {', '.join(unknown)}; {usage}"
        if bound not in kwargs:
            return f"@pytest.mark.{name}: {bound}= is missing; {usage}"
        problem = _number_problem(bound, kwargs[bound], False)
        if problem is None and "stack" in kwargs:
            problem = _stack_key_problem(kwargs["stack"])
        metric = kwargs.get("metric")
        if problem is None and metric is not None:
            if not isinstance(metric, str) or not metric:
                problem = f"metric={metric!r} must be a metric name"
            elif name == "infer_memory" and metric not in MEMORY_METRICS:
                problem = f"metric={metric!r} is not a memory metric"
        return None if problem is None else f"@pytest.mark.{name}: {problem}; {usage}"
    if name == "infer_techniques":
        bad = [a for a in args if not isinstance(a, str)]
        if not args or bad or kwargs:
            return (
                "@pytest.mark.infer_techniques takes technique, family or stack names as strings, e.g. "
                f"infer_techniques('sdpa', 'attention'), got args={args!r} kwargs={dict(kwargs)!r}"
            )
    return None


def hook_origin(exc: BaseException, functions: Sequence[Callable[..., Any]]) -> str:
    """``file:line`` in the hook implementation (one of ``functions``, e.g. a conftest's
    ``pytest_infer_register_techniques``) from which ``exc`` was raised, or "" when none of them was."""
    files = {f.__code__.co_filename for f in functions if hasattr(f, "__code__")}
    codes = {f.__code__ for f in functions if hasattr(f, "__code__")}
    tb, where = exc.__traceback__, ""
    entered = False
    while tb is not None:
        code = tb.tb_frame.f_code
        entered = entered or code in codes
        if entered and code.co_filename in files:
            where = f"{code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where

"""One resolved, validated, serialisable configuration.

Every ``--infer-*`` option has an ``infer_*`` ini twin. :data:`OPTIONS` is the single table both
are declared from (``plugin.py`` turns it into ``addoption``/``addini`` calls, ``docs/configuration.md``
is checked against it) and :func:`resolve` is the single place a value is decided: command line,
then ini, then default. Nothing here imports pytest, torch or transformers.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
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
    minimum: int = 1  # for kind "int"

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
    Option("max_models", "how many loaded models to keep resident before evicting the oldest", 2, "int", "N"),
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
    Option("perf_rounds", "timed rounds per technique (each paired with a baseline round)", 5, "int", "N"),
    Option(
        "perf_warmup",
        "untimed warm-up calls before the rounds (after the first, compiling, call)",
        1,
        "int",
        "N",
        minimum=0,
    ),
    Option(
        "compare_fail",
        "fail a perf test whose metric regressed against the stored pytest-benchmark baseline: 'peak_memory:5%,tokens_per_s:10%'",
        "",
        metavar="METRIC:PCT[,...]",
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
    max_models: int
    tolerance_mode: str = "floor"
    new_tokens: tuple[int, ...] = (16, 64)
    padding: str = "left:0,1,7,32;right:0,7"
    report: str = ""
    markdown: str = ""
    list: bool = False
    baseline: str = ""
    perf_new_tokens: int = 32
    perf_rounds: int = 5
    perf_warmup: int = 1
    compare_fail: str = ""
    tp_size: int = 2
    rank_timeout: int = 300
    gpus_per_worker: int = 1
    plot: str = ""
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


def _coerce(opt: Option, raw: Any, source: str) -> Any:
    what = f"{opt.flag}" if source == "cli" else f"ini option {opt.ini}"
    if opt.kind == "bool":
        return parse_bool(raw, what)
    if opt.kind == "list":
        return split_list(raw, ";" if opt.name == "tolerance" else ",")
    if opt.kind == "int":
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{what}: expected an integer, got {raw!r}") from None
        if value < opt.minimum:
            raise ConfigError(f"{what}: must be at least {opt.minimum}, got {value}")
        return value
    return str(raw).strip()


def resolve_raw(cli: Callable[[str], Any], ini: Callable[[str], Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Pick each option's value: command line, then ini, then default. ``cli``/``ini`` return None/"" when unset."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for opt in OPTIONS:
        raw = cli(opt.name)
        if raw is not None and raw != [] and raw != "":
            values[opt.name], sources[opt.name] = _coerce(opt, raw, "cli"), "cli"
            continue
        raw = ini(opt.ini)
        if raw is not None and raw != "" and raw != []:
            values[opt.name], sources[opt.name] = _coerce(opt, raw, "ini"), "ini"
            continue
        values[opt.name] = list(opt.default) if isinstance(opt.default, list) else opt.default
        sources[opt.name] = "default"
    return values, sources


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-infer"


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
            raise ConfigError(f"--infer-model {model}: no weights (*.safetensors) in {path}")
        return str(path.resolve())
    if not HUB_ID.fullmatch(model):
        raise ConfigError(f"--infer-model {model}: no such directory ({path}), and not a hub id (org/name)")
    return model  # a hub id such as org/name: resolved by from_pretrained


def validate_dtypes(names: Sequence[str]) -> tuple[str, ...]:
    if not names:
        raise ConfigError("--infer-dtype: no dtype given; valid choices: " + ", ".join(DTYPES))
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


def validate_choice(opt: Option, value: str) -> str:
    if value not in opt.choices:
        raise ConfigError(f"{opt.flag}: unknown value {value!r}; valid choices: {', '.join(opt.choices)}")
    return value


def validate_new_tokens(values: Sequence[str]) -> tuple[int, ...]:
    out = []
    for v in values:
        if not str(v).strip().isdigit() or int(v) < 1:
            raise ConfigError(f"--infer-new-tokens: {v!r} is not a positive integer")
        out.append(int(v))
    return tuple(sorted(set(out)))


def validate_padding(spec: str) -> str:
    from pytest_infer.padding import parse_sweep

    try:
        parse_sweep(spec)
    except ValueError as exc:
        raise ConfigError(f"--infer-padding: {exc}") from None
    return spec


def validate_report_path(path: str, rootdir: Path, flag: str = "--infer-report") -> str:
    if not path:
        return ""
    p = Path(path).expanduser()
    folder = p.parent if p.parent != Path("") else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{flag} {path}: folder {folder} is not writable")
    return str(p)


def validate_compare_fail(spec: str) -> str:
    if spec:
        from pytest_infer.bench import parse_compare_fail

        try:
            parse_compare_fail(spec)
        except ValueError as exc:
            raise ConfigError(f"--infer-compare-fail: {exc}") from None
    return spec


def build(values: Mapping[str, Any], sources: Mapping[str, str], rootdir: Path) -> InferConfig:
    """Validate what :func:`resolve_raw` picked; techniques and devices are validated by the session."""
    cache_dir = values["cache_dir"] or str(default_cache_dir())
    return InferConfig(
        model=validate_model(values["model"], rootdir, values["allow_pickle"]),
        devices=tuple(dict.fromkeys(d.lower() for d in values["device"])) or ("auto",),
        dtypes=validate_dtypes(values["dtype"]),
        techniques=tuple(values["technique"]) or ("all",),
        suites=validate_suites(values["suite"]),
        reference=values["reference"],
        reference_dtype=normalize_dtype(values["reference_dtype"]),
        strict=values["strict"],
        trust_remote_code=values["trust_remote_code"],
        allow_pickle=values["allow_pickle"],
        cache_dir=str(Path(cache_dir).expanduser()),
        prompts=values["prompts"],
        max_models=values["max_models"],
        tolerance_mode=validate_choice(OPTION_BY_NAME["tolerance_mode"], values["tolerance_mode"]),
        new_tokens=validate_new_tokens(values["new_tokens"]),
        padding=validate_padding(values["padding"]),
        report=validate_report_path(values["report"], rootdir),
        markdown=validate_report_path(values["markdown"], rootdir, "--infer-markdown"),
        list=values["list"],
        baseline=values["baseline"],
        perf_new_tokens=values["perf_new_tokens"],
        perf_rounds=values["perf_rounds"],
        perf_warmup=values["perf_warmup"],
        compare_fail=validate_compare_fail(values["compare_fail"]),
        tp_size=values["tp_size"],
        rank_timeout=values["rank_timeout"],
        gpus_per_worker=values["gpus_per_worker"],
        plot=validate_report_path(values["plot"], rootdir, "--infer-plot"),
        tolerance=tuple(values["tolerance"]),
        sources=dict(sources),
    )

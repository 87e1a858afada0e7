"""The option table and how a value is chosen: every ``--infer-*`` option has an ``infer_*`` ini twin.

:data:`OPTIONS` is the single table both are declared from (``plugin.py`` turns it into ``addoption``/``addini``
calls, with the ini type :func:`ini_type` gives, ``docs/configuration.md`` is checked against it) and
:func:`resolve_raw` is the single place a value is chosen: command line, then ini, then default.
:mod:`pytest_infer.validation` checks the values. Nothing here imports pytest, torch or transformers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_infer.core.errors import ConfigError
from pytest_infer.core.numbers import NumberError, bounded, parse_int, parse_real, why
from pytest_infer.core.text import parse_bool, split_list

WEEK_S = 7 * 24 * 3600  # the longest timer an option sets (signal.alarm and faulthandler take C integers)


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
    maximum: float | None = None  # for kinds "int" and "float": past it, a usage error (issue 20)
    why_maximum: str = ""  # shown with the maximum: what the bound protects

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
        "bundled suites to collect, comma-separated: parity, generation, perf, stability, all (default: none)",
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
        maximum=1000,
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
        "context",
        "long context: generation parity also runs two long prompts cut from the quality text, generated up to N "
        "positions (caches past their residual length, sliding windows past the window, static caches full); 0: off",
        0,
        "int",
        "N",
        minimum=0,
    ),
    Option(
        "padding",
        "padding sweep of the padded-batch check: 'left:N,N;right:N', or auto (left:0,1,7,32;right:0,7, and "
        "left:0,7;right:0 for a model over 100M parameters: each point is a forward of the whole batch)",
        "auto",
        metavar="SWEEP",
    ),
    Option(
        "baseline",
        "technique the speed/memory of the others is measured against, in the same session (default: the reference)",
        "",
        metavar="NAME",
    ),
    Option(
        "perf_new_tokens",
        "tokens generated per timed call in the perf suite (forced length)",
        32,
        "int",
        "N",
        maximum=1_000_000,
        why_maximum="and at most the model's positions",
    ),
    Option(
        "perf_scenarios",
        "perf-suite scenarios to time: auto (each technique where its family shows: docs/performance.md), all, "
        "or a comma list of decode,prefill,ttft,load,memory,batching",
        ["auto"],
        "list",
        "auto|all|NAMES",
    ),
    Option(
        "perf_rounds",
        "timed rounds per technique (each paired with a baseline round)",
        5,
        "int",
        "N",
        maximum=1000,
        why_maximum="each round runs both sides",
    ),
    Option(
        "perf_warmup",
        "extra untimed warm-up calls of each side before the timed rounds (after the first, compiling, call and "
        "the call that sizes the samples and measures memory)",
        0,
        "int",
        "N",
        minimum=0,
        maximum=1000,
        why_maximum="each call runs the model",
    ),
    Option(
        "compare_fail",
        "fail a perf test whose metric regressed against the stored pytest-benchmark run (--benchmark-compare's, "
        "else the newest of this stack), by a percentage or an absolute amount in the metric's unit, optionally for "
        "one scenario: 'cpu_speedup:8%,load.cpu_speedup:30%,peak_memory:50e6' (paired ratios for shared runners)",
        "",
        metavar="[SCENARIO.]METRIC:PCT%|VALUE[,...]",
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
        maximum=1024,
        why_maximum="one process per rank",
    ),
    Option(
        "rank_timeout",
        "seconds a multi-process technique's ranks may run before they are stopped and the test fails",
        300,
        "int",
        "SECONDS",
        maximum=WEEK_S,
        why_maximum="a week",
    ),
    Option(
        "gpus_per_worker",
        "under pytest-xdist, GPUs pinned to each worker through CUDA_VISIBLE_DEVICES (0: no pinning)",
        1,
        "int",
        "N",
        minimum=0,
        maximum=1024,
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
        maximum=WEEK_S,
        why_maximum="a week; 0 for no limit",
    ),
    Option(
        "progress",
        "seconds a step (loading, compiling, benchmarking a technique) runs before the terminal names it "
        "(0: never; never under -q or on xdist workers)",
        3.0,
        "float",
        "SECONDS",
        minimum=0,
        maximum=WEEK_S,
        why_maximum="a week; 0 for never",
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
    # issue 18: goldens, stored per model x stack class x dtype x technique (docs/goldens.md)
    Option(
        "golden",
        "compare every parity and generation case with its stored golden in this folder (a missing one is a skip, "
        "a failure under --infer-strict); docs/goldens.md",
        "",
        metavar="DIR",
    ),
    Option(
        "golden_record",
        "write the goldens missing from --infer-golden DIR (existing ones are compared, never overwritten)",
        False,
        "bool",
    ),
    Option(
        "golden_regen",
        "rewrite the goldens of the selected cases on purpose; the terminal lists what changed in each",
        False,
        "bool",
    ),
    Option(
        "golden_top_k",
        "log-probabilities kept per position when a golden is written",
        20,
        "int",
        "K",
        maximum=1000,
        why_maximum="per position of every prompt, in every golden file",
    ),
    # issue 17: lossy techniques, exact to their format and what the format costs (docs/tolerances.md)
    Option(
        "quality_text",
        "text the quality check scores (UTF-8, a few thousand tokens the model was not trained on; default: the bundled "
        "held-out prose)",
        "",
        metavar="FILE",
    ),
    Option(
        "quality_budget",
        "perplexity-ratio budgets, comma-separated: TECHNIQUE_OR_FAMILY=RATIO (e.g. 'quantization=1.05,bnb_nf4=1.2'); "
        "they replace the techniques' own",
        [],
        "list",
        "NAME=RATIO",
    ),
)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}

# what an ini value of each kind must look like, for the message when pytest's own type check refuses one
EXPECTED = {
    "bool": "true or false",
    "list": 'a list of strings, e.g. ["a", "b"] (in an INI file: one comma-separated line, or one item per line)',
    "int": "an integer",
    "float": "a number",
    "str": "a string",
}


def ini_type(opt: Option, pytest_version: tuple[int, ...]) -> Any:
    """The type ``opt``'s ini key is registered with: pytest's own where one fits, so ``[tool.pytest.ini_options]``
    and ``[tool.pytest]`` (pytest 9's native TOML) take TOML booleans, lists and numbers as they are.

    bool -> ``"bool"``; list -> ``"linelist"`` (a TOML array, or lines; an item may still be a comma list); int and
    float -> ``int | str`` / ``float | str`` from pytest 9.2 (a union: ``auto`` and a bad value reach our validator,
    whose message names the option), ``"string"`` before (an INI string, validated by us); str -> ``"string"``."""
    if opt.kind == "bool":
        return "bool"
    if opt.kind == "list":
        return "linelist"
    if opt.kind in ("int", "float") and pytest_version >= (9, 2):
        return int | str if opt.kind == "int" else float | str
    return "string"


def as_written(config: Any, name: str, value: Any) -> Any:
    """``value`` of ini key ``name`` as the file wrote it, where pytest converted an INI string to a number with
    ``int()``/``float()`` (which take ``1_000`` and ``٣``): our reader applies one rule to every number (issue 20)."""
    entry = getattr(config, "_inicfg", {}).get(name)
    text = getattr(entry, "value", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(text, str):
        return text if getattr(entry, "mode", "ini") == "ini" else value
    return value


def coerce(opt: Option, raw: Any, source: str, ini_file: str = "") -> Any:
    what = f"{opt.flag}" if source == "cli" else f"ini option {opt.ini}"
    where = f" (set in {ini_file})" if source == "ini" and ini_file else ""
    if opt.kind == "bool":
        try:
            return parse_bool(raw, what)
        except ConfigError as exc:
            raise ConfigError(f"{exc}{where}") from None
    if opt.kind == "list":
        return split_list(raw, ";" if opt.name == "tolerance" else ",")
    if opt.kind in ("int", "float"):
        if opt.kind == "int" and str(raw).strip().lower() in opt.choices:  # a word it takes besides numbers (auto)
            return str(raw).strip().lower()
        try:
            value: float = parse_int(raw) if opt.kind == "int" else parse_real(raw)
        except NumberError as exc:
            kind = "an integer" if opt.kind == "int" else "a number"
            words = "".join(f" or {c}" for c in opt.choices)
            raise ConfigError(f"{what}: expected {kind}{words}, got {raw!r}{why(exc)}{where}") from None
        problem = bounded(value, opt.minimum, opt.maximum)
        if problem is not None:
            note = (
                f" ({opt.why_maximum})" if opt.why_maximum and opt.maximum is not None and value > opt.maximum else ""
            )
            raise ConfigError(f"{what}: {problem}{note}{where}")
        return value
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
    """Pick each option's value: command line, then ini, then default. ``cli``/``ini`` return None/""/[] when unset;
    ``ini`` raises :class:`ConfigError` with pytest's words when pytest's type check refuses the value.

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
            values[opt.name], sources[opt.name] = coerce(opt, raw, "cli"), "cli"
            continue
        try:
            raw = ini(opt.ini)
        except ConfigError as exc:  # pytest's own type check refused the value (see ini_type)
            where = f" (set in {ini_file})" if ini_file else ""
            raise ConfigError(f"ini option {opt.ini}: {exc}; expected {EXPECTED[opt.kind]}{where}") from None
        if raw is not None and raw != "" and raw != []:
            values[opt.name], sources[opt.name] = coerce(opt, raw, "ini", ini_file), "ini"
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


# --- markers and hooks: validated before any model loads -------------------------------------------

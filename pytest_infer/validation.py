"""Validation of the resolved option values into one :class:`~pytest_infer.core.config.InferConfig`: each value is
checked (model, dtypes, suites, paths, sweeps, rules...) and an error names the option as the user set it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_infer.core.config import InferConfig
from pytest_infer.core.detect import detect_stack
from pytest_infer.core.dtypes import DTYPES, normalize_dtype
from pytest_infer.core.errors import ConfigError
from pytest_infer.core.numbers import MAX_TOKENS, NumberError, parse_int, why
from pytest_infer.core.registry import Registry
from pytest_infer.core.resources import SUITES
from pytest_infer.core.technique import Technique
from pytest_infer.options import OPTION_BY_NAME, Option, blamed
from pytest_infer.parity.padding import DEFAULT_SWEEP, parse_sweep
from pytest_infer.perf.gate import parse_compare_fail
from pytest_infer.perf.scenarios import ScenarioError, validate
from pytest_infer.runtime.checkpoint import length_problems, read_config, validate_model, validate_model_dir


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-infer"


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
        try:
            n = parse_int(v)
        except NumberError as exc:
            raise ConfigError(f"--infer-new-tokens: {v!r} is not a positive integer{why(exc)} (e.g. 16,64)") from None
        if n < 1:
            raise ConfigError(f"--infer-new-tokens: {v!r} is not a positive integer (e.g. 16,64)")
        if n > MAX_TOKENS:
            raise ConfigError(f"--infer-new-tokens: {n} is more than {MAX_TOKENS:,} tokens")
        out.append(n)
    return tuple(sorted(set(out)))


def validate_quality_budget(specs: list[str]) -> tuple[str, ...]:
    """NAME=RATIO items (a technique, family or stack name; the ratio a number >= 1)."""
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            ratio = float(value)
        except ValueError:
            ratio = float("nan")
        if not sep or not name.strip() or not ratio >= 1.0:
            raise ConfigError(f"{spec!r}: expected NAME=RATIO with a ratio >= 1 (e.g. quantization=1.05)")
    return tuple(s.strip() for s in specs)


def validate_padding(spec: str) -> str:
    if spec.strip().lower() == "auto":
        return "auto"
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
        try:
            parse_compare_fail(spec)
        except ValueError as exc:
            raise ConfigError(f"--infer-compare-fail: {exc}") from None
    return spec


def validate_golden_dir(path: str, writing: bool, base: Path) -> str:
    """The goldens folder as an absolute path. Compared against only, it must exist (a typo would otherwise skip
    every golden as missing); to record or regenerate, it is created when missing, under a writable folder."""
    if not path:
        return ""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else base / p
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--infer-golden {path}: is a file; give the folder that holds (or will hold) the goldens")
    if not p.exists():
        if not writing:
            raise ConfigError(
                f"--infer-golden {path}: no such folder ({p}); record goldens into it first with "
                "--infer-golden-record (which creates it), or fix the path"
            )
        existing = next(parent for parent in p.parents if parent.exists())
        if not existing.is_dir() or not _writable(existing):
            raise ConfigError(f"--infer-golden {path}: cannot create it: {existing} is not a writable folder")
    elif writing and not _writable(p):
        raise ConfigError(f"--infer-golden {path}: folder {p} is not writable; goldens cannot be written there")
    return str(p)


def validate_golden_mode(golden: str, record: bool, regen: bool) -> None:
    if (record or regen) and not golden:
        flag = "--infer-golden-regen" if regen else "--infer-golden-record"
        raise ConfigError(f"{flag} writes goldens into the folder --infer-golden DIR names: give --infer-golden too")


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
    writing = bool(values["golden_record"] or values["golden_regen"])
    check(
        "golden_regen" if values["golden_regen"] else "golden_record",
        validate_golden_mode,
        values["golden"],
        values["golden_record"],
        values["golden_regen"],
    )
    # a folder set in the ini file is relative to the rootdir (where the ini is), one on the command line to the cwd
    base = rootdir if sources.get("golden") == "ini" else Path.cwd()
    golden = check("golden", validate_golden_dir, values["golden"], writing, base)
    new_tokens = check("new_tokens", validate_new_tokens, values["new_tokens"])
    padding = check("padding", validate_padding, values["padding"])
    pad_extra = max(p.extra for p in parse_sweep(DEFAULT_SWEEP if padding == "auto" else padding))
    problems = length_problems(read_config(model), new_tokens, values["perf_new_tokens"], pad_extra, values["context"])
    for name, problem in problems:
        with blamed(name, sources, ini_file=ini_file):
            raise ConfigError(f"{OPTION_BY_NAME[name].flag}: {problem}")
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
        new_tokens=new_tokens,
        padding=padding,
        context=values["context"],
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
        golden=golden,
        golden_record=values["golden_record"],
        golden_regen=values["golden_regen"],
        golden_top_k=values["golden_top_k"],
        quality_text=values["quality_text"],
        quality_budget=check("quality_budget", validate_quality_budget, values["quality_budget"]),
        sources=dict(sources),
    )


def comparison_problem(cfg: InferConfig, registry: Registry) -> tuple[str, str] | None:
    """(option, problem) when a reference or baseline set by the user cannot run on this stack: every test would
    be compared with it and fail, so it is a usage error at start-up. The defaults (eager) run everywhere, so the
    stack is probed (torch imported) only for a choice the user made."""
    chosen: list[tuple[str, Technique, tuple[str, ...]]] = []
    if cfg.sources.get("reference", "default") != "default":
        chosen.append(("reference", registry.get(cfg.reference), (cfg.reference_dtype,)))
    if cfg.baseline:
        chosen.append(("baseline", registry.get(cfg.baseline), cfg.dtypes))
    for name, technique, dtypes in chosen:
        flag = OPTION_BY_NAME[name].flag
        if name == "reference" and technique.runner == "multiprocess":
            return name, (
                f"{flag} {technique.name}: runs in separate ranks (torch.distributed), and the reference runs in "
                "this process: choose a single-process technique"
            )
        for device in cfg.devices:
            stack = detect_stack(device)
            for dtype in dtypes:
                reason = technique.skip_reason(stack, dtype, strict=False)
                if reason is not None:
                    return name, (
                        f"{flag} {technique.name}: this stack cannot run it ({stack.device_kind}, {dtype}): {reason}; "
                        f"every test is compared with the {name}: choose one this stack runs (pytest --infer-list)"
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

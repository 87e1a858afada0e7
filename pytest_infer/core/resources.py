"""Where the bundled data lives (``fixtures/``, ``suites/``, the embedded model, the prompt set) and reading a
prompt file.

In a checkout (and an editable install) they sit beside the package; in a built wheel the build
backend maps them into the package (``pytest_infer/fixtures``, ``pytest_infer/suites``).
"""

from __future__ import annotations

from pathlib import Path

from pytest_infer.core.errors import ConfigError

# the bundled suites: --infer-suite NAME collects these files of suites/ ("all": every one)
SUITE_FILES: dict[str, tuple[str, ...]] = {
    "parity": ("test_parity.py", "test_quantization.py", "test_parallelism.py"),
    "generation": ("test_generation.py", "test_caching.py", "test_batching.py"),
    "perf": ("test_performance.py",),
    # opt-in for now (issue 19): whether a technique's answers hold across batch composition (memory stability and
    # sampling reproducibility belong here too); not in the default parity,generation run
    "stability": ("test_batch_invariance.py",),
}
SUITES = tuple(SUITE_FILES)
# with --infer-golden: the golden tests of a suite, and the file whose tests each one follows case by case
GOLDEN_FILES: dict[str, tuple[str, str]] = {
    "parity": ("test_parity_golden.py", "test_parity.py"),
    "generation": ("test_generation_golden.py", "test_generation.py"),
}

_PACKAGE = Path(__file__).resolve().parent.parent  # pytest_infer/


def _find(name: str) -> Path:
    inside = _PACKAGE / name
    if inside.is_dir():
        return inside
    return _PACKAGE.parent / name


def fixtures_dir() -> Path:
    return _find("fixtures")


def suites_dir() -> Path:
    return _find("suites")


def default_prompts_file() -> Path:
    return fixtures_dir() / "prompts" / "default.txt"


def embedded_model_path() -> Path:
    """The tiny trained model that ships with the project (``fixtures/tiny-llama``)."""
    return fixtures_dir() / "tiny-llama"


def read_prompts(path: str) -> tuple[str, ...]:
    """The prompts of a UTF-8 file, one per line ('#' starts a comment); a ConfigError says what is wrong."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"--infer-prompts {path}: is a directory; give a text file, one prompt per line")
    if not p.is_file():
        raise ConfigError(f"--infer-prompts {path}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--infer-prompts {path}: not UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"--infer-prompts {path}: cannot read it ({exc.strerror})") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if not prompts:
        raise ConfigError(f"--infer-prompts {path}: no prompts (one prompt per line, '#' starts a comment)")
    return prompts

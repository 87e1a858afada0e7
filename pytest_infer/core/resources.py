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
    # opt-in (issue 19): what must not change when nothing changes, beyond what the default run checks: batch
    # composition (a forward per placement), seeded sampling (three sampled generations) and memory over repeated
    # calls (ten generations per technique); not in the default parity,generation run (docs/design-notes.md)
    "stability": ("test_batch_invariance.py", "test_sampling.py", "test_memory_stability.py"),
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


def read_text(path: str, flag: str, what: str) -> str:
    """A UTF-8 text file given to ``flag``; a ConfigError says what is wrong with it."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; give a text file, {what}")
    if not p.is_file():
        raise ConfigError(f"{flag} {path}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{flag} {path}: not UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror})") from None


def read_prompts(path: str) -> tuple[str, ...]:
    """The prompts of a UTF-8 file, one per line ('#' starts a comment); a ConfigError says what is wrong."""
    text = read_text(path, "--infer-prompts", "one prompt per line")
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    if not prompts:
        raise ConfigError(f"--infer-prompts {path}: no prompts (one prompt per line, '#' starts a comment)")
    return prompts


MIN_QUALITY_WORDS = 200  # two chunks of 128 tokens need at least this much prose


def quality_text(path: str = "") -> tuple[str, str]:
    """(text, where it came from) of the quality check: ``path`` (``--infer-quality-text``) or the bundled text."""
    if not path:
        return default_quality_text().read_text(encoding="utf-8"), "the bundled held-out text"
    text = read_text(path, "--infer-quality-text", "a few thousand tokens of prose")
    if len(text.split()) < MIN_QUALITY_WORDS:
        raise ConfigError(
            f"--infer-quality-text {path}: {len(text.split())} words; the quality check cuts the text into chunks of "
            f"128 tokens and needs at least two (a few thousand tokens for a useful interval)"
        )
    return text, path


def default_quality_text() -> Path:
    """The held-out text of the quality check (hand-written prose; none of its 8-word sequences is in the embedded
    model's training corpus)."""
    return fixtures_dir() / "texts" / "quality.txt"

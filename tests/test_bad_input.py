"""The bad inputs users really make, each through a real pytest session: a message that says what to fix,
exit code 4 (usage error) where the input is known at start-up, a readable failing (or skipped) test
otherwise, and never a Python traceback.

The start-up cases stop before torch is imported (except the device ones), ~1 s each; the cases that
need a model or a collection run the smallest selection that reaches them. docs/reliability.md lists the
corpus with its messages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_infer.__main__ import main as cli_main
from pytest_infer.core.resources import embedded_model_path
from pytest_infer.reports.document import SCHEMA_VERSION
from pytest_infer.reports.validate_input import MAX_BYTES
from pytest_infer.session import InferSession

EMBEDDED = embedded_model_path()
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


def assert_readable(result: pytest.RunResult) -> str:
    """No traceback of any kind in the session's output (Python's, or pytest's own frames); returns the output."""
    out = result.stdout.str() + "\n" + result.stderr.str()
    assert "Traceback (most recent call last)" not in out, out
    assert not re.search(r'File "[^"]+", line \d+', out), out
    assert not re.search(r"^\S+\.py:\d+: (in \S+|[\w.]+)$", out, re.M), out  # pytest's frame lines
    assert "INTERNALERROR" not in out, out
    assert "During handling of the above exception" not in out, out
    return out


# --- files the cases plant ------------------------------------------------------------------------


def model_dir(root: Path, name: str, *, skip: tuple[str, ...] = (), config: str | None = None) -> Path:
    """A copy of the embedded model without the files in ``skip`` (config.json replaced by ``config``)."""
    target = root / name
    target.mkdir()
    for f in EMBEDDED.iterdir():
        if f.name not in skip:
            shutil.copy(f, target / f.name)
    if config is not None:
        (target / "config.json").write_text(config)
    return target


def _plant(path: str, content: str | bytes = "") -> Callable[[Path], None]:
    def make(root: Path) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)

    return make


def _model(name: str, *, skip: tuple[str, ...] = (), config: str | None = None) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        model_dir(root, name, skip=skip, config=config)

    return make


def _link(path: str, target: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        (root / path).symlink_to(root / target)

    return make


def _only_config(root: Path) -> None:
    (root / "ckpt").mkdir()
    shutil.copy(EMBEDDED / "config.json", root / "ckpt" / "config.json")


def _no_config(root: Path) -> None:
    (root / "ckpt").mkdir()
    shutil.copy(EMBEDDED / "model.safetensors", root / "ckpt" / "model.safetensors")


REGISTER = "def pytest_infer_register_techniques(registry):\n"


@dataclass(frozen=True)
class Bad:
    """One bad input known at start-up: the session must stop with exit code 4 and ``expected`` (all of
    them, in order of appearance not required) in its error output."""

    id: str
    args: tuple[str, ...]
    expected: tuple[str, ...]
    plant: tuple[Callable[[Path], None], ...] = ()
    conftest: str = ""
    ini: str = ""
    env: dict[str, str] = field(default_factory=dict)


STARTUP = [
    # --- the model -----------------------------------------------------------------------------------
    Bad(
        "model-empty-variable",
        ("--infer-model=",),
        ("--infer-model: empty value (an unset shell variable?); give a value, or leave the option out",),
    ),
    Bad(
        "model-missing-dir",
        ("--infer-model", "./models/tiny-lama"),
        ("--infer-model ./models/tiny-lama: no such directory", "and not a hub id (org/name)"),
    ),
    Bad(
        "model-is-a-file",
        ("--infer-model", "weights.safetensors"),
        ("--infer-model weights.safetensors: expected a model directory (with config.json), got a file",),
        plant=(_plant("weights.safetensors", b"\0"),),
    ),
    Bad(
        "model-without-config",
        ("--infer-model", "ckpt"),
        ("--infer-model ckpt: no config.json in", "point it at a saved model directory"),
        plant=(_no_config,),
    ),
    Bad(
        "model-without-weights",
        ("--infer-model", "ckpt"),
        ("--infer-model ckpt: no weights (*.safetensors) in", "model.save_pretrained(path)"),
        plant=(_only_config,),
    ),
    Bad(
        "model-without-tokenizer",
        ("--infer-model", "notok"),
        ("no tokenizer in", "(none of tokenizer.json, tokenizer_config.json", "tokenizer.save_pretrained("),
        plant=(_model("notok", skip=TOKENIZER),),
    ),
    Bad(
        "model-config-not-json",
        ("--infer-model", "broken"),
        ("config.json is not valid JSON (Expecting property name",),
        plant=(_model("broken", config="{'model_type': 'llama'}"),),
    ),
    Bad(
        "hub-id-offline",
        ("--infer-model", "some-org/tiny-model"),
        (
            "--infer-model some-org/tiny-model: no such directory",
            "as a hub id it is not in the local cache",
            "while HF_HUB_OFFLINE=1 forbids downloads. Download it where the hub is reachable "
            "(huggingface-cli download some-org/tiny-model), or pass a local model directory",
        ),
        env={"HF_HUB_OFFLINE": "1"},
    ),
    # --- what to test ----------------------------------------------------------------------------------
    Bad(
        "technique-unknown",
        ("--infer-technique", "sdpaa"),
        ("--infer-technique sdpaa: unknown technique 'sdpaa' (did you mean sdpa", "or a stack like sdpa+static"),
    ),
    Bad(
        "family-misspelt",
        ("--infer-technique", "quantisation"),
        ("--infer-technique quantisation: unknown technique 'quantisation' (did you mean quantization",),
    ),
    Bad(
        "stack-two-attentions",
        ("--infer-technique", "sdpa+eager"),
        ("contradictory stack sdpa+eager: both set from_pretrained attn_implementation ('sdpa' vs 'eager')",),
    ),
    Bad(
        "stack-two-caches",
        ("--infer-technique", "static_cache+dynamic_cache"),
        ("contradictory stack static_cache+dynamic_cache: both set generate cache_implementation",),
    ),
    Bad(
        "stack-unknown-component",
        ("--infer-technique", "sdpa+turbo"),
        ("--infer-technique sdpa+turbo: unknown technique 'turbo'",),
    ),
    Bad(
        "stack-empty-component",
        ("--infer-technique", "sdpa+"),
        ("--infer-technique sdpa+: technique stack 'sdpa+': empty component",),
    ),
    Bad(
        "dtype-unknown",
        ("--infer-dtype", "fp64"),
        ("--infer-dtype: unknown dtype 'fp64'; valid choices: float32, bfloat16, float16",),
    ),
    Bad(
        "device-unknown",
        ("--infer-device", "gpu"),
        ("--infer-device gpu: invalid device 'gpu': accepted forms are auto, cpu, cuda, cuda:N",),
    ),
    Bad(
        "suite-misspelt",
        ("--infer-suite", "parity,perfomance"),
        ("--infer-suite: unknown suite 'perfomance'; valid choices: parity, generation, perf, stability, all",),
    ),
    Bad("reference-unknown", ("--infer-reference", "flash"), ("--infer-reference flash: unknown technique 'flash'",)),
    Bad(
        "baseline-unknown",
        ("--infer-baseline", "sdpa_fast"),
        ("--infer-baseline sdpa_fast: unknown technique 'sdpa_fast' (did you mean",),
    ),
    # --- tolerances ------------------------------------------------------------------------------------
    Bad(
        "tolerance-unknown-metric",
        ("--infer-tolerance", "sdpa:max_err=0.1"),
        ("tolerance 'sdpa:max_err=0.1': 'max_err=0.1' is not metric=value; metrics: max_abs, mean_abs",),
    ),
    Bad(
        "tolerance-not-a-number",
        ("--infer-tolerance", "max_abs=small"),
        ("--infer-tolerance: tolerance 'max_abs=small': 'small' is not a number (or 'none')",),
    ),
    Bad(
        "tolerance-negative",
        ("--infer-tolerance", "bf16:max_abs=-0.1"),
        ("tolerance 'bf16:max_abs=-0.1': max_abs must be a non-negative number",),
    ),
    Bad(
        "tolerance-missing-equals",
        ("--infer-tolerance", "max_abs 0.1"),
        ("tolerance 'max_abs 0.1': 'max_abs 0.1' is not metric=value",),
    ),
    Bad(
        "tolerance-unknown-technique",
        ("--infer-tolerance", "sdpx:max_abs=1"),
        ("--infer-tolerance: tolerance 'sdpx:max_abs=1': unknown technique 'sdpx' (did you mean sdpa",),
    ),
    # --- prompts ---------------------------------------------------------------------------------------
    Bad(
        "prompts-empty-file",
        ("--infer-prompts", "p.txt"),
        ("--infer-prompts p.txt: no prompts (one prompt per line, '#' starts a comment)",),
        plant=(_plant("p.txt"),),
    ),
    Bad(
        "prompts-only-blank-lines",
        ("--infer-prompts", "p.txt"),
        ("--infer-prompts p.txt: no prompts",),
        plant=(_plant("p.txt", "\n   \n\t\n# a comment\n"),),
    ),
    Bad("prompts-missing", ("--infer-prompts", "prompts.txt"), ("--infer-prompts prompts.txt: no such file",)),
    Bad(
        "prompts-not-utf8",
        ("--infer-prompts", "p.txt"),
        ("--infer-prompts p.txt: not UTF-8 (invalid continuation byte at byte 3); save it as UTF-8",),
        plant=(_plant("p.txt", "café\n".encode("latin-1")),),
    ),
    Bad(
        "prompts-a-directory",
        ("--infer-prompts", "prompts"),
        ("--infer-prompts prompts: is a directory; give a text file, one prompt per line",),
        plant=(_plant("prompts/a.txt", "hello\n"),),
    ),
    # --- numbers and specs -----------------------------------------------------------------------------
    Bad("tp-size-zero", ("--infer-tp-size", "0"), ("--infer-tp-size: must be at least 1, got 0",)),
    Bad("tp-size-not-int", ("--infer-tp-size", "two"), ("--infer-tp-size: expected an integer, got 'two'",)),
    Bad("new-tokens-zero", ("--infer-new-tokens", "16,0"), ("--infer-new-tokens: '0' is not a positive integer",)),
    Bad("new-tokens-text", ("--infer-new-tokens", "abc"), ("--infer-new-tokens: 'abc' is not a positive integer",)),
    Bad(
        "padding-unknown-side",
        ("--infer-padding", "middle:3"),
        ("--infer-padding: padding sweep 'middle:3': expected 'left:N,N;right:N'",),
    ),
    Bad(
        "padding-negative",
        ("--infer-padding", "left:-1"),
        ("--infer-padding: padding sweep 'left:-1': '-1' is not a non-negative integer",),
    ),
    Bad("perf-rounds-zero", ("--infer-perf-rounds", "0"), ("--infer-perf-rounds: must be at least 1, got 0",)),
    Bad(
        "compare-fail-with-a-unit",
        ("--infer-compare-fail", "peak_memory:5MB"),
        ("--infer-compare-fail: 'peak_memory:5MB': '5MB' is not a number (an absolute change) or a percentage",),
    ),
    Bad(
        "tolerance-mode-unknown",
        ("--infer-tolerance-mode", "loose"),
        ("--infer-tolerance-mode: unknown value 'loose'; valid choices: floor, fixed",),
    ),
    # --- output paths ----------------------------------------------------------------------------------
    Bad(
        "report-missing-folder",
        ("--infer-report", "out/run/report.json"),
        ("--infer-report out/run/report.json: folder out/run does not exist; create it or choose another path",),
    ),
    Bad(
        "report-is-a-directory",
        ("--infer-report", "out"),
        ("--infer-report out: is a directory; give a file path, e.g. out/report.json",),
        plant=(_plant("out/keep"),),
    ),
    Bad(
        "markdown-missing-folder",
        ("--infer-markdown", "ci/summary.md"),
        ("--infer-markdown ci/summary.md: folder ci does not exist",),
    ),
    Bad(
        "plot-missing-folder",
        ("--infer-plot", "plots/p.png"),
        ("--infer-plot plots/p.png: folder plots does not exist",),
    ),
    Bad(
        "cache-dir-is-a-file",
        ("--infer-cache-dir=cache",),
        ("--infer-cache-dir cache: is a file; give a directory (created when missing)",),
        plant=(_plant("cache", "x"),),
    ),
    # --- ini files -------------------------------------------------------------------------------------
    Bad(
        "ini-dtype",
        (),
        (
            "ini option infer_dtype: unknown dtype 'fp64'; valid choices: float32, bfloat16, float16",
            "(set in ",
            "tox.ini)",
        ),
        ini="infer_dtype = fp64",
    ),
    Bad(
        "ini-max-models",
        (),
        ("ini option infer_max_models: expected an integer or auto, got 'many'", "tox.ini)"),
        ini="infer_max_models = many",
    ),
    Bad(
        "ini-technique",
        (),
        ("ini option infer_technique sdpa+eagr: unknown technique 'eagr' (did you mean eager", "tox.ini)"),
        ini="infer_technique = sdpa+eagr",
    ),
    # --- conftest hooks --------------------------------------------------------------------------------
    Bad(
        "register-not-a-technique",
        (),
        (
            "pytest_infer_register_techniques (",
            "conftest.py:2): registry.add expects a pytest_infer.Technique, got float",
        ),
        conftest=REGISTER + "    registry.add(0.5)\n",
    ),
    Bad(
        "register-unknown-family",
        (),
        ("conftest.py:4): technique mine: unknown family 'customs'; valid: attention",),
        conftest="from pytest_infer import Technique\n\n"
        + REGISTER
        + "    registry.add(Technique('mine', 'customs'))\n",
    ),
    Bad(
        "register-duplicate-name",
        (),
        ("conftest.py:4): technique 'sdpa' is already registered (pass replace=True to override)",),
        conftest="from pytest_infer import Technique\n\n"
        + REGISTER
        + "    registry.add(Technique('sdpa', 'custom'))\n",
    ),
    Bad(
        "register-typo-in-field",
        (),
        ("conftest.py:4): TypeError: Technique.__init__() got an unexpected keyword argument 'familly'",),
        conftest="from pytest_infer import Technique\n\n"
        + REGISTER
        + "    registry.add(Technique(name='mine', familly='custom'))\n",
    ),
]

# --- issue 20: numbers as the number they claim to be, bounded --------------------------------------------
NON_ASCII = "ASCII digits 0-9, the only ones pytest-infer reads"
NUMBERS = [
    Bad(
        "new-tokens-arabic-digits",
        ("--infer-new-tokens", "16,\u0663"),
        ("--infer-new-tokens: '\u0663' is not a positive integer", NON_ASCII),
    ),
    Bad(
        "new-tokens-superscript",
        ("--infer-new-tokens", "\u00b2"),
        ("--infer-new-tokens: '\u00b2' is not a positive integer", NON_ASCII),
    ),
    Bad(
        "padding-superscript",
        ("--infer-padding", "left:0,\u00b2"),
        ("--infer-padding: padding sweep 'left:0,\u00b2': '\u00b2' is not a non-negative integer", NON_ASCII),
    ),
    Bad(
        "perf-rounds-arabic-digits",
        ("--infer-perf-rounds", "\u0661\u0660"),
        ("--infer-perf-rounds: expected an integer, got '\u0661\u0660'", NON_ASCII),
    ),
    Bad(
        "tp-size-overflows-c-int",
        ("--infer-tp-size", "9" * 23),
        ("--infer-tp-size: expected an integer, got '" + "9" * 23 + "' (a 23-digit number is too large)",),
    ),
    Bad(
        "tp-size-beyond-ranks",
        ("--infer-tp-size", "4096"),
        ("--infer-tp-size: must be at most 1024, got 4096 (one process per rank)",),
    ),
    Bad(
        "timeout-overflows-the-timer",
        ("--infer-timeout", "9999999999"),
        ("--infer-timeout: must be at most 604800, got 9999999999 (a week; 0 for no limit)",),
    ),
    Bad("timeout-exponent", ("--infer-timeout", "1e10"), ("--infer-timeout: expected an integer, got '1e10'",)),
    Bad(
        "rank-timeout-beyond-a-week",
        ("--infer-rank-timeout", "700000"),
        ("--infer-rank-timeout: must be at most 604800, got 700000 (a week)",),
    ),
    Bad(
        "progress-infinite",
        ("--infer-progress", "inf"),
        ("--infer-progress: expected a number, got 'inf' ('inf' is not a finite number)",),
    ),
    Bad(
        "progress-overflows-a-float",
        ("--infer-progress", "1e400"),
        ("--infer-progress: expected a number, got '1e400' ('1e400' is not a finite number (it overflows a float))",),
    ),
    Bad(
        "ini-max-models-underscore",
        (),
        (
            "ini option infer_max_models: expected an integer or auto, got '1_000' ('1_000': write integers without '_' separators)",
            "tox.ini)",
        ),
        ini="infer_max_models = 1_000",
    ),
    Bad(
        "ini-timeout-arabic-digit",  # pytest's typed ini reading would take it (int('\u0663') == 3)
        (),
        ("ini option infer_timeout: expected an integer, got '\u0663'", NON_ASCII, "tox.ini)"),
        ini="infer_timeout = \u0663",
    ),
    Bad(
        "ini-timeout-negative",
        (),
        ("ini option infer_timeout: must be at least 0, got -5", "tox.ini)"),
        ini="infer_timeout = -5",
    ),
    Bad(
        "tolerance-infinite",
        ("--infer-tolerance", "max_abs=inf"),
        (
            "tolerance 'max_abs=inf': 'inf' is not a number (or 'none') ('inf' is not a finite number); 'none' clears a bound",
        ),
    ),
    Bad(
        "tolerance-nan",
        ("--infer-tolerance", "max_kl=nan"),
        ("tolerance 'max_kl=nan': 'nan' is not a number (or 'none')",),
    ),
    Bad(
        "tolerance-fraction-above-one",
        ("--infer-tolerance", "min_top1=1.5"),
        ("tolerance 'min_top1=1.5': min_top1 is a fraction: at most 1, got 1.5",),
    ),
    Bad(
        "compare-fail-overflow",
        ("--infer-compare-fail", "speedup:1e999%"),
        ("--infer-compare-fail: 'speedup:1e999%': '1e999%' is not a percentage ('1e999' is not a finite number",),
    ),
    Bad(
        "compare-fail-beyond-1000-percent",
        ("--infer-compare-fail", "speedup:5000%"),
        ("'speedup:5000%': '5000%' must lie between 0% and 1000%",),
    ),
    Bad(
        "padding-beyond-any-model",
        ("--infer-padding", "left:99999999"),
        ("--infer-padding: padding sweep 'left:99999999': 99999999 pad tokens is more than 1,000,000",),
    ),
    # the model's positions, read from its config.json (the embedded model takes 512)
    Bad(
        "new-tokens-beyond-positions",
        ("--infer-new-tokens", "16,600"),
        (
            "--infer-new-tokens: 600 new tokens after a prompt need more than the model takes 512 positions (max_position_embeddings in config.json); give at most 511",
        ),
    ),
    Bad(
        "perf-new-tokens-beyond-positions",
        ("--infer-perf-new-tokens", "512"),
        (
            "--infer-perf-new-tokens: 512 new tokens per timed call after a prompt need more than the model takes 512 positions",
        ),
    ),
    Bad(
        "padding-beyond-positions",
        ("--infer-padding", "left:0,4096"),
        ("--infer-padding: 4,096 pad tokens beside a prompt need more than the model takes 512 positions",),
    ),
]

# --- issue 20: no output clobbers another output or an input ----------------------------------------------
OUTPUTS = [
    Bad(
        "markdown-over-report",
        ("--infer-report", "r.json", "--infer-markdown", "r.json"),
        ("--infer-markdown r.json: the same file as --infer-report r.json; give each output its own path",),
    ),
    Bad(
        "report-over-markdown-other-spelling",
        ("--infer-markdown", "r.md", "--infer-report", "out/../r.md"),
        ("--infer-markdown r.md: the same file as --infer-report out/../r.md; give each output its own path",),
        plant=(_plant("out/keep"),),
    ),
    Bad(
        "report-over-prompts",
        ("--infer-prompts", "p.txt", "--infer-report", "p.txt"),
        (
            "--infer-report p.txt: the same file as --infer-prompts p.txt, which is read, not written: writing it would destroy it",
        ),
        plant=(_plant("p.txt", "hello\n"),),
    ),
    Bad(
        "report-over-model-config",
        ("--infer-model", "ckpt", "--infer-report", "ckpt/config.json"),
        ("--infer-report ckpt/config.json: an existing file of --infer-model", "which is read, not written"),
        plant=(_model("ckpt"),),
    ),
    Bad(
        "benchmark-json-over-report",
        ("--infer-report", "r.json", "--benchmark-json", "r.json"),
        ("--benchmark-json r.json: the same file as --infer-report r.json",),
    ),
    Bad(
        "junitxml-over-plot",
        ("--infer-plot", "out.xml", "--junitxml", "out.xml"),
        ("--junitxml out.xml: the same file as --infer-plot out.xml",),
    ),
    Bad(
        "step-summary-over-markdown",
        ("--infer-markdown", "summary.md"),
        ("$GITHUB_STEP_SUMMARY summary.md: the same file as --infer-markdown summary.md",),
        env={"GITHUB_STEP_SUMMARY": "summary.md"},
    ),
    Bad(
        "report-over-a-golden",
        ("--infer-golden", "goldens", "--infer-report", "goldens/tiny/cpu/float32/sdpa.logits.json"),
        (
            "--infer-report goldens/tiny/cpu/float32/sdpa.logits.json: an existing file of --infer-golden",
            "which is read, not written",
        ),
        plant=(_plant("goldens/tiny/cpu/float32/sdpa.logits.json", "{}"),),
    ),
    Bad(
        "plot-through-a-link-to-the-report",
        ("--infer-report", "r.json", "--infer-plot", "link.png"),
        ("--infer-plot link.png: the same file as --infer-report r.json",),
        plant=(_plant("r.json", "{}"), _link("link.png", "r.json")),
    ),
]

# --- issue 20: a secret in a model id or URL is never echoed --------------------------------------------------
TOKEN = "hf_Q7xLm2PzR4tV8wK1nB5cD9fG3hJ6"
SECRETS = [
    Bad(
        "model-url-with-a-token",
        ("--infer-model", f"https://user:{TOKEN}@huggingface.co/org/model"),
        ("--infer-model https://user:***@huggingface.co/org/model: no such directory",),
    ),
    Bad(
        "model-id-is-a-token",
        ("--infer-model", TOKEN),
        ("--infer-model hf_Q***: no such directory", "as a hub id it is not in the local cache"),
        env={"HF_HUB_OFFLINE": "1"},
    ),
]

# --- issue 20: a reference or baseline this stack cannot run ---------------------------------------------------
NOWHERE = (
    "from pytest_infer import Technique\nfrom pytest_infer.core.requirements import Requirements\n\n"
    + REGISTER
    + "    registry.add(Technique('nowhere', 'custom', requirements=Requirements(packages=(('no-such-package-xyz', '>=1'),))))\n"
)
REFERENCES = [
    Bad(
        "reference-this-stack-cannot-run",
        ("--infer-reference", "nowhere"),
        (
            "--infer-reference nowhere: this stack cannot run it (cpu, float32): ",
            "every test is compared with the reference: choose one this stack runs",
        ),
        conftest=NOWHERE,
    ),
    Bad(
        "baseline-this-stack-cannot-run",
        ("--infer-baseline", "nowhere", "--infer-dtype", "bfloat16"),
        ("--infer-baseline nowhere: this stack cannot run it (cpu, bfloat16): ",),
        conftest=NOWHERE,
    ),
    Bad(
        "reference-in-separate-ranks",
        ("--infer-reference", "tensor_parallel"),
        (
            "--infer-reference tensor_parallel: runs in separate ranks (torch.distributed), and the reference runs in this process",
        ),
    ),
]


# --- issue 20: inputs the model cannot take, known once its tokenizer loads (collection) -------------------------
def _long_prompt(root: Path) -> None:
    (root / "p.txt").write_text("short one\n" + "word " * 600 + "\n", encoding="utf-8")


def _small_vocabulary(root: Path) -> None:
    target = model_dir(root, "ckpt")
    config = json.loads((target / "config.json").read_text())
    config["vocab_size"] = 1000
    (target / "config.json").write_text(json.dumps(config))


SUITE = ("--infer-suite", "parity", "--infer-technique", "sdpa", "-k", "logit")
AT_COLLECTION = [
    Bad(
        "prompt-longer-than-positions",
        ("--infer-prompts", "p.txt", *SUITE),
        (
            "--infer-prompts p.txt: prompt 2 is 601 tokens; with 64 new tokens and 32 extra pad tokens the run needs 665 positions, but the model takes 512 (max_position_embeddings in config.json). pytest-infer refuses such prompts rather than truncate them",
        ),
        plant=(_long_prompt,),
    ),
    Bad(
        "vocabulary-smaller-than-tokenizer",
        ("--infer-model", "ckpt", *SUITE),
        (
            "--infer-model ckpt: checkpoint ckpt: its vocabulary (vocab_size 1,000 in config.json) is smaller than its tokenizer's (2,048 tokens): ids 1,000-2,047 have no embedding",
        ),
        plant=(_small_vocabulary,),
    ),
]
STARTUP += NUMBERS + OUTPUTS + SECRETS + REFERENCES + AT_COLLECTION


@pytest.mark.parametrize("case", STARTUP, ids=[c.id for c in STARTUP])
def test_startup_errors_stop_with_a_message(
    case: Bad, pytester: pytest.Pytester, run_infer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for plant in case.plant:
        plant(pytester.path)
    if case.conftest:
        pytester.makeconftest(case.conftest)
    if case.ini:
        pytester.makeini(f"[pytest]\n{case.ini}\n")
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    pytester.makepyfile("def test_never_reached():\n    raise AssertionError('the session should not start')\n")
    result = run_infer(*case.args)
    out = assert_readable(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    err = result.stderr.str()
    assert "ERROR: pytest-infer: " in err, out
    for text in case.expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert TOKEN[4:] not in out  # a secret is masked wherever it is echoed


def test_cuda_requested_on_a_cpu_machine(run_infer) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_infer("--infer-device", "cuda")
    assert_readable(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--infer-device cuda: cuda requested but torch.cuda.is_available() is False (torch " in result.stderr.str()
    assert "available: cpu" in result.stderr.str()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Path:
    """A folder no file can be created in: chmod 555, or for root (who ignores modes) a read-only mount."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    pytest.skip("no read-only folder here (running as root without a read-only mount)")


def test_report_in_a_read_only_folder(read_only_dir: Path, run_infer) -> None:
    target = read_only_dir / "report.json"
    result = run_infer(f"--infer-report={target}")
    assert_readable(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--infer-report {target}: folder {read_only_dir} is not writable; choose a writable folder" in (
        result.stderr.str()
    )


# --- known at collection: the test's file fails to collect, with the marker's problem -------------------

needs_marker_checks = pytest.mark.skipif(
    not hasattr(InferSession, "_check_markers"),
    reason="needs InferSession._check_markers (the session.py change proposed with the bad-input corpus)",
)

MARKERS = [
    (
        "tolerance-unknown-keyword",
        "infer_tolerance(foo=1)",
        "@pytest.mark.infer_tolerance: unknown keyword(s) foo; @pytest.mark.infer_tolerance(METRIC=NUMBER, ..., "
        "stack=None) with METRIC one of max_abs",
    ),
    (
        "tolerance-not-a-number",
        "infer_tolerance(max_abs='0.1')",
        "@pytest.mark.infer_tolerance: max_abs='0.1' is not a number",
    ),
    (
        "speedup-without-min",
        "infer_speedup(stack='cuda')",
        "@pytest.mark.infer_speedup: min= is missing; @pytest.mark.infer_speedup(min=NUMBER[, stack='cuda:9.0']",
    ),
    ("speedup-positional", "infer_speedup(1.5)", "@pytest.mark.infer_speedup takes keywords only, got (1.5,)"),
    (
        "speedup-stack-matches-nothing",
        "infer_speedup(min=1.2, stack='gpu')",
        "@pytest.mark.infer_speedup: stack='gpu' matches no stack: use a device kind (cuda, rocm, xpu, mps, cpu)",
    ),
    (
        "memory-unknown-keyword",
        "infer_memory(maximum=0.5)",
        "@pytest.mark.infer_memory: unknown keyword(s) maximum; @pytest.mark.infer_memory(max=NUMBER",
    ),
    (
        "memory-unknown-metric",
        "infer_memory(max=0.5, metric='weight_ratio')",
        "@pytest.mark.infer_memory: metric='weight_ratio' is not a memory metric; ",
    ),
    (
        "techniques-unknown",
        "infer_techniques('sdpa', 'flashy')",
        "@pytest.mark.infer_techniques: unknown technique 'flashy'",
    ),
]


@needs_marker_checks
@pytest.mark.parametrize(("marker", "expected"), [m[1:] for m in MARKERS], ids=[m[0] for m in MARKERS])
def test_bad_markers_fail_the_collection(pytester: pytest.Pytester, run_infer, marker: str, expected: str) -> None:
    pytester.makepyfile(
        test_marked=f"""
        import pytest

        @pytest.mark.{marker}
        def test_marked(infer_case):
            raise AssertionError("a test with a bad marker must not run")
        """
    )
    result = run_infer("--infer-technique", "sdpa")
    out = assert_readable(result)
    assert result.ret == pytest.ExitCode.INTERRUPTED, out
    assert "ERROR collecting test_marked.py" in out
    assert f"test_marked.py::test_marked: {expected}" in out  # plain text: the usage lines hold fnmatch's [ ]
    assert "Loading weights" not in out  # stopped before any model loaded


# --- known when a test runs: a readable failure ----------------------------------------------------------


@needs_marker_checks
def test_tolerance_hook_returning_a_float_fails_the_test_readably(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest("def pytest_infer_tolerance(technique, dtype, device, default):\n    return 0.5\n")
    result = run_infer("--infer-suite", "parity", "--infer-technique", "sdpa", "-k", "logit_parity")
    assert_readable(result)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "pytest_infer_tolerance (*conftest.py) must return a pytest_infer.Tolerance or None, got float 0.5: "
            "return default.replace(max_abs=...) to change a bound"
        ]
    )


def test_corrupt_tokenizer_file_fails_the_setup_readably(pytester: pytest.Pytester, run_infer) -> None:
    model_dir(pytester.path, "ckpt")
    (pytester.path / "ckpt" / "tokenizer.json").write_text('{"version": "1.0", "truncated')
    result = run_infer("--infer-model", "ckpt", "--infer-suite", "parity", "--infer-technique", "sdpa", "-k", "logit")
    assert_readable(result)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "could not load a tokenizer for *ckpt: JSONDecodeError: * -- a JSON file of the model directory is "
            "corrupt: save or download it again"
        ]
    )


def test_truncated_weights_fail_the_test_readably(pytester: pytest.Pytester, run_infer) -> None:
    model_dir(pytester.path, "ckpt", skip=("model.safetensors",))
    (pytester.path / "ckpt" / "model.safetensors").write_bytes((EMBEDDED / "model.safetensors").read_bytes()[:4096])
    result = run_infer("--infer-model", "ckpt", "--infer-suite", "parity", "--infer-technique", "sdpa", "-k", "logit")
    assert_readable(result)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "loading ckpt with eager (float32) failed: SafetensorError: *-- a weights file is truncated or corrupt "
            "(an interrupted download?): save or download it again"
        ]
    )


def _checkpoint(root: Path, name: str, change: Callable[[dict], None]) -> Path:
    """A copy of the embedded model whose weights ``change`` edited (a tensor removed, added, poisoned)."""
    from safetensors.torch import load_file, save_file

    target = model_dir(root, name, skip=("model.safetensors",))
    weights = load_file(EMBEDDED / "model.safetensors")
    change(weights)
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_a_checkpoint_missing_a_tensor_is_blamed_not_the_technique(pytester: pytest.Pytester, run_infer) -> None:
    """Before: Transformers initialised the missing tensor at random, differently in the reference and in the
    candidate, and sdpa failed its parity with a "first diverging layer". Now every test fails with the
    checkpoint named, and it is loaded once per dtype, not again for every technique."""
    _checkpoint(pytester.path, "ckpt", lambda w: w.pop("model.layers.1.self_attn.q_proj.weight"))
    result = run_infer(
        "--infer-model",
        "ckpt",
        "--infer-suite",
        "parity",
        "--infer-technique",
        "sdpa,sdpa_math",
        "-k",
        "logit or padded",
    )
    out = assert_readable(result)
    result.assert_outcomes(failed=4)
    expected = (
        "checkpoint ckpt is broken, not the technique: its weights lack 1 tensor(s) LlamaForCausalLM needs "
        "(model.layers.1.self_attn.q_proj.weight), which Transformers would initialise at random, differently in "
        "every load. Save the complete model again (model.save_pretrained) or fix config.json to match its weights"
    )
    assert out.count(expected) == 4
    assert "diverg" not in out and "parted" not in out
    later = out.split("_ test_padded_batches[cpu-float32-sdpa] _")[1]
    assert "LOAD REPORT" in out and "LOAD REPORT" not in later  # refused once, not reloaded for each test


@pytest.mark.parametrize(
    ("change", "dtype", "expected"),
    [
        pytest.param(
            lambda w: w.__setitem__("model.layers.9.extra.weight", __import__("torch").zeros(3)),
            "float32",
            "checkpoint ckpt is broken, not the technique: its weights carry 1 tensor(s) LlamaForCausalLM does not "
            "have (model.layers.9.extra.weight)",
            id="unexpected-tensor",
        ),
        pytest.param(
            lambda w: w["model.layers.2.mlp.up_proj.weight"].__setitem__((0, 0), float("nan")),
            "float32",
            "checkpoint ckpt is broken, not the technique: its weights in float32 hold NaN or Inf: "
            "model.layers.2.mlp.up_proj.weight (1 of 45,056 values)",
            id="nan-weight",
        ),
        pytest.param(
            lambda w: w["model.norm.weight"].__setitem__(0, 1e6),
            "float16",
            "its weights in float16 hold NaN or Inf: model.norm.weight (1 of 128 values) (where they are finite in "
            "float32, they overflow float16's range: test another dtype)",
            id="overflows-float16",
        ),
    ],
)
def test_broken_checkpoints_are_refused_at_load(tmp_path: Path, change, dtype: str, expected: str) -> None:
    """The load itself (in process: one session per checkpoint would cost ~10 s each)."""
    from pytest_infer.core.registry import Registry
    from pytest_infer.runtime.loading import CheckpointError, ModelSource, load_model
    from pytest_infer.techniques import builtin_techniques

    source = ModelSource(str(_checkpoint(tmp_path, "ckpt", change)))
    with pytest.raises(CheckpointError) as refused:
        load_model(source, Registry(builtin_techniques()).get("sdpa"), dtype, "cpu")
    assert expected in str(refused.value)


def test_tp_size_the_model_cannot_split_skips_then_fails_under_strict(run_infer) -> None:
    args = ("--infer-suite", "parity", "--infer-technique", "tensor_parallel", "--infer-tp-size", "64", "-k", "rank")
    reason = (
        "tensor_parallel: tiny-llama has 4 attention heads and 2 key-value heads: both must be divisible by "
        "--infer-tp-size 64"
    )
    result = run_infer(*args, "-rs")
    assert_readable(result)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED * {reason}"])

    result = run_infer(*args, "--infer-strict")
    assert_readable(result)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*--infer-strict: {reason}"])


# --- issue 20: what the CLI reads and writes (pytest-infer merge / plot): exit 2 naming the file and the field ---


def _report(**changes: object) -> dict:
    doc = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"pytest-infer": "0.1.0"},
        "stack": {"device_kind": "cpu", "device_name": "cpu", "packages": {"torch": "2.13.0"}},
        "config": {},
        "duration_s": 1.0,
        "tests": [{"nodeid": "suites/test_parity.py::test_logit_parity[cpu-float32-sdpa]", "outcome": "passed"}],
        "results": [
            {"check": "logits", "technique": "sdpa", "device": "cpu", "dtype": "float32", "passed": True, "metrics": {}}
        ],
    }
    doc.update(changes)
    return doc


def _result(**fields: object) -> list[dict]:
    return [{**_report()["results"][0], **fields}]


CLI_REPORTS = [
    ("results-not-objects", _report(results=[1]), "results[0]: expected an object, got a number"),
    (
        "metric-is-text",
        _report(results=_result(metrics={"speedup": [1.2]})),
        "results[0].metrics.speedup: expected a number or null, got a list",
    ),
    (
        "metrics-not-an-object",
        _report(results=_result(metrics=[1, 2])),
        "results[0].metrics: expected an object, got a list",
    ),
    (
        "passed-is-text",
        _report(results=_result(passed="yes")),
        "results[0].passed: expected true, false or null, got a string",
    ),
    (
        "technique-is-a-number",
        _report(results=_result(technique=7)),
        "results[0].technique: expected a string or null, got a number",
    ),
    ("test-without-nodeid", _report(tests=[{"outcome": "passed"}]), "tests[0]: no 'nodeid'"),
    (
        "nodeid-is-a-number",
        _report(tests=[{"nodeid": 3, "outcome": "passed"}]),
        "tests[0].nodeid: expected a string, got a number",
    ),
    ("stack-packages-a-list", _report(stack={"packages": ["torch"]}), "stack.packages: expected an object, got a list"),
    (
        "stack-device-count-text",
        _report(stack={"device_count": "two"}),
        "stack.device_count: expected an integer or null, got a string",
    ),
    ("duration-is-text", _report(duration_s="1 s"), "duration_s: expected a number, got a string"),
    ("interrupted-not-a-bool", _report(interrupted="no"), "interrupted: expected true or false, got a string"),
]


@pytest.mark.parametrize(("doc", "expected"), [c[1:] for c in CLI_REPORTS], ids=[c[0] for c in CLI_REPORTS])
def test_cli_refuses_reports_of_the_wrong_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], doc: dict, expected: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    for argv, command in ((["merge", str(bad)], "merge"), (["plot", str(bad), "-o", str(tmp_path / "p.png")], "plot")):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pytest-infer {command}: {bad}: {expected}"), err


def test_cli_refuses_deep_huge_and_self_overwriting_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Deep nesting (a RecursionError before), a file past the size limit (read whole before), and outputs
    that would overwrite what the command reads, or each other."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps(_report(config={"a": json.loads("[" * 40 + "]" * 40)})))
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: no disk used
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_report()))
    before = good.read_text()
    cases = [
        (["merge", str(deep)], f"pytest-infer merge: {deep}: JSON nested too deeply to read"),
        (["merge", str(nested)], f"pytest-infer merge: {nested}: JSON nested more than 32 levels deep"),
        (["merge", str(huge)], f"pytest-infer merge: {huge}: 256 MiB; a JSON report is at most 256 MiB"),
        (
            ["merge", str(good), "--json", str(good)],
            f"pytest-infer merge: --json {good}: the same file as input {good}",
        ),
        (
            ["merge", str(good), "--markdown", str(tmp_path / "m"), "--json", str(tmp_path / "m")],
            f"pytest-infer merge: --json {tmp_path / 'm'}: the same file as --markdown {tmp_path / 'm'}",
        ),
        (["plot", str(good), "-o", str(good)], f"pytest-infer plot: --output {good}: the same file as input {good}"),
        (
            ["compare", str(good), str(tmp_path), "--markdown", str(good)],
            f"pytest-infer compare: --markdown {good}: the same file as input {good}",
        ),
        (
            ["compare", str(tmp_path), str(deep), "--json", str(good)],
            f"pytest-infer compare: --json {good}: an existing file of input {tmp_path}",
        ),
        (["compare", str(good), str(deep)], f"pytest-infer compare: {deep}: JSON nested too deeply to read"),
    ]
    for argv, expected in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(expected), err
        assert "Traceback" not in err
    assert good.read_text() == before  # never overwritten

"""The bad inputs users really make, each through a real pytest session: a message that says what to fix,
exit code 4 (usage error) where the input is known at start-up, a readable failing (or skipped) test
otherwise, and never a Python traceback.

The start-up cases stop before torch is imported (except the device ones), ~1 s each; the cases that
need a model or a collection run the smallest selection that reaches them. docs/reliability.md lists the
corpus with its messages.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_infer.core.resources import embedded_model_path
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

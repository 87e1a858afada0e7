"""Options, ini twins, help output and start-up validation, through real pytest sessions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pytest_infer.options import OPTIONS, ini_type

SHOW_CONFIG = """
import json

def test_show(infer_config):
    print("CONFIG=" + json.dumps(infer_config.to_dict()))
"""


def _config(result: pytest.RunResult) -> dict:
    for line in result.outlines:
        if "CONFIG=" in line:
            return json.loads(line.split("CONFIG=", 1)[1].rstrip("."))
    raise AssertionError("no CONFIG line in output:\n" + result.stdout.str())


def test_help_lists_every_option_with_its_ini_twin(run_infer) -> None:
    result = run_infer("--help")
    assert result.ret == 0
    out = result.stdout.str()
    assert "pytest-infer: parity, speed and memory of Transformers inference techniques" in out
    for opt in OPTIONS:
        assert opt.flag in out, opt.flag
        assert opt.ini in out, opt.ini


def test_help_imports_neither_torch_nor_transformers(tmp_path) -> None:
    code = (
        "import sys, pytest\n"
        "rc = pytest.main(['-p', 'pytest_infer', '--help'])\n"
        "assert rc == 0\n"
        "loaded = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('LOADED', loaded)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    out = run.stdout
    assert "LOADED []" in out


def test_defaults(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makepyfile(SHOW_CONFIG)
    result = run_infer("-s")
    result.assert_outcomes(passed=1)
    cfg = _config(result)
    assert cfg["devices"] == ["auto"]
    assert cfg["dtypes"] == ["float32"]
    assert cfg["techniques"] == ["all"]
    assert cfg["reference"] == "eager"
    assert cfg["strict"] is False and cfg["trust_remote_code"] is False
    assert cfg["model"].endswith("tiny-llama")
    assert {k for k, v in cfg["sources"].items() if v != "default"} == {"cache_dir"}  # set by run_infer


def test_ini_applies_and_command_line_wins(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makepyfile(SHOW_CONFIG)
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        infer_dtype = "bf16, float16"
        infer_technique = "sdpa,eager"
        infer_strict = "true"
        infer_max_models = "3"
        """
    )
    cfg = _config(run_infer("-s"))
    assert cfg["dtypes"] == ["bfloat16", "float16"]
    assert cfg["techniques"] == ["sdpa", "eager"]
    assert cfg["strict"] is True and cfg["max_models"] == 3
    assert cfg["sources"]["dtype"] == "ini"

    cfg = _config(run_infer("-s", "--infer-dtype", "float32", "--infer-technique", "attention"))
    assert cfg["dtypes"] == ["float32"]
    assert cfg["techniques"] == ["attention"]
    assert cfg["sources"]["dtype"] == "cli"
    assert cfg["sources"]["strict"] == "ini"


def test_repeated_flags_and_comma_lists_combine(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makepyfile(SHOW_CONFIG)
    cfg = _config(run_infer("-s", "--infer-dtype", "float32,bf16", "--infer-dtype", "fp16"))
    assert cfg["dtypes"] == ["float32", "bfloat16", "float16"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--infer-technique", "sdpaa"), "unknown technique 'sdpaa' (did you mean sdpa"),
        (
            ("--infer-technique", "eager+sdpa"),
            "contradictory stack eager+sdpa: both set from_pretrained attn_implementation",
        ),
        (("--infer-dtype", "int3"), "unknown dtype 'int3'; valid choices: float32, bfloat16, float16"),
        (("--infer-model", "./no/such/dir"), "--infer-model ./no/such/dir: no such directory"),
        (("--infer-device", "cuda:7"), "--infer-device cuda:7:"),
        (("--infer-device", "tpu"), "--infer-device tpu:"),
        (("--infer-suite", "speed"), "unknown suite 'speed'; valid choices: parity, generation, perf, stability, all"),
        (("--infer-reference", "nope"), "unknown technique 'nope'"),
        (("--infer-max-models", "0"), "--infer-max-models: must be at least 1"),
        (("--infer-strict", "--infer-tolerance", "sdpa:max_abs=big"), "'big' is not a number"),
        (("--infer-tolerance", "max_error=1"), "'max_error=1' is not metric=value"),
        (("--infer-prompts", "missing.txt"), "--infer-prompts missing.txt: no such file"),
    ],
)
def test_bad_values_stop_the_session_with_a_usage_error(run_infer, args, expected) -> None:
    result = run_infer(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert expected in err, err
    assert "Traceback" not in err + result.stdout.str()


def test_bad_ini_value_names_the_ini_option(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeini("[pytest]\ninfer_strict = maybe\n")
    result = run_infer()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "ini option infer_strict: invalid truth value 'maybe'; expected true or false (set in " in err, err
    assert "Traceback" not in err


TYPED_SHOW_CONFIG = (
    SHOW_CONFIG.replace("(infer_config):", "(infer_config, pytestconfig):")
    + """
    print("INI=" + json.dumps({k: pytestconfig.getini(k) for k in ("infer_strict", "infer_dtype", "infer_timeout")}))
"""
)


def test_ini_keys_are_typed_and_take_toml_values_as_they_are(pytester: pytest.Pytester, run_infer) -> None:
    """Booleans, arrays (of numbers too) and numbers in [tool.pytest.ini_options], with no deprecation warning for a
    non-string value; pytest 9's native [tool.pytest] table with its strict types."""
    pytester.makepyfile(TYPED_SHOW_CONFIG)
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        infer_strict = true
        infer_dtype = ["bf16", "float16"]
        infer_new_tokens = [8, 4]
        infer_timeout = 30
        infer_progress = 0.5
        """
    )
    result = run_infer("-s", "-W", "error::pytest.PytestRemovedIn10Warning")
    result.assert_outcomes(passed=1)
    cfg = _config(result)
    assert cfg["strict"] is True and cfg["dtypes"] == ["bfloat16", "float16"] and cfg["new_tokens"] == [4, 8]
    assert cfg["timeout"] == 30 and cfg["progress"] == 0.5
    ini = json.loads(next(line for line in result.outlines if "INI=" in line).split("INI=", 1)[1].rstrip("."))
    assert ini["infer_strict"] is True and ini["infer_dtype"] == ["bf16", "float16"]  # pytest's types, not text

    if tuple(int(p) for p in pytest.__version__.split(".")[:2]) < (9, 2):
        return  # [tool.pytest] and typed numbers: pytest 9.2
    assert ini["infer_timeout"] == 30
    pytester.makepyprojecttoml(
        """
        [tool.pytest]
        infer_strict = true
        infer_isolate = false
        infer_dtype = ["bf16"]
        infer_max_models = "auto"
        infer_perf_rounds = 7
        infer_progress = 0
        """
    )
    cfg = _config(run_infer("-s"))
    assert cfg["strict"] is True and cfg["isolate"] is False and cfg["dtypes"] == ["bfloat16"]
    assert cfg["max_models"] == 0 and cfg["perf_rounds"] == 7 and cfg["progress"] == 0
    assert cfg["sources"]["isolate"] == "ini"


def test_ini_type_follows_the_option_table() -> None:
    kinds = {o.kind: ini_type(o, (9, 2)) for o in OPTIONS}
    assert kinds["bool"] == "bool" and kinds["list"] == "linelist" and kinds["str"] == "string"
    assert kinds["int"] == int | str and kinds["float"] == float | str
    assert {ini_type(o, (8, 4)) for o in OPTIONS if o.kind in ("int", "float")} == {"string"}


def test_prompt_file_not_utf8(pytester: pytest.Pytester, run_infer) -> None:
    (pytester.path / "p.txt").write_bytes(b"caf\xe9\n")
    result = run_infer("--infer-prompts", "p.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "not UTF-8" in result.stderr.str()


def test_plugin_loads_with_autoload_disabled(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(SHOW_CONFIG)
    result = pytester.runpytest_subprocess("-p", "pytest_infer", "-s")
    result.assert_outcomes(passed=1)
    assert "infer stack: cpu" in result.stdout.str()


def test_other_sessions_are_untouched(pytester: pytest.Pytester) -> None:
    """Installed but not asked for: no header, no collection change, no torch import."""
    pytester.makepyfile(
        """
        import sys
        def test_plain():
            assert "torch" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert "infer stack" not in result.stdout.str()

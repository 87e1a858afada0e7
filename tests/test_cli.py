"""The ``pytest-infer`` command as scripts meet it: pytest-benchmark's habits (``list``, ``help``) and one set of exit
codes for every command: 0 done, 1 a regression was found, 2 usage error or unusable input (docs/cli.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_infer.__main__ import EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, main

CPU, H200 = "cpu-x86_64-amd_epyc-torch2.13.0", "cuda-nvidia_h200-cu13.0-torch2.11.0"


def _run(root: Path, stack: str, name: str, key: str | None = None) -> Path:
    """A run as pytest-benchmark stores it under pytest-infer's per-stack storage."""
    path = root / stack / "Linux-CPython-3.11-64bit" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    machine_info = {"node": "runner"} | ({"infer_stack_key": key} if key else {})
    path.write_text(json.dumps({"machine_info": machine_info, "benchmarks": []}))
    return path


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    root = tmp_path / ".benchmarks"
    _run(root, CPU, "0002_after.json", CPU)
    _run(root, CPU, "0001_before.json", CPU)
    _run(root, H200, "0001_h200.json", H200)
    _run(root, "Linux-CPython-3.11-64bit", "0001_plain.json")  # stored without pytest-infer: no stack key
    (root / CPU / "Linux-CPython-3.11-64bit" / "0003_cut.json").write_text('{"machine_info": ')  # a cut-off file
    (root / CPU / "report.json").write_text("{}")  # not a run pytest-benchmark saved
    return root


def test_list_shows_the_stored_runs_by_stack_and_the_newest_of_each(
    storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list", "--storage", f"file://{storage}"]) == EXIT_OK
    out, err = capsys.readouterr()
    names = [Path(line).name for line in out.splitlines()]
    assert names == ["0001_plain.json", "0001_before.json", "0002_after.json", "0001_h200.json"]
    assert "0003_cut.json: skipped, not a readable JSON run" in err  # as pytest-benchmark: warned, not fatal

    assert main(["list", "-s", str(storage), "--newest"]) == EXIT_OK
    assert [Path(line).name for line in capsys.readouterr().out.splitlines()] == [
        "0001_plain.json",
        "0002_after.json",  # what --infer-compare-fail compares a cpu run with by itself
        "0001_h200.json",
    ]
    assert main(["list", "-s", str(storage), "--stack", "cuda-*"]) == EXIT_OK
    assert [Path(line).name for line in capsys.readouterr().out.splitlines()] == ["0001_h200.json"]
    assert main(["list", "-s", str(storage), "--stack", "rocm-*"]) == EXIT_OK
    assert "no stored runs of stack rocm-* in" in capsys.readouterr().err


def test_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """0 done; 2 usage error or unusable input, with a message and no traceback; 1 stays for a regression."""
    assert (EXIT_OK, EXIT_REGRESSION, EXIT_USAGE) == (0, 1, 2)
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == EXIT_OK  # nothing stored yet under the default storage: not an error
    assert "no stored runs in .benchmarks (store one: pytest --benchmark-autosave)" in capsys.readouterr().err
    assert main(["help"]) == EXIT_OK and "exit codes: 0 done; 1 a regression" in capsys.readouterr().out
    assert main(["help", "list"]) == EXIT_OK and "--newest" in capsys.readouterr().out
    assert main(["--version"]) == EXIT_OK and capsys.readouterr().out.startswith("pytest-infer ")
    assert main(["options"]) == EXIT_OK and "`--infer-model`" in capsys.readouterr().out
    (tmp_path / "a-file").write_text("")
    usage = [
        ([], "the following arguments are required: COMMAND"),
        (["lst"], "invalid choice: 'lst'"),
        (["help", "lst"], "invalid choice: 'lst'"),
        (["list", "--newset"], "unrecognized arguments: --newset"),
        (["list", "-s", "missing"], "missing: no such folder; give pytest-benchmark's storage"),
        (["list", "-s", "a-file"], "a-file: is a file; give pytest-benchmark's storage folder"),
        (["list", "-s", "elasticsearch+http://host:9200/index"], "only file storage can be listed here"),
        (["merge", "missing.json"], "pytest-infer merge: missing.json: no such file"),
        (["plot", "missing.json"], "pytest-infer plot: missing.json: no such file"),
    ]
    for argv, message in usage:
        assert main(argv) == EXIT_USAGE, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_the_console_script_exits_with_the_command_s_code(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "pytest_infer", "list", "-s", "missing"]
    done = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == EXIT_USAGE and "no such folder" in done.stderr and not done.stdout

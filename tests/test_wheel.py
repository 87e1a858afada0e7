"""The newcomer's path from a built wheel: no extras, a fresh virtual environment, a model repository with its own
strict ini (``--strict-markers --strict-config``), and ``--infer-suite parity`` run from that folder.

The bundled suites and the embedded model must come from the installed wheel (not this checkout), and the
session must not need anything the base install lacks (pytest-xdist, the quantization backends, matplotlib).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the CPU build (README); a bare `torch` would pull a CUDA build

MODEL_REPO_INI = """
[tool.pytest.ini_options]
addopts = "--strict-markers --strict-config"
markers = ["gpu: needs a GPU"]
testpaths = ["tests"]
"""

OWN_TEST = """
import pytest


@pytest.mark.gpu
def test_repository_test_still_runs():
    assert True
"""


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, (
        f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done


def test_wheel_without_extras_runs_the_parity_suite_under_a_strict_ini(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "VIRTUAL_ENV"))}
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)], tmp_path, env, 600)
    wheel = next(dist.glob("pytest_infer-*.whl"))
    with zipfile.ZipFile(wheel) as zipped:  # the report's JSON Schema ships in the package (docs/report-schema.md)
        assert "pytest_infer/schema/report-v1.json" in zipped.namelist()

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env, 120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, TORCH], tmp_path, env, 600)
    _run([*pip, str(wheel)], tmp_path, env, 900)
    listed = _run([str(venv / "bin" / "python"), "-m", "pip", "list"], tmp_path, env, 120).stdout.lower()
    for extra in ("pytest-xdist", "bitsandbytes", "torchao", "optimum-quanto", "hqq", "kernels", "matplotlib"):
        assert extra not in listed, f"{extra} came with the base install"

    repo = tmp_path / "my-model"
    (repo / "tests").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(MODEL_REPO_INI)
    (repo / "tests" / "test_own.py").write_text(OWN_TEST)
    cache = os.environ.get("PYTEST_INFER_TEST_CACHE") or str(Path.home() / ".cache" / "pytest-infer")
    done = subprocess.run(
        # a multi-process technique among them (its tests carry the xdist_group mark where xdist runs); CI's first
        # README command already runs every technique of the parity suite on the base install
        [
            str(venv / "bin" / "pytest"),
            "-p",
            "pytest_infer",
            "--infer-suite",
            "parity",
            f"--infer-cache-dir={cache}",
            "--infer-technique",
            "eager,sdpa,tensor_parallel",
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "INTERNALERROR" not in out
    # the suites ran from the installed wheel, not from this checkout
    assert str(ROOT) not in out
    assert (
        "test_parity.py::"
        in _run(
            [str(venv / "bin" / "pytest"), "-p", "pytest_infer", "--infer-suite", "parity", "--collect-only", "-q"],
            repo,
            env,
            300,
        ).stdout
    )
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary

"""Flakiness: the untouched backends must give the same outcomes run after run (slow: 10 sessions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "repeat_runs.py"


@pytest.mark.slow
def test_ten_runs_zero_flips() -> None:
    runs = os.environ.get("PYTEST_INFER_REPEAT", "10")
    proc = subprocess.run([sys.executable, str(SCRIPT), "-n", runs], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 flipped outcome(s)" in proc.stdout


def test_repeat_runner_reports_outcomes(tmp_path: Path) -> None:
    """The runner itself, on two quick runs of one technique."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "-n", "2", "--suite", "parity", "--", "--infer-technique", "sdpa"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 tests x 2 runs: 0 flipped outcome(s)" in proc.stdout

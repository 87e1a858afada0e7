"""The progress lines: a long step names its technique; short ones, -q and 0 stay silent."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from pytest_infer.progress import Progress


class _Writer:
    width_of_current_line = 12  # the reporter is mid-line ("test_x.py ..")


class _Reporter:
    verbosity = 0
    currentfspath: Any = "test_x.py"


def _progress(after: float, tty: bool = False) -> tuple[Progress, int]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    return Progress(after, _Reporter(), _Writer(), write, tty), read


def _drain(fd: int) -> str:
    try:
        return os.read(fd, 65536).decode()
    except BlockingIOError:
        return ""


def test_a_short_step_writes_nothing() -> None:
    progress, out = _progress(after=5.0)
    with progress.step("loading tiny with sdpa (float32, cpu)"):
        pass
    progress.close()
    assert _drain(out) == ""


def test_a_long_step_is_named_while_it_runs_and_completed_when_it_ends() -> None:
    progress, out = _progress(after=0.05)
    with progress.step("compiling and running sdpa+static+compile (float32, cpu): logits of 3 prompts"):
        deadline = time.monotonic() + 5
        seen = ""
        while "compiling" not in seen and time.monotonic() < deadline:  # written by the timer thread
            time.sleep(0.01)
            seen += _drain(out)
        assert seen == "\n  infer: compiling and running sdpa+static+compile (float32, cpu): logits of 3 prompts ..."
        assert progress._reporter.currentfspath is None  # the reporter writes its prefix again
    progress.close()
    tail = _drain(out)
    assert tail.startswith(" done in ") and tail.endswith(" s"), tail


def test_on_a_terminal_the_line_counts_and_is_rewritten() -> None:
    progress, out = _progress(after=0.05, tty=True)
    with progress.step("loading tiny with bnb_nf4 (float32, cpu)"):
        time.sleep(1.3)
    progress.close()
    text = _drain(out)
    assert text.startswith("\n  infer: loading tiny with bnb_nf4 (float32, cpu) ... 0 s"), text
    assert "\r  infer: loading tiny with bnb_nf4 (float32, cpu) ... done in 1." in text


def test_nested_steps_name_the_innermost_and_each_gets_its_line() -> None:
    progress, out = _progress(after=0.05)
    with progress.step("running bnb_nf4 (float32, cpu): logits"):
        with progress.step("loading tiny with bnb_nf4 (float32, cpu)"):
            time.sleep(0.3)
        time.sleep(0.3)
    progress.close()
    lines = _drain(out).split("\n")
    assert lines[0] == ""
    assert lines[1].startswith("  infer: loading tiny with bnb_nf4 (float32, cpu) ... done in ")
    assert lines[2].startswith("  infer: running bnb_nf4 (float32, cpu): logits ... done in ")


def test_zero_disables() -> None:
    assert not Progress(0).enabled
    with Progress(0).step("anything"):
        pass


# --- as users meet it: real sessions ----------------------------------------------------------


def _run(run_infer: Any, *args: str) -> pytest.RunResult:
    return run_infer("--infer-suite=parity", "--infer-technique=sdpa", "-k", "test_logit_parity", *args)


def test_the_session_names_the_slow_steps_between_its_results(run_infer: Any) -> None:
    result = _run(run_infer, "--infer-progress=0.000001")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "  infer: loading tiny-llama with eager (float32, cpu) ... done in * s",
            "  infer: running eager (float32, cpu): forward of [[]*x*[]] tokens ... done in * s",
            "  infer: loading tiny-llama with sdpa (float32, cpu) ... done in * s",
            "  infer: running sdpa (float32, cpu): forward of [[]*x*[]] tokens ... done in * s",
            # the reporter writes the file name again before the result letter
            "*test_parity.py .*[[]100%[]]",
        ]
    )


def test_verbose_mode_repeats_the_test_line_with_its_outcome(run_infer: Any) -> None:
    result = _run(run_infer, "--infer-progress=0.000001", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_parity.py::test_logit_parity[[]cpu-float32-sdpa[]] ",
            "  infer: loading tiny-llama with eager (float32, cpu) ... done in * s",
            "*",
            "*test_parity.py::test_logit_parity[[]cpu-float32-sdpa[]] PASSED*",
        ]
    )


@pytest.mark.parametrize("quiet", [("-q",), ("--infer-progress=0",)], ids=["quiet", "off"])
def test_quiet_mode_and_zero_write_no_progress(run_infer: Any, quiet: tuple[str, ...]) -> None:
    threshold = () if quiet == ("--infer-progress=0",) else ("--infer-progress=0.000001",)
    result = _run(run_infer, *threshold, *quiet)
    result.assert_outcomes(passed=1)
    assert "infer: loading" not in result.stdout.str()
    assert "infer: running" not in result.stdout.str()


def test_a_bad_threshold_is_a_usage_error(run_infer: Any) -> None:
    result = run_infer("--infer-progress=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--infer-progress: expected a number, got 'soon'*"])

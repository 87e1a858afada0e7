"""Fault isolation as users meet it: a technique that crashes the process, hangs, runs out of memory or is
interrupted fails its own test (or stops the run) with a clear message, the rest of the session goes on,
and the JSON report stays complete and valid; state a test leaves behind does not reach the next test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PLANTED = """
import contextlib
import os
import signal
import time

import torch

from pytest_infer import Technique


def crash(model):
    os.kill(os.getpid(), signal.SIGSEGV)  # what a native kernel's segfault looks like
    return model


def out_of_memory(model):
    raise torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
        "1.50 GiB is free. Including non-PyTorch memory, this process has 77.6 GiB memory in use."
    )


def interrupt(model):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this technique loads
    time.sleep(5)
    return model


@contextlib.contextmanager
def stuck():
    time.sleep(120)  # a kernel that never returns
    yield


def pytest_infer_register_techniques(registry):
    sdpa = dict(registry.get("sdpa").load_kwargs)
    registry.add(Technique(name="planted_crash", family="custom", load_kwargs=sdpa, prepare=crash))
    registry.add(Technique(name="planted_oom", family="custom", load_kwargs=sdpa, prepare=out_of_memory))
    registry.add(Technique(name="planted_interrupt", family="custom", load_kwargs=sdpa, prepare=interrupt))
    registry.add(Technique(name="planted_hang", family="custom", load_kwargs=sdpa, context=stuck))
"""


@pytest.fixture
def planted(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(PLANTED)
    return pytester


def _report(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "r.json").read_text())


def test_a_crashing_technique_fails_its_own_tests_under_isolate(planted: pytest.Pytester, run_infer) -> None:
    result = run_infer(
        "--infer-isolate",
        "--infer-suite",
        "parity",
        "--infer-technique",
        "sdpa,planted_crash",
        "--infer-report=r.json",
        "-k",
        "logit_parity",
    )
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    assert "crashed while running" in out and "planted_crash" in out
    doc = _report(planted)
    assert any(r["technique"] == "sdpa" and r["passed"] for r in doc["results"])
    crashed = [t for t in doc["tests"] if t["outcome"] == "crashed"]  # listed with that outcome, not lost
    assert [t["nodeid"] for t in crashed] == ["test_parity.py::test_logit_parity[cpu-float32-planted_crash]"]
    assert "crashed while running" in crashed[0]["reason"]


def test_a_hanging_technique_times_out_with_where_it_was(planted: pytest.Pytester, run_infer) -> None:
    result = run_infer(
        "--infer-timeout=15",
        "--infer-suite",
        "parity",
        "--infer-technique",
        "planted_hang,sdpa",
        "--infer-report=r.json",
        "-k",
        "logit_parity",
    )
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=1)
    assert "timed out after 15 s (--infer-timeout); it was at:" in out
    assert "in stuck" in out and "time.sleep(120)" in out
    assert any(r["technique"] == "sdpa" for r in _report(planted)["results"])


def test_with_pytest_timeout_timing_a_test_infer_timeout_defers_to_it(pytester: pytest.Pytester, run_infer) -> None:
    """One SIGALRM timer per process: pytest-timeout's (--timeout) times the tests it times; --infer-timeout the
    rest (a timeout(0) marker), and the header says which."""
    pytest.importorskip("pytest_timeout")  # the dev extra has it
    pytester.makepyfile(
        """
        import time

        import pytest


        def test_timed_by_pytest_timeout(infer_config):
            time.sleep(30)


        @pytest.mark.timeout(0)
        def test_left_to_infer_timeout(infer_config):
            time.sleep(30)
        """
    )
    result = run_infer("-p", "timeout", "--timeout=4", "--timeout-method=signal", "--infer-timeout=1")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "infer timeout: pytest-timeout times the tests (4 s, method signal); --infer-timeout 1 s only those it "
            "does not time (@pytest.mark.timeout(0))",
            "*_ test_timed_by_pytest_timeout _*",
            "*Failed: Timeout (>4.0s) from pytest-timeout*",
            "*_ test_left_to_infer_timeout _*",
            "*test_left_to_infer_timeout* timed out after 1 s (--infer-timeout)*",
        ]
    )
    assert out.count("(--infer-timeout); it was at:") == 1, out


def test_out_of_memory_says_requested_and_available(planted: pytest.Pytester, run_infer) -> None:
    result = run_infer("--infer-suite", "parity", "--infer-technique", "planted_oom,sdpa", "-k", "logit_parity")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*planted_oom: out of memory on cpu; requested 2.00 GiB; available 1.50 GiB of 79.19 GiB*"]
    )
    assert "Traceback (most recent call last)" not in result.stdout.str()


def test_interrupted_run_leaves_a_valid_report_of_what_finished(planted: pytest.Pytester, run_infer) -> None:
    result = run_infer(
        "--infer-suite",
        "parity",
        "--infer-technique",
        "sdpa,planted_interrupt",
        "--infer-report=r.json",
        "-k",
        "logit_parity",
        "-p",
        "no:randomly",
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    doc = _report(planted)
    assert [t["outcome"] for t in doc["tests"]][:1] == ["passed"]
    assert any(r["technique"] == "sdpa" and r["passed"] for r in doc["results"])


def test_state_a_test_leaves_does_not_reach_the_next(pytester: pytest.Pytester, run_infer) -> None:
    """The test that changed process-wide state fails with what it changed; the next one sees it put back."""
    pytester.makepyfile(
        test_state="""
        import os

        import torch
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward


        def my_attention(*args, **kwargs):
            return sdpa_attention_forward(*args, **kwargs)


        def test_leaves_state(infer_config):
            torch.set_default_dtype(torch.float64)
            AttentionInterface.register("left_behind", my_attention)
            torch.Tensor.softmax = lambda self, *a, **k: self
            os.environ["LEFT_BEHIND"] = "a value that could be a secret"
            torch.rand(3)


        def test_monkeypatch_puts_back_itself(infer_config, monkeypatch):
            monkeypatch.setattr(torch.nn.functional, "gelu", my_attention)  # not a leak: undone at teardown
            monkeypatch.setenv("SET_BY_MONKEYPATCH", "1")


        def test_sees_clean_state(infer_config):
            assert torch.nn.functional.gelu is not my_attention and "SET_BY_MONKEYPATCH" not in os.environ
            assert torch.get_default_dtype() == torch.float32
            assert "left_behind" not in AttentionInterface._global_mapping
            assert "softmax" not in vars(torch.Tensor)
            assert "LEFT_BEHIND" not in os.environ
            first = torch.rand(3)
            torch.manual_seed(0)
            assert torch.equal(first, torch.rand(3))  # seeded per test
        """
    )
    result = run_infer("-p", "no:randomly", "test_state.py")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_leaves_state*",
            "pytest-infer: this test left process-wide state changed, which would change the results of the tests "
            "after it:",
            "  - torch.Tensor.softmax replaced by test_leaves_state.<locals>.<lambda> (*test_state.py:15)",
            "  - torch.get_default_dtype(): torch.float32 -> torch.float64",
            "  - environment variable LEFT_BEHIND set",
            "  - AttentionInterface: function 'left_behind' registered (my_attention (*test_state.py:8))",
            "restored now, and the session's models dropped; *",
        ]
    )
    assert "could be a secret" not in result.stdout.str()  # names only, never values
    assert "gelu" not in result.stdout.str() and "SET_BY_MONKEYPATCH" not in result.stdout.str()


LEAKY = """
import os

import torch
import torch.nn.functional as F

from pytest_infer import Technique

_sdpa = F.scaled_dot_product_attention


def noisy_sdpa(*args, **kwargs):
    return _sdpa(*args, **kwargs) * 1.05


def install_kernel(model):
    # a technique that installs its "kernel" process-wide instead of on its model, and tunes the process
    F.scaled_dot_product_attention = noisy_sdpa
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = True
    os.environ["LEAKY_KERNEL_MODE"] = "fast"
    return model


def pytest_infer_register_techniques(registry):
    registry.add(Technique("leaky", "custom", load_kwargs={"attn_implementation": "eager"}, prepare=install_kernel))
"""


@pytest.mark.parametrize("order", ["leaky,sdpa", "sdpa,leaky"])
def test_a_leaking_technique_fails_itself_and_not_the_clean_one_after_it(
    pytester: pytest.Pytester, run_infer, order: str
) -> None:
    """Without the guard, sdpa run after leaky computes with leaky's patched SDPA and fails its parity (and leaky
    passes): the verdict lands on the wrong technique. With it, leaky fails with what it leaked, either order."""
    pytester.makeconftest(LEAKY)
    result = run_infer(
        "--infer-suite", "parity", f"--infer-technique={order}", "-k", "logit_parity", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_logit_parity?cpu-float32-leaky? _*",
            "pytest-infer: this test left process-wide state changed*",
            "  - torch.nn.functional.scaled_dot_product_attention replaced by noisy_sdpa (*conftest.py:11)",
            "  - torch.get_num_threads(): * -> 1",
            "  - torch.get_float32_matmul_precision(): 'highest' -> 'high'",
            "  - torch.backends.cuda.matmul.allow_tf32: False -> True",
            "  - environment variable LEAKY_KERNEL_MODE set",
        ]
    )
    result.stdout.fnmatch_lines(["*sdpa *pass *"])  # the matrix: the clean technique's parity holds


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "not-compiled"])
def test_a_raising_technique_drops_its_model_and_resets_compile_caches_only_if_compiled(
    monkeypatch: pytest.MonkeyPatch, compiled: bool
) -> None:
    """A compiled technique's failure may leave half-built compiled state: torch.compile's caches are reset. Any
    other failure (the flex_attention CPU defect) drops only its model: a reset would make every compiled model
    after it recompile."""
    import torch._dynamo

    from pytest_infer import Technique
    from pytest_infer.checks.verdict import guard
    from pytest_infer.core.case import Case
    from pytest_infer.runtime.model_cache import ModelCache

    resets: list[bool] = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(True))
    cache = ModelCache(max_models=2)
    case = Case(Technique(name="t", family="custom", compiled=compiled), "cpu", "float32")
    cache.model("key", lambda: "model")
    with pytest.raises(RuntimeError, match="boom"), guard(cache, case, "key"):
        raise RuntimeError("boom")
    assert len(cache) == 0 and resets == ([True] if compiled else [])


SLOW_TESTS = """
import pathlib
import time


def test_first(infer_config):
    pass


def test_second(infer_config):
    pass


def test_stuck(infer_config):
    pathlib.Path("started").write_text("1")
    time.sleep(120)


def test_never_reached(infer_config):
    pass
"""


def _interrupted_run(pytester: pytest.Pytester, sig: int, *args: str) -> tuple[int, str]:
    """A session sent ``sig`` while its third test runs (CI cancelling a job): its exit code and output."""
    cache = os.environ.get("PYTEST_INFER_TEST_CACHE") or str(Path.home() / ".cache" / "pytest-infer")
    pytester.makepyfile(test_slow=SLOW_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "pytest_infer", f"--infer-cache-dir={cache}", "test_slow.py", *args],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (pytester.path / "started").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.1)
    process.send_signal(sig)
    out, _ = process.communicate(timeout=120)
    return process.returncode, out


def test_sigterm_mid_session_leaves_a_valid_report_of_what_finished(pytester: pytest.Pytester) -> None:
    import signal

    code, out = _interrupted_run(pytester, signal.SIGTERM, "--infer-report=r.json")
    assert code == pytest.ExitCode.INTERRUPTED, out
    doc = json.loads((pytester.path / "r.json").read_text())  # strict JSON, whole
    assert doc["interrupted"] is True
    assert [(t["nodeid"].split("::")[1], t["outcome"]) for t in doc["tests"]] == [
        ("test_first", "passed"),
        ("test_second", "passed"),
        ("test_stuck", "interrupted"),
    ]


def test_an_interrupted_run_keeps_the_previous_report(pytester: pytest.Pytester) -> None:
    import signal

    previous = json.dumps({"schema_version": 1, "tests": ["a good earlier run"]})
    (pytester.path / "r.json").write_text(previous)
    (pytester.path / "r.md").write_text("earlier matrix\n")
    code, out = _interrupted_run(pytester, signal.SIGINT, "--infer-report=r.json", "--infer-markdown=r.md")
    assert code == pytest.ExitCode.INTERRUPTED, out
    assert (pytester.path / "r.json").read_text() == previous
    assert (pytester.path / "r.md").read_text() == "earlier matrix\n"
    partial = json.loads((pytester.path / "r.partial.json").read_text())
    assert partial["interrupted"] is True and len(partial["tests"]) == 3
    assert "_The run was interrupted" in (pytester.path / "r.partial.md").read_text()
    assert (
        "pytest-infer: the run was interrupted: --infer-report of the tests that finished written to "
        "r.partial.json; r.json, from an earlier run, is kept"
    ) in out

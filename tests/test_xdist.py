"""pytest-xdist GPU pinning (pytest_infer.xdist): the plan with fake worker ids and GPU counts, pin_worker on a
fake config, and real ``-n 2`` sessions (this machine has no GPU: the inner conftest pretends there are two)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from pytest_infer import xdist
from pytest_infer.xdist import PinningError, plan


@pytest.mark.parametrize(
    ("worker", "count", "k", "gpus", "devices"),
    [
        ("gw0", 2, 1, 2, "0"),
        ("gw1", 2, 1, 2, "1"),
        ("gw1", 2, 2, 4, "2,3"),
        ("gw2", 3, 2, 8, "4,5"),  # fewer workers than GPU pairs: the last GPUs stay unused
    ],
)
def test_each_worker_gets_its_own_gpus(worker: str, count: int, k: int, gpus: int, devices: str) -> None:
    pinning = plan(worker, count, k, gpus, None)
    assert pinning.devices == devices
    assert pinning.line == f"infer xdist {worker}: CUDA_VISIBLE_DEVICES={devices} ({k} of {gpus} GPUs)"


def test_no_two_workers_share_a_gpu() -> None:
    seen: list[str] = []
    for i in range(4):
        devices = plan(f"gw{i}", 4, 2, 8, None).devices
        assert devices is not None
        seen += devices.split(",")
    assert sorted(seen, key=int) == [str(i) for i in range(8)]


def test_oversubscription_is_refused_with_the_fix() -> None:
    with pytest.raises(PinningError, match=r"4 workers x --infer-gpus-per-worker 1 needs 4 GPUs, 2 found: use -n 2"):
        plan("gw0", 4, 1, 2, None)
    with pytest.raises(PinningError, match=r"needs 4 GPUs, 3 found: use -n 1"):
        plan(None, 2, 2, 3, None)  # the controller refuses too, before any worker starts
    with pytest.raises(PinningError, match=r"this machine cannot give one worker 2 GPUs"):
        plan("gw0", 1, 2, 1, None)


@pytest.mark.parametrize(
    ("k", "gpus", "preset", "reason"),
    [
        (0, 8, None, "GPU pinning off (--infer-gpus-per-worker 0): workers share every GPU"),
        (1, 8, "3", "GPU pinning off: CUDA_VISIBLE_DEVICES='3' was set by the user and is left as is"),
        (1, 0, None, "GPU pinning off: no NVIDIA GPU found"),
    ],
)
def test_pinning_off_says_why(k: int, gpus: int, preset: str | None, reason: str) -> None:
    pinning = plan("gw1", 2, k, gpus, preset)
    assert pinning.devices is None
    assert pinning.line == f"infer xdist gw1: {reason}"


def test_controller_line_describes_the_plan() -> None:
    line = plan(None, 2, 1, 4, None).line
    assert line == "infer xdist (2 workers): 1 GPU(s) per worker through CUDA_VISIBLE_DEVICES (gw0: 0, gw1: 1) of 4"


def test_bad_worker_ids_are_refused() -> None:
    with pytest.raises(PinningError, match="unexpected pytest-xdist worker id 'w0'"):
        plan("w0", 2, 1, 2, None)
    with pytest.raises(PinningError, match="worker gw3 but only 2 workers were started"):
        plan("gw3", 2, 1, 2, None)


def _config(
    worker: str | None,
    count: int,
    k: int | None = None,
    dist: str = "load",
    plugins: tuple[str, ...] = ("pytest_infer",),
) -> SimpleNamespace:
    options = {"infer_gpus_per_worker": None if k is None else str(k)}
    cfg = SimpleNamespace(
        option=SimpleNamespace(
            tx=["popen"] * count if worker is None else [], dist=dist if worker is None else "no", plugins=list(plugins)
        ),
        getoption=lambda name, default=None: options.get(name, default),
        getini=lambda name: "",
    )
    if worker is not None:
        cfg.workerinput = {"workerid": worker, "workercount": count}
    return cfg


@pytest.fixture
def no_pinning(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Neither variable set, and whatever pin_worker sets is undone afterwards."""
    for name in ("CUDA_VISIBLE_DEVICES", xdist.PINNED, "PYTEST_XDIST_WORKER"):
        monkeypatch.setenv(name, "")  # recorded, so that teardown restores the original state
        monkeypatch.delenv(name)
    return monkeypatch


def test_pin_worker_sets_the_variable_once(no_pinning: pytest.MonkeyPatch) -> None:
    monkeypatch = no_pinning
    monkeypatch.setattr(xdist, "count_gpus", lambda: 4)
    config = _config("gw1", 2, k=2)
    assert xdist.pin_worker(config) == "infer xdist gw1: CUDA_VISIBLE_DEVICES=2,3 (2 of 4 GPUs)"  # type: ignore[arg-type]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    # a second call (the plugin and a conftest both calling it) recognizes its own setting
    assert xdist.pin_worker(config) == "infer xdist gw1: CUDA_VISIBLE_DEVICES=2,3 (2 of 4 GPUs)"  # type: ignore[arg-type]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_pin_worker_is_inert_when_pytest_infer_is_not_asked_for(no_pinning: pytest.MonkeyPatch) -> None:
    no_pinning.setattr(xdist, "count_gpus", lambda: 8)
    # installed (autoloaded) but neither -p pytest_infer nor any infer option: another project's xdist run
    assert xdist.pin_worker(_config("gw0", 2, plugins=())) is None  # type: ignore[arg-type]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    # any infer option switches it on
    assert xdist.pin_worker(_config("gw0", 2, k=1, plugins=())) == (  # type: ignore[arg-type]
        "infer xdist gw0: CUDA_VISIBLE_DEVICES=0 (1 of 8 GPUs)"
    )


def test_pin_worker_leaves_a_user_setting_alone(no_pinning: pytest.MonkeyPatch) -> None:
    monkeypatch = no_pinning
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setattr(xdist, "count_gpus", lambda: 8)
    line = xdist.pin_worker(_config("gw0", 2))  # type: ignore[arg-type]
    assert line == "infer xdist gw0: GPU pinning off: CUDA_VISIBLE_DEVICES='5' was set by the user and is left as is"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"


def test_pin_worker_refuses_after_cuda_was_initialized(no_pinning: pytest.MonkeyPatch) -> None:
    monkeypatch = no_pinning
    monkeypatch.setattr(xdist, "count_gpus", lambda: 2)
    monkeypatch.setattr(xdist, "_cuda_initialized", lambda: True)
    with pytest.raises(pytest.UsageError, match="gw0 cannot be pinned to GPUs 0: CUDA was already initialized"):
        xdist.pin_worker(_config("gw0", 2))  # type: ignore[arg-type]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_pin_worker_outside_xdist_and_in_the_controller(no_pinning: pytest.MonkeyPatch) -> None:
    monkeypatch = no_pinning
    monkeypatch.setattr(xdist, "count_gpus", lambda: 2)
    assert xdist.pin_worker(_config(None, 0, dist="no")) is None  # type: ignore[arg-type]
    line = xdist.pin_worker(_config(None, 2, k=1))  # type: ignore[arg-type]
    assert line is not None and line.startswith("infer xdist (2 workers): 1 GPU(s) per worker")
    assert line.endswith(
        "add --dist loadgroup to keep multi-process techniques on one worker (xdist_group pytest-infer-ranks)"
    )
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the controller itself is never pinned
    with pytest.raises(
        pytest.UsageError, match="pytest-infer: pytest-xdist with 2 workers x --infer-gpus-per-worker 2"
    ):
        xdist.pin_worker(_config(None, 2, k=2))  # type: ignore[arg-type]


# --- real -n 2 sessions ----------------------------------------------------------------------------
PRETEND_TWO_GPUS = """
import pytest

from pytest_infer import xdist

xdist.count_gpus = lambda: {gpus}  # this machine has none; the pinning logic is what is under test


def pytest_configure(config):
    line = xdist.pin_worker(config)
    if not config.pluginmanager.has_plugin("infer_xdist"):  # the plugin may already register it
        config.pluginmanager.register(xdist.XdistHooks(line, group=True), "infer_xdist_test")
"""

WORKER_TESTS = """
import os

import pytest


@pytest.mark.parametrize("n", range(4))
def test_worker_sees_its_own_gpu(worker_id, n):
    assert os.environ["CUDA_VISIBLE_DEVICES"] == worker_id.removeprefix("gw")


@pytest.mark.infer_techniques("sdpa", "tensor_parallel")
def test_multi_process_cases_are_grouped(infer_case, request):
    groups = [m.args[0] for m in request.node.iter_markers("xdist_group")]
    expected = ["pytest-infer-ranks"] if infer_case.technique.runner == "multiprocess" else []
    assert groups == expected
"""


def test_two_workers_are_pinned_and_a_small_suite_passes(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(PRETEND_TWO_GPUS.format(gpus=2))
    pytester.makepyfile(test_workers=WORKER_TESTS)
    result = run_infer(
        ".",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "--infer-suite",
        "parity",
        "--infer-technique",
        "sdpa,tensor_parallel",
        "-k",
        "test_worker or grouped or (test_logit_parity and sdpa)",
        "-v",
    )
    result.assert_outcomes(passed=7)  # 4 pinning checks (on whichever worker), 2 grouping, 1 sdpa logit parity
    result.stdout.fnmatch_lines(
        [
            "infer xdist (2 workers): 1 GPU(s) per worker through CUDA_VISIBLE_DEVICES (gw0: 0, gw1: 1) of 2",
            "scheduling tests via LoadGroupScheduling",
        ]
    )


def test_more_workers_than_gpus_stop_at_start_up(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(PRETEND_TWO_GPUS.format(gpus=1))
    pytester.makepyfile(test_workers=WORKER_TESTS)
    result = run_infer("-n", "2", "--infer-technique", "sdpa")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*pytest-infer: pytest-xdist with 2 workers x --infer-gpus-per-worker 1 needs 2 GPUs, 1 found: use -n 1*"]
    )

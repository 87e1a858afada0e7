"""pytest-xdist: each worker on GPUs of its own; tests of multi-process techniques grouped together.

Under ``pytest -n N`` worker ``gwI`` sees GPUs ``I*k .. I*k+k-1`` through ``CUDA_VISIBLE_DEVICES``,
``k = --infer-gpus-per-worker`` (default 1): ``cuda:0`` of every worker is a different GPU, so workers
never share one, and a run that would need more GPUs than exist stops at start-up with the numbers
instead of oversubscribing. Pinning is off (and the header says why) with ``--infer-gpus-per-worker 0``,
when no NVIDIA GPU is found, or when ``CUDA_VISIBLE_DEVICES`` is already set (the user chose).

The variable only works if set before CUDA is initialized in the worker: :func:`pin_worker` runs first
thing in the plugin's configure hook and refuses to run late (CUDA already initialized). Counting GPUs
here never touches CUDA (``/proc/driver/nvidia/gpus``, else ``nvidia-smi -L``).

Tests of multi-process techniques (tensor parallelism: ``tp_size`` GPUs or cores per launch) get
``@pytest.mark.xdist_group("pytest-infer-ranks")``: with ``--dist loadgroup`` they all run on one
worker, one launch at a time, and share that worker's cached launches (logits, generation and rank
agreement of a case come from one launch).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_infer import options
from pytest_infer.core import nvml
from pytest_infer.core.case import Case
from pytest_infer.core.errors import ConfigError
from pytest_infer.session import explicitly_loaded, ini_reader

VISIBLE = "CUDA_VISIBLE_DEVICES"
PINNED = "PYTEST_INFER_PINNED"  # "gw1=2,3": what we set, so a second call (or a nested session) knows
GROUP = "pytest-infer-ranks"
_WORKER_ID = re.compile(r"gw(\d+)")


class PinningError(ValueError):
    """The requested pinning cannot be honoured; the message says what to change."""


@dataclass(frozen=True)
class Pinning:
    devices: str | None  # the value for CUDA_VISIBLE_DEVICES, or None to leave the environment alone
    line: str  # the report-header line


def plan(worker_id: str | None, worker_count: int, gpus_per_worker: int, gpu_count: int, preset: str | None) -> Pinning:
    """Which GPUs worker ``worker_id`` (``None``: the controller) may see. Pure: every input is given."""
    who = f"infer xdist {worker_id}" if worker_id else f"infer xdist ({worker_count} workers)"
    k = gpus_per_worker
    if k == 0:
        return Pinning(None, f"{who}: GPU pinning off (--infer-gpus-per-worker 0): workers share every GPU")
    if preset is not None:
        return Pinning(None, f"{who}: GPU pinning off: {VISIBLE}={preset!r} was set by the user and is left as is")
    if gpu_count == 0:
        return Pinning(None, f"{who}: GPU pinning off: no NVIDIA GPU found")
    need = worker_count * k
    if need > gpu_count:
        fits = gpu_count // k
        fix = f"use -n {fits}" if fits else f"this machine cannot give one worker {k} GPUs"
        raise PinningError(
            f"pytest-xdist with {worker_count} workers x --infer-gpus-per-worker {k} needs {need} GPUs, "
            f"{gpu_count} found: {fix}, lower --infer-gpus-per-worker, or pass --infer-gpus-per-worker 0 "
            "to let the workers share GPUs"
        )
    if worker_id is None:
        first = ", ".join(f"gw{i}: {_devices(i, k)}" for i in range(min(worker_count, 4)))
        more = ", ..." if worker_count > 4 else ""
        return Pinning(None, f"{who}: {k} GPU(s) per worker through {VISIBLE} ({first}{more}) of {gpu_count}")
    match = _WORKER_ID.fullmatch(worker_id)
    if match is None:
        raise PinningError(f"unexpected pytest-xdist worker id {worker_id!r} (expected gw0, gw1, ...)")
    index = int(match.group(1))
    if index >= worker_count:
        raise PinningError(f"pytest-xdist worker {worker_id} but only {worker_count} workers were started")
    devices = _devices(index, k)
    return Pinning(devices, f"{who}: {VISIBLE}={devices} ({k} of {gpu_count} GPUs)")


def _devices(index: int, k: int) -> str:
    return ",".join(str(i) for i in range(index * k, index * k + k))


def count_gpus() -> int:
    """NVIDIA GPUs on this machine, without initializing CUDA (and without importing torch): ``/proc``, else NVML
    (nvidia-ml-py, when installed), else ``nvidia-smi -L``."""
    nvidia = Path("/proc/driver/nvidia/gpus")
    if nvidia.is_dir():
        return sum(1 for _ in nvidia.iterdir())
    counted = nvml.gpu_count()
    if counted is not None:
        return counted
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _gpus_per_worker(config: pytest.Config) -> int:

    opt = options.OPTION_BY_NAME["gpus_per_worker"]
    raw = config.getoption("infer_gpus_per_worker", None)
    source = "cli"
    try:
        if raw is None or raw == "":
            raw, source = ini_reader(config)(opt.ini), "ini"
        if raw is None or raw == "" or raw == []:
            return int(opt.default)
        return int(options.coerce(opt, raw, source))
    except ConfigError as exc:
        raise pytest.UsageError(f"pytest-infer: {exc}") from None


def _worker(config: pytest.Config) -> tuple[str | None, int]:
    """(worker id or None for the controller, number of workers); (None, 0) when not under xdist."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return str(workerinput["workerid"]), int(workerinput["workercount"])
    worker_id = os.environ.get("PYTEST_XDIST_WORKER")
    if worker_id:
        return worker_id, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    tx = getattr(config.option, "tx", None) or []
    dist = getattr(config.option, "dist", "no")
    if dist != "no" and tx:
        return None, len(tx)
    return None, 0


def _active(config: pytest.Config) -> bool:
    """Whether pytest-infer was asked for (``-p pytest_infer`` or any ``--infer-*`` / ``infer_*`` option), as
    the session decides: installed but unused, the plugin must not touch another project's GPUs."""

    if explicitly_loaded(config):
        return True
    for opt in options.OPTIONS:
        if config.getoption("infer_" + opt.name, None) not in (None, "", []):
            return True
        try:
            if config.getini(opt.ini) not in (None, "", []):
                return True
        except pytest.UsageError:  # set, to a value pytest refuses: the session names it
            return True
    return False


def _cuda_initialized() -> bool:
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    return bool(cuda is not None and cuda.is_initialized())


def pin_worker(config: pytest.Config) -> str | None:
    """Pin this pytest-xdist worker to its GPUs (sets ``CUDA_VISIBLE_DEVICES``); return the header line.

    None outside pytest-xdist, and when pytest-infer is installed but not asked for (see :func:`_active`). In the controller nothing is set: the line describes the plan, and a plan
    that would oversubscribe the GPUs raises ``pytest.UsageError``. Calling it twice is harmless.
    """
    worker_id, worker_count = _worker(config)
    if worker_count == 0 or not _active(config):
        return None
    k = _gpus_per_worker(config)
    preset = os.environ.get(VISIBLE)
    mine = os.environ.get(PINNED, "")
    if preset is not None and worker_id and mine == f"{worker_id}={preset}":
        preset = None  # set by an earlier call for this very worker: plan again, same answer
    gpus = count_gpus() if k and preset is None else 0
    try:
        pinning = plan(worker_id, worker_count, k, gpus, preset)
    except PinningError as exc:
        raise pytest.UsageError(f"pytest-infer: {exc}") from None
    if pinning.devices is not None and os.environ.get(VISIBLE) != pinning.devices:
        if _cuda_initialized():
            raise pytest.UsageError(
                f"pytest-infer: {worker_id} cannot be pinned to GPUs {pinning.devices}: CUDA was already initialized "
                "in this worker (a conftest.py or plugin used CUDA at import time); move that into a fixture, "
                "or pass --infer-gpus-per-worker 0"
            )
        os.environ[VISIBLE] = pinning.devices
        os.environ[PINNED] = f"{worker_id}={pinning.devices}"
    line = pinning.line
    if worker_id is None and getattr(config.option, "dist", "") != "loadgroup":
        line += f"; add --dist loadgroup to keep multi-process techniques on one worker (xdist_group {GROUP})"
    return line


def group_items(items: list[pytest.Item]) -> int:
    """Mark the tests of multi-process techniques ``xdist_group(GROUP)``; returns how many."""

    marked = 0
    for item in items:
        callspec = getattr(item, "callspec", None)
        params: dict[str, Any] = getattr(callspec, "params", {}) if callspec is not None else {}
        grouped = any(m.args[:1] == (GROUP,) for m in item.iter_markers("xdist_group"))
        if not grouped and any(isinstance(v, Case) and v.technique.runner == "multiprocess" for v in params.values()):
            item.add_marker(pytest.mark.xdist_group(GROUP))
            marked += 1
    return marked


class XdistHooks:
    """Registered by the plugin: the pinning line in the header, the grouping of multi-process tests.

    The ``xdist_group`` mark is added only where pytest-xdist is loaded (it registers that marker): without it
    the mark would mean nothing, and under ``--strict-markers`` an unregistered mark stops the session."""

    def __init__(self, line: str | None, group: bool) -> None:
        self.line = line
        self.group = group

    def pytest_report_header(self) -> list[str] | None:
        return [self.line] if self.line else None

    @pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        if self.group:
            group_items(items)

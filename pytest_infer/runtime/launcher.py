"""Multi-process techniques (``runner="multiprocess"``): start the ranks, collect their results as data.

:func:`launch` runs the ranks of one case once (the checks cache it per technique, dtype, device, prompts,
tp size and generation lengths, failures too): the ranks compute the logits of the padded batch and every
``--infer-new-tokens`` generation in one go, and :class:`RankResults` holds them as data.

A launch: a temporary folder holds the spec and the batch; the session's launcher process
(:class:`LauncherServer`, ``python -m pytest_infer._tp_worker --serve``, in a process group of its own)
hands the ranks to ``torch.distributed``'s elastic launcher; each rank ``torch.save``-s its results into
the folder. A launch that fails names each rank with its traceback, its exit signal or its last phase;
one that outlives ``--infer-rank-timeout`` gets the whole process group stopped (SIGTERM, then SIGKILL).
The folder is removed either way. The rendezvous binds a free port (``localhost:0``, as
``torchrun --standalone`` does), closed when the launch ends. Multi-node: ``PYTEST_INFER_NNODES``,
``PYTEST_INFER_NODE_RANK``, ``PYTEST_INFER_RDZV_ENDPOINT``, ``PYTEST_INFER_RDZV_BACKEND``,
``PYTEST_INFER_RDZV_ID`` (docs/parallelism.md).

"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_infer.core.case import Case
from pytest_infer.core.numbers import NumberError, parse_int, why
from pytest_infer.runtime.batch import Batch
from pytest_infer.runtime.generated import Generated
from pytest_infer.runtime.loading import ModelSource, device_kind
from pytest_infer.runtime.processes import TEMP_PREFIX, LauncherServer, exit_text, last_lines, log_tail, read

ENV_PREFIX = "PYTEST_INFER_"


class LaunchError(RuntimeError):
    """The multi-node settings cannot work; the message says which variable to fix."""


@dataclass(frozen=True)
class LaunchSettings:
    """How the ranks meet: one node by default, several through ``PYTEST_INFER_*`` variables."""

    tp_size: int
    nnodes: int = 1
    node_rank: int | None = None
    rdzv_backend: str = "c10d"
    rdzv_endpoint: str = "localhost:0"
    run_id: str = ""
    local_addr: str | None = None

    @property
    def nproc_per_node(self) -> int:
        return self.tp_size // self.nnodes

    @classmethod
    def from_env(cls, tp_size: int, env: Any = None) -> LaunchSettings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value.strip() if value and value.strip() else None

        def integer(name: str, default: int | None) -> int | None:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = parse_int(raw)
            except NumberError as exc:
                raise LaunchError(f"{ENV_PREFIX}{name}={raw!r}: expected a non-negative integer{why(exc)}") from None
            if not 0 <= value <= 65535:
                raise LaunchError(f"{ENV_PREFIX}{name}={raw!r}: expected an integer from 0 to 65535")
            return value

        nnodes = integer("NNODES", 1) or 1
        if tp_size % nnodes:
            raise LaunchError(
                f"--infer-tp-size {tp_size} is not divisible by {ENV_PREFIX}NNODES={nnodes}: every node starts "
                "the same number of ranks"
            )
        endpoint, run_id = get("RDZV_ENDPOINT"), get("RDZV_ID")
        if nnodes > 1 and (endpoint is None or run_id is None):
            raise LaunchError(
                f"{ENV_PREFIX}NNODES={nnodes}: set {ENV_PREFIX}RDZV_ENDPOINT (host:port reachable from every node) "
                f"and {ENV_PREFIX}RDZV_ID (the same on every node); see docs/parallelism.md"
            )
        node_rank = integer("NODE_RANK", None)
        if node_rank is not None and node_rank >= nnodes:
            raise LaunchError(f"{ENV_PREFIX}NODE_RANK={node_rank} must be below {ENV_PREFIX}NNODES={nnodes}")
        return cls(
            tp_size=tp_size,
            nnodes=nnodes,
            node_rank=node_rank,
            rdzv_backend=get("RDZV_BACKEND") or "c10d",
            rdzv_endpoint=endpoint or "localhost:0",
            run_id=run_id or "",
            local_addr=get("LOCAL_ADDR"),
        )


def model_reason(model: str, trust_remote_code: bool, tp: int) -> str | None:
    """Why the model cannot be split over ``tp`` ranks: no tensor-parallel plan, or head counts."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    name = Path(model).name or model
    if not getattr(text, "base_model_tp_plan", None):
        return f"{name} ({text.model_type}) has no tensor-parallel plan (base_model_tp_plan) in this Transformers"
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    kv = int(getattr(text, "num_key_value_heads", 0) or heads)
    if heads % tp or kv % tp:
        return (
            f"{name} has {heads} attention heads and {kv} key-value heads: both must be divisible by "
            f"--infer-tp-size {tp}"
        )
    return None


@dataclass
class RankResults:
    """What the ranks of one launch computed: logits and generations of the ranks started on this node,
    and the tokens of every rank (gathered, so a node of a multi-node run sees all of them)."""

    technique: str
    tp_size: int
    launch_s: float
    logits: dict[int, Any]
    generated: dict[int, dict[int, Generated]]
    tokens: dict[int, dict[int, list[list[int]]]]

    @property
    def first(self) -> int:
        return min(self.logits)


@dataclass(frozen=True)
class LaunchFailure:
    """A launch that failed: the message names each rank with its traceback, exit signal or last phase."""

    message: str


# --- one launch -----------------------------------------------------------------------------------
class Launcher:
    """One launch for one case: writes its folder, hands it to the launcher process, waits, stops what is
    left on a timeout, and reads the results (or writes the failure)."""

    def __init__(
        self,
        source: ModelSource,
        case: Case,
        settings: LaunchSettings,
        timeout: float,
        plugins: Sequence[Mapping[str, str | None]] = (),
    ) -> None:
        self.source = source
        self.plugins = [dict(p) for p in plugins]
        self.case = case
        self.settings = settings
        self.timeout = timeout

    def spec(self, folder: Path, batch: Batch, lengths: tuple[int, ...]) -> dict[str, Any]:

        s, case = self.settings, self.case
        run_id = s.run_id
        if run_id:  # multi-node: the same id on every node, one per launch
            digest = hashlib.sha1(repr((case.id, batch.prompts, lengths)).encode()).hexdigest()[:12]
            run_id = f"{run_id}-{digest}"
        return {
            "dir": str(folder),
            "model": self.source.name_or_path,
            "trust_remote_code": self.source.trust_remote_code,
            "allow_pickle": self.source.allow_pickle,
            "technique": case.technique.name,
            "plugins": self.plugins,
            "dtype": case.dtype,
            "device_kind": device_kind(case.device),
            "prompts": list(batch.prompts),
            "lengths": list(lengths),
            "sys_path": [p for p in sys.path if p],
            "launch": {
                "nnodes": s.nnodes,
                "nproc_per_node": s.nproc_per_node,
                "node_rank": s.node_rank,
                "rdzv_backend": s.rdzv_backend,
                "rdzv_endpoint": s.rdzv_endpoint,
                "run_id": run_id or f"pytest-infer-{os.getpid()}-{time.monotonic_ns()}",
                "rdzv_timeout": max(30, int(self.timeout)),
                "local_addr": s.local_addr,
                "start_method": self.start_method(),
            },
        }

    def start_method(self) -> str:
        """fork on CPU (the ranks inherit the launcher's imports: seconds saved per launch), spawn on GPUs
        (CUDA cannot be used in a forked child); ``PYTEST_INFER_START_METHOD`` overrides."""
        chosen = os.environ.get(ENV_PREFIX + "START_METHOD", "").strip()
        if chosen:
            return chosen
        return "fork" if self.case.device.startswith("cpu") and sys.platform == "linux" else "spawn"

    def environment(self) -> dict[str, str]:
        """Variables set for this launch's ranks only."""
        env: dict[str, str] = {}
        if self.case.device.startswith("cpu") and "OMP_NUM_THREADS" not in os.environ:
            # each rank computes on its own share of the cores instead of all ranks fighting for all of them
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            env["OMP_NUM_THREADS"] = str(max(1, cores // self.settings.nproc_per_node))
        return env

    def run(self, batch: Batch, lengths: tuple[int, ...]) -> RankResults | LaunchFailure:
        import torch

        folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        started = time.perf_counter()
        try:
            spec = self.spec(folder, batch, lengths)
            spec["env"] = self.environment()
            spec_path = folder / SPEC
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            torch.save(
                {"input_ids": batch.input_ids.cpu(), "attention_mask": batch.attention_mask.cpu()},
                folder / BATCH,
            )
            server = LauncherServer.get()
            log_start = server.log_size()
            server.submit(spec_path)
            rc, timed_out, stopped, left = None, False, 0, 0
            try:
                rc = server.wait(folder / LAUNCHER_RC, self.timeout)
                timed_out = rc is None and server.alive()
            finally:
                if rc is None:  # timeout, a dead launcher, or Ctrl-C: stop the launcher and every rank
                    stopped, left = server.stop()
                else:
                    server.sweep()  # a finished launch leaves no rank behind
            if rc == 0:
                return self._collect(folder, time.perf_counter() - started)
            return LaunchFailure(self._failure(folder, rc, timed_out, stopped, left, server.log_since(log_start)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _collect(self, folder: Path, wall_s: float) -> RankResults | LaunchFailure:
        import torch

        logits: dict[int, Any] = {}
        generated: dict[int, dict[int, Generated]] = {}
        tokens: dict[int, dict[int, list[list[int]]]] = {}
        peers: dict[int, dict[int, list[list[int]]]] = {}
        local = self._local_ranks(folder)
        for rank in local:
            path = result_file(folder, rank)
            if not path.is_file():
                return LaunchFailure(
                    f"{self._label()}: the launch ended without error but rank {rank} left no results in {path.name}"
                )
            data = torch.load(path, weights_only=True)
            logits[rank] = data["logits"]
            generated[rank] = {int(n): Generated(g["tokens"], g["margins"]) for n, g in data["generated"].items()}
            tokens[rank] = {n: g.tokens for n, g in generated[rank].items()}
            for peer_rank, peer in enumerate(data["peers"]):
                if peer is not None:
                    peers.setdefault(peer_rank, {int(n): t for n, t in peer.items()})
        for peer_rank, peer in peers.items():
            tokens.setdefault(peer_rank, peer)  # ranks of other nodes: as they reported them
        return RankResults(self.case.technique.name, self.settings.tp_size, wall_s, logits, generated, tokens)

    def _local_ranks(self, folder: Path) -> list[int]:
        """The ranks this node started: all of them on one node; on several, those that left a file here
        (the rendezvous numbers the nodes, not us)."""
        if self.settings.nnodes == 1:
            return list(range(self.settings.tp_size))
        seen = {int(p.name[4:].split(".")[0]) for p in folder.glob("rank*.*") if p.name[4:].split(".")[0].isdigit()}
        return sorted(seen)

    def _label(self) -> str:
        c, s = self.case, self.settings
        backend = "nccl" if c.device.startswith("cuda") else "gloo"
        nodes = f" on {s.nnodes} nodes" if s.nnodes > 1 else ""
        return (
            f"{c.technique.name} ({c.dtype}, {c.device}): {s.tp_size} ranks{nodes} through torch.distributed "
            f"elastic_launch ({backend})"
        )

    def _failure(self, folder: Path, rc: int | None, timed_out: bool, stopped: int, left: int, log: str) -> str:

        launcher_failures: dict[str, Any] = {}
        failures_path = folder / LAUNCHER_FAILURES
        if failures_path.is_file():
            launcher_failures = json.loads(failures_path.read_text(encoding="utf-8"))
        if timed_out:
            head = f"{self._label()} did not finish within --infer-rank-timeout {self.timeout:g} s"
        else:
            head = f"{self._label()} failed" + (" (the launcher died)" if rc is None else "")
        lines = [head]
        told = False
        for rank in self._local_ranks(folder):
            error = read(error_file(folder, rank))
            phase = read(phase_file(folder, rank)) or "not started"
            done = result_file(folder, rank).is_file()
            if error and "SignalException" not in error.strip().splitlines()[-1]:
                lines.append(f"rank {rank} raised while {phase}:")
                lines.extend("    " + line for line in error.rstrip().splitlines())
                told = True
            elif done:
                lines.append(f"rank {rank}: finished")
            elif timed_out:
                lines.append(f"rank {rank}: still running after {self.timeout:g} s; last phase: {phase}")
                told = True
            else:
                failure = launcher_failures.get(str(rank), {})
                code = failure.get("exitcode")
                how = exit_text(code) if code is not None else "stopped"
                lines.append(f"rank {rank}: {how} while {phase}")
                tail = log_tail(folder, rank % self.settings.nproc_per_node)
                if tail and code is not None and code not in (0, -signal.SIGTERM, -signal.SIGKILL):
                    lines.append("    its stderr (last lines):")
                    lines.extend("      " + line for line in tail)
                    told = True
        launcher_error = "" if timed_out else read(folder / LAUNCHER_ERROR)  # on timeout: our SIGTERM
        if launcher_error:
            lines.append("the launcher raised:")
            lines.extend("    " + line for line in launcher_error.splitlines())
        elif not told:
            tail = last_lines(log, 25)
            if tail:
                lines.append("launcher output (last lines):")
                lines.extend("    " + line for line in tail)
        ending = f"stopped all {stopped} remaining processes of the launch" if stopped else "no process was left"
        if left:
            ending = f"{left} process(es) of the launch could not be stopped"
        lines.append(ending + "; its temporary folder was removed")
        if timed_out:
            lines.append("(raise --infer-rank-timeout if the ranks are only slow to start here)")
        return "\n".join(lines)


SPEC = "spec.json"


BATCH = "batch.pt"


LAUNCHER_FAILURES = "launcher-failures.json"


LAUNCHER_RC = "launcher.rc"


LAUNCHER_ERROR = "launcher.error"


def result_file(folder: Path, rank: int) -> Path:
    return folder / f"rank{rank}.pt"


def error_file(folder: Path, rank: int) -> Path:
    return folder / f"rank{rank}.error"


def phase_file(folder: Path, rank: int) -> Path:
    return folder / f"rank{rank}.phase"


def launch(
    source: ModelSource,
    case: Case,
    batch: Batch,
    lengths: tuple[int, ...],
    *,
    tp_size: int,
    timeout: float,
    plugins: Sequence[Mapping[str, str | None]] = (),
) -> RankResults | LaunchFailure:
    """Run the ranks of ``case`` once on ``batch``: logits and one generation per length (a failure is data too)."""
    try:
        settings = LaunchSettings.from_env(tp_size)
    except LaunchError as exc:
        return LaunchFailure(f"{case.technique.name}: {exc}")
    return Launcher(source, case, settings, timeout, plugins).run(batch, lengths)


def preflight(source: ModelSource, device: str, tp_size: int, device_count: int) -> str | None:
    """Why the ranks of a case on ``device`` cannot run here (device count, backend, head counts), or None."""
    try:
        settings = LaunchSettings.from_env(tp_size)
    except LaunchError:
        return None  # a configuration error, not an unmet requirement: the launch fails with the message
    kind = device_kind(device)
    if kind not in ("cpu", "cuda"):
        return f"tensor parallelism runs its ranks on cpu (gloo) or cuda (nccl), not {kind}"
    import torch.distributed as dist

    if not dist.is_available():
        return "this torch build has no torch.distributed"
    if kind == "cuda":
        if device_count < settings.nproc_per_node:
            return f"needs {settings.nproc_per_node} GPUs, found {device_count}"
        if not dist.is_nccl_available():
            return "needs the nccl backend (torch.distributed.is_nccl_available() is False)"
    elif not dist.is_gloo_available():
        return "needs the gloo backend (torch.distributed.is_gloo_available() is False)"
    return model_reason(source.name_or_path, source.trust_remote_code, tp_size)

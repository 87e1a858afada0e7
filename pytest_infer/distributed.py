"""Multi-process techniques (``runner="multiprocess"``): start the ranks, collect their results as data.

The checks call :func:`logits` and :func:`generate` for a multi-process case. Both come from one launch
per (technique, dtype, device, prompts, tp size, generation lengths), cached in the session (failures
too): the ranks compute the logits of the padded batch and every ``--infer-new-tokens`` generation in
one go.

A launch: a temporary folder holds the spec and the batch; the session's launcher process
(:class:`LauncherServer`, ``python -m pytest_infer._tp_worker --serve``, in a process group of its own)
hands the ranks to ``torch.distributed``'s elastic launcher; each rank ``torch.save``-s its results into
the folder. A launch that fails names each rank with its traceback, its exit signal or its last phase;
one that outlives ``--infer-rank-timeout`` gets the whole process group stopped (SIGTERM, then SIGKILL).
The folder is removed either way. The rendezvous binds a free port (``localhost:0``, as
``torchrun --standalone`` does), closed when the launch ends. Multi-node: ``PYTEST_INFER_NNODES``,
``PYTEST_INFER_NODE_RANK``, ``PYTEST_INFER_RDZV_ENDPOINT``, ``PYTEST_INFER_RDZV_BACKEND``,
``PYTEST_INFER_RDZV_ID`` (docs/parallelism.md).

:func:`rank_agreement` is the check that every rank produced the same greedy tokens (and logits).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_infer.generation import token_divergence

if TYPE_CHECKING:
    import torch

    from pytest_infer.checks import ParityChecks
    from pytest_infer.generation import Generated
    from pytest_infer.models import Batch
    from pytest_infer.session import Case, InferSession

ENV_PREFIX = "PYTEST_INFER_"
TEMP_PREFIX = "pytest-infer-ranks-"
STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this long


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
            if not raw.isdigit():
                raise LaunchError(f"{ENV_PREFIX}{name}={raw!r}: expected a non-negative integer")
            return int(raw)

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


# --- requirements that depend on --infer-tp-size and on the model ------------------------------------
def preflight(session: InferSession, case: Case) -> str | None:
    """Why ``case`` cannot run its ranks here (device count, backend, head counts), or None."""
    key = ("ranks-preflight", session.source, case.technique.name, case.device, session.config.tp_size)
    return session.cache.tensor(key, lambda: _preflight(session, case))  # type: ignore[no-any-return]


def _preflight(session: InferSession, case: Case) -> str | None:
    from pytest_infer.models import device_kind

    tp = session.config.tp_size
    try:
        settings = LaunchSettings.from_env(tp)
    except LaunchError:
        return None  # a configuration error, not an unmet requirement: the launch fails with the message
    kind = device_kind(case.device)
    if kind not in ("cpu", "cuda"):
        return f"tensor parallelism runs its ranks on cpu (gloo) or cuda (nccl), not {kind}"
    import torch.distributed as dist

    if not dist.is_available():
        return "this torch build has no torch.distributed"
    if kind == "cuda":
        found = session.stack_for(case.device).device_count
        if found < settings.nproc_per_node:
            return f"needs {settings.nproc_per_node} GPUs, found {found}"
        if not dist.is_nccl_available():
            return "needs the nccl backend (torch.distributed.is_nccl_available() is False)"
    elif not dist.is_gloo_available():
        return "needs the gloo backend (torch.distributed.is_gloo_available() is False)"
    return model_reason(session.source.name_or_path, session.source.trust_remote_code, tp)


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


def require(session: InferSession, case: Case) -> None:
    """Skip (or, under ``--infer-strict``, fail) a case whose ranks cannot run here."""
    reason = preflight(session, case)
    if reason is None:
        return
    reason = f"{case.technique.name}: {reason}"
    if session.config.strict:
        pytest.fail(f"--infer-strict: {reason}", pytrace=False)
    pytest.skip(reason)


# --- what the checks call -------------------------------------------------------------------------
def logits(session: InferSession, case: Case, batch: Batch) -> torch.Tensor:
    """The candidate logits ``[batch, seq, vocab]`` on ``case.device``: rank 0's (every rank holds them)."""
    require(session, case)
    results = ranks(session, case, batch)
    return results.logits[results.first].to(case.device)


def generate(session: InferSession, case: Case, batch: Batch, new_tokens: int) -> Generated:
    """Rank 0's greedy generation of ``new_tokens`` tokens (one launch serves every configured length)."""
    require(session, case)
    lengths = session.config.new_tokens if new_tokens in session.config.new_tokens else (new_tokens,)
    results = ranks(session, case, batch, lengths)
    return results.generated[results.first][new_tokens]


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
class _Failed:
    message: str


def ranks(session: InferSession, case: Case, batch: Batch, lengths: Sequence[int] | None = None) -> RankResults:
    """The launch for ``case`` on ``batch`` (cached in the session: failures too, so a hang costs one timeout)."""
    lengths = tuple(sorted(set(lengths or session.config.new_tokens)))
    key = (
        "ranks",
        session.source,
        case.technique.name,
        case.dtype,
        case.device,
        batch.prompts,
        tuple(batch.input_ids.shape),
        session.config.tp_size,
        lengths,
    )
    outcome = session.cache.tensor(key, lambda: _launch_or_failure(session, case, batch, lengths))
    if isinstance(outcome, _Failed):
        pytest.fail(outcome.message, pytrace=False)
    return outcome  # type: ignore[no-any-return]


def _launch_or_failure(session: InferSession, case: Case, batch: Batch, lengths: tuple[int, ...]) -> Any:
    try:
        settings = LaunchSettings.from_env(session.config.tp_size)
    except LaunchError as exc:
        return _Failed(f"{case.technique.name}: {exc}")
    launcher = Launcher(session, case, settings, session.config.rank_timeout)
    return launcher.run(batch, lengths)


# --- one launch -----------------------------------------------------------------------------------
class Launcher:
    """One launch for one case: writes its folder, hands it to the launcher process, waits, stops what is
    left on a timeout, and reads the results (or writes the failure)."""

    def __init__(self, session: InferSession, case: Case, settings: LaunchSettings, timeout: float) -> None:
        self.session = session
        self.case = case
        self.settings = settings
        self.timeout = timeout

    def spec(self, folder: Path, batch: Batch, lengths: tuple[int, ...]) -> dict[str, Any]:
        from pytest_infer.models import device_kind

        s, case = self.settings, self.case
        run_id = s.run_id
        if run_id:  # multi-node: the same id on every node, one per launch
            digest = hashlib.sha1(repr((case.id, batch.prompts, lengths)).encode()).hexdigest()[:12]
            run_id = f"{run_id}-{digest}"
        return {
            "dir": str(folder),
            "model": self.session.source.name_or_path,
            "trust_remote_code": self.session.source.trust_remote_code,
            "allow_pickle": self.session.source.allow_pickle,
            "technique": case.technique.name,
            "plugins": registering_plugins(self.session.pytest_config),
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

    def run(self, batch: Batch, lengths: tuple[int, ...]) -> RankResults | _Failed:
        import torch

        from pytest_infer import _tp_worker as worker

        folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        started = time.perf_counter()
        try:
            spec = self.spec(folder, batch, lengths)
            spec["env"] = self.environment()
            spec_path = folder / worker.SPEC
            spec_path.write_text(json.dumps(spec), encoding="utf-8")
            torch.save(
                {"input_ids": batch.input_ids.cpu(), "attention_mask": batch.attention_mask.cpu()},
                folder / worker.BATCH,
            )
            server = LauncherServer.get()
            log_start = server.log_size()
            server.submit(spec_path)
            rc, timed_out, stopped, left = None, False, 0, 0
            try:
                rc = server.wait(folder / worker.LAUNCHER_RC, self.timeout)
                timed_out = rc is None and server.alive()
            finally:
                if rc is None:  # timeout, a dead launcher, or Ctrl-C: stop the launcher and every rank
                    stopped, left = server.stop()
                else:
                    server.sweep()  # a finished launch leaves no rank behind
            if rc == 0:
                return self._collect(folder, time.perf_counter() - started)
            return _Failed(self._failure(folder, rc, timed_out, stopped, left, server.log_since(log_start)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _collect(self, folder: Path, wall_s: float) -> RankResults | _Failed:
        import torch

        from pytest_infer import _tp_worker as worker
        from pytest_infer.generation import Generated

        logits: dict[int, Any] = {}
        generated: dict[int, dict[int, Generated]] = {}
        tokens: dict[int, dict[int, list[list[int]]]] = {}
        peers: dict[int, dict[int, list[list[int]]]] = {}
        local = self._local_ranks(folder)
        for rank in local:
            path = worker.result_file(folder, rank)
            if not path.is_file():
                return _Failed(
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
        from pytest_infer import _tp_worker as worker

        launcher_failures: dict[str, Any] = {}
        failures_path = folder / worker.LAUNCHER_FAILURES
        if failures_path.is_file():
            launcher_failures = json.loads(failures_path.read_text(encoding="utf-8"))
        if timed_out:
            head = f"{self._label()} did not finish within --infer-rank-timeout {self.timeout:g} s"
        else:
            head = f"{self._label()} failed" + (" (the launcher died)" if rc is None else "")
        lines = [head]
        told = False
        for rank in self._local_ranks(folder):
            error = _read(worker.error_file(folder, rank))
            phase = _read(worker.phase_file(folder, rank)) or "not started"
            done = worker.result_file(folder, rank).is_file()
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
                how = _exit_text(code) if code is not None else "stopped"
                lines.append(f"rank {rank}: {how} while {phase}")
                tail = _log_tail(folder, rank % self.settings.nproc_per_node)
                if tail and code is not None and code not in (0, -signal.SIGTERM, -signal.SIGKILL):
                    lines.append("    its stderr (last lines):")
                    lines.extend("      " + line for line in tail)
                    told = True
        launcher_error = "" if timed_out else _read(folder / worker.LAUNCHER_ERROR)  # on timeout: our SIGTERM
        if launcher_error:
            lines.append("the launcher raised:")
            lines.extend("    " + line for line in launcher_error.splitlines())
        elif not told:
            tail = _tail(log, 25)
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


class LauncherServer:
    """The launcher process (``python -m pytest_infer._tp_worker --serve``), one per pytest process.

    Started on the first launch and kept: it imports torch and transformers once, and on CPU the ranks of
    every launch are forked from it. It runs in a process group of its own; a launch that times out stops
    the whole group (the next launch starts a fresh launcher). It exits with the pytest process."""

    _current: LauncherServer | None = None

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        self.log_path = self.folder / "launcher.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_infer._tp_worker", "--serve"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )

    @classmethod
    def get(cls) -> LauncherServer:
        if cls._current is None or not cls._current.alive():
            if cls._current is not None:
                cls._current.stop()
            cls._current = cls()
        return cls._current

    def alive(self) -> bool:
        return self.proc.poll() is None

    def submit(self, spec_path: Path) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{spec_path}\n".encode())
        self.proc.stdin.flush()

    def wait(self, answer: Path, timeout: float) -> int | None:
        """The launch's exit status, or None when it outlived ``timeout`` or the launcher died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answer.is_file():
                return int(answer.read_text().strip() or 1)
            if not self.alive():
                return int(answer.read_text().strip() or 1) if answer.is_file() else None
            time.sleep(0.05)
        return None

    def sweep(self) -> None:
        """Kill any process of the group but the launcher itself (there should be none)."""
        for pid in group_members(self.proc.pid):
            if pid != self.proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def stop(self) -> tuple[int, int]:
        """Stop the launcher and everything it started; returns (stopped, still alive)."""
        if LauncherServer._current is self:
            LauncherServer._current = None
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        result = stop_group(self.proc)
        shutil.rmtree(self.folder, ignore_errors=True)
        return result

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @classmethod
    def shutdown(cls) -> None:
        """At exit: end the launcher (EOF on its input, then the process group)."""
        server = cls._current
        if server is None:
            return
        cls._current = None
        with contextlib.suppress(OSError):
            if server.proc.stdin is not None:
                server.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=10)
        stop_group(server.proc)
        shutil.rmtree(server.folder, ignore_errors=True)


atexit.register(LauncherServer.shutdown)


def registering_plugins(config: pytest.Config) -> list[dict[str, str | None]]:
    """The modules (conftest files, plugins) that add techniques: the ranks import them again."""
    out: list[dict[str, str | None]] = []
    for impl in config.pluginmanager.hook.pytest_infer_register_techniques.get_hookimpls():
        plugin = impl.plugin
        if isinstance(plugin, types.ModuleType):
            out.append({"name": plugin.__name__, "file": getattr(plugin, "__file__", None)})
    return out


# --- process groups -------------------------------------------------------------------------------
def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    proc = Path("/proc")
    if proc.is_dir():
        members = []
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
        return members
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    return [pgid]


def stop_group(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> tuple[int, int]:
    """Stop every process of ``proc``'s group: SIGTERM, then SIGKILL. Returns (stopped, still alive)."""
    pgid = proc.pid
    members = group_members(pgid)
    stopped = len(members)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not members:
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()  # reap the launcher as soon as it dies
            members = group_members(pgid)
            if not members:
                break
            time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    return stopped, len(group_members(pgid))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _tail(text: str, n: int) -> list[str]:
    return text.splitlines()[-n:] if text else []


def _log_tail(folder: Path, local_rank: int) -> list[str]:
    """The end of a rank's stderr; for a crash, faulthandler's report (innermost frame first) instead."""
    logs = sorted((folder / "logs").glob(f"**/attempt_*/{local_rank}/stderr.log"))
    lines = _read(logs[-1]).splitlines() if logs else []
    crash = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    if crash is None:
        return lines[-15:]
    report = [line for line in lines[crash:] if not line.startswith("Extension modules")]
    return report[:16]


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


# --- every rank must agree ------------------------------------------------------------------------
@dataclass
class Disagreement:
    rank: int
    new_tokens: int
    row: int
    step: int | None  # None: a different number of tokens
    token: int | None
    first_token: int | None
    piece: str = ""
    first_piece: str = ""


@dataclass
class RankAgreementResult:
    """Greedy tokens of every rank (each configured length) and logits of this node's ranks, against rank 0."""

    technique: str
    device: str
    dtype: str
    tp_size: int
    first_rank: int
    lengths: list[int]
    disagreements: list[Disagreement]
    tokens_compared: int
    logits_spread: float  # largest |logits of rank r - logits of the first rank| at real positions
    logits_bound: float | None
    spread_rank: int | None = None
    prompts: list[str] = field(default_factory=list)
    missing_ranks: list[int] = field(default_factory=list)
    kind: str = "rank_agreement"

    @property
    def failures(self) -> list[str]:
        out = []
        if self.missing_ranks:
            out.append(f"no tokens from rank(s) {', '.join(map(str, self.missing_ranks))} of {self.tp_size}")
        for d in self.disagreements:
            request = f"request {d.row}" + (f" ({_short(self.prompts[d.row])})" if d.row < len(self.prompts) else "")
            if d.step is None:
                out.append(
                    f"rank {d.rank} disagrees with rank {self.first_rank} on {request} of the {d.new_tokens}-token "
                    f"generation: a different number of tokens"
                )
                continue
            out.append(
                f"rank {d.rank} disagrees with rank {self.first_rank} on {request}, step {d.step} of the "
                f"{d.new_tokens}-token generation: rank {self.first_rank} chose {d.first_token} {d.first_piece!r}, "
                f"rank {d.rank} chose {d.token} {d.piece!r}"
            )
        if self.logits_bound is not None and self.logits_spread > self.logits_bound:
            out.append(
                f"rank {self.spread_rank}'s logits differ from rank {self.first_rank}'s by up to "
                f"{self.logits_spread:.3g} (bound {self.logits_bound:g}): every rank must hold the same gathered logits"
            )
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "ranks": float(self.tp_size),
            "tokens_compared": float(self.tokens_compared),
            "disagreements": float(len(self.disagreements)),
            "logits_spread": self.logits_spread,
        }

    def headline(self) -> str:
        return (
            f"{self.tp_size} ranks, {self.tokens_compared} tokens compared, {len(self.disagreements)} disagreements, "
            f"logits spread {self.logits_spread:.3g}"
        )

    def message(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        lines = [
            f"rank agreement {verdict}: {self.technique} ({self.dtype}) on {self.device}, {self.tp_size} ranks, "
            f"{len(self.prompts)} requests x {'/'.join(map(str, self.lengths))} greedy tokens: {self.headline()}"
        ]
        lines.extend(f"  - {f}" for f in self.failures)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "check": "ranks",
            "variant": f"{self.tp_size} ranks",
            "technique": self.technique,
            "device": self.device,
            "dtype": self.dtype,
            "passed": self.passed,
            "tp_size": self.tp_size,
            "lengths": self.lengths,
            "metrics": self.metrics,
            "failures": self.failures,
            "disagreements": [dataclasses.asdict(d) for d in self.disagreements],
        }


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def compare_ranks(
    results: RankResults,
    mask: Any,
    tokenizer: Any,
    *,
    device: str,
    dtype: str,
    prompts: Sequence[str],
    logits_bound: float | None,
) -> RankAgreementResult:
    """Every rank's tokens against the first rank's, request by request, step by step; and logits."""
    first = results.first
    lengths = sorted(results.tokens.get(first, {}))
    disagreements: list[Disagreement] = []
    compared = 0
    for rank in sorted(results.tokens):
        if rank == first:
            continue
        for n in lengths:
            mine, theirs = results.tokens[first][n], results.tokens[rank].get(n, [])
            for row, ref_row in enumerate(mine):
                other = theirs[row] if row < len(theirs) else []
                d = token_divergence(ref_row, other, tokenizer)
                compared += d.step if d is not None else min(len(ref_row), len(other))
                if d is not None:
                    disagreements.append(
                        Disagreement(
                            rank,
                            n,
                            row,
                            d.step,
                            d.candidate_token,
                            d.reference_token,
                            d.candidate_piece,
                            d.reference_piece,
                        )
                    )
                elif len(ref_row) != len(other):
                    disagreements.append(Disagreement(rank, n, row, None, None, None))
    spread, spread_rank = 0.0, None
    for rank, value in results.logits.items():
        if rank == first:
            continue
        real = mask.bool().cpu()
        delta = float((value[real].double() - results.logits[first][real].double()).abs().max())
        if delta >= spread:
            spread, spread_rank = delta, rank
    return RankAgreementResult(
        technique=results.technique,
        device=device,
        dtype=dtype,
        tp_size=results.tp_size,
        first_rank=first,
        lengths=lengths,
        disagreements=disagreements,
        tokens_compared=compared,
        logits_spread=spread,
        logits_bound=logits_bound,
        spread_rank=spread_rank,
        prompts=list(prompts),
        missing_ranks=[r for r in range(results.tp_size) if r not in results.tokens],
    )


def rank_agreement(checks: ParityChecks, case: Case) -> RankAgreementResult:
    """Launch (or reuse) the ranks of ``case`` and compare them with each other; recorded like any check."""
    from pytest_infer.models import encode

    session = checks.session
    require(session, case)
    batch = encode(checks.tokenizer, checks.prompts, case.device)
    results = ranks(session, case, batch)
    bound = session.tolerance(case, checks.node).max_abs
    result = compare_ranks(
        results,
        batch.attention_mask,
        checks.tokenizer,
        device=case.device,
        dtype=case.dtype,
        prompts=checks.prompts,
        logits_bound=bound,
    )
    return checks._record(result)  # type: ignore[no-any-return]


def assert_rank_agreement(checks: ParityChecks, case: Case) -> RankAgreementResult:
    if case.technique.runner != "multiprocess":
        pytest.skip(f"{case.technique.name} runs in one process (runner {case.technique.runner}): no ranks to compare")
    result = rank_agreement(checks, case)
    if not result.passed:
        pytest.fail(result.message(), pytrace=False)
    return result

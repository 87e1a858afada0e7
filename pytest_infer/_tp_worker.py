"""The processes of a multi-process technique: a launcher and its ranks.

``python -m pytest_infer._tp_worker --serve`` is the launcher :mod:`pytest_infer.distributed` starts
once per session, in a process group of its own (so that a timeout stops it and every rank at once).
For each launch it reads a spec path and hands the ranks to
``torch.distributed``'s elastic launcher (``elastic_launch``: the machinery behind ``torchrun``, with
a c10d rendezvous on a free port, or the multi-node endpoint the user configured). Each rank runs
:func:`rank_main`: it rebuilds the session's technique registry, loads the model with the technique
(its tensor-parallel shard), computes the logits of the padded prompt batch and one greedy generation
per requested length, and saves them with ``torch.save`` into the launch's folder. Results are data in
files, never parsed from output; a rank that raises leaves its traceback in ``rank<N>.error``, and
``rank<N>.phase`` says what it was doing last (for the timeout message).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from pytest_infer.core.errors import TechniqueError
from pytest_infer.core.registry import Registry
from pytest_infer.runtime.batch import Batch, forward_logits
from pytest_infer.runtime.generation import greedy_generate
from pytest_infer.runtime.launcher import (
    BATCH,
    LAUNCHER_ERROR,
    LAUNCHER_FAILURES,
    LAUNCHER_RC,
    error_file,
    phase_file,
    result_file,
)
from pytest_infer.runtime.loading import ModelSource, load_model, load_tokenizer
from pytest_infer.techniques import builtin_techniques


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def die_with_parent() -> None:
    """Linux: be killed when the parent dies, so that a pytest killed hard (SIGKILL) leaves no launcher or
    rank behind (elsewhere the launcher ends at end-of-input, and a timeout stops its process group)."""
    if sys.platform != "linux":
        return
    parent = os.getppid()
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


# --- the ranks --------------------------------------------------------------------------------------
def rank_main(spec_path: str) -> None:
    """One rank: load the shard, compute, save; on any error leave the traceback and re-raise."""
    import faulthandler
    import signal

    faulthandler.enable()  # a rank that crashes (SIGSEGV, SIGABRT...) leaves its Python stack in its stderr log
    # A rank forked from the launcher inherits the elastic agent's handlers, which turn SIGTERM into a Python
    # exception: a rank blocked in a collective would then ignore the agent's SIGTERM for its 30 s grace.
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    die_with_parent()
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    folder = Path(spec["dir"])
    rank = int(os.environ["RANK"])

    def phase(text: str) -> None:
        _write(phase_file(folder, rank), text)

    try:
        phase("starting")
        _compute(spec, folder, rank, phase)
        phase("done")
    except BaseException:
        _write(error_file(folder, rank), traceback.format_exc())
        raise
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _compute(spec: dict[str, Any], folder: Path, rank: int, phase: Any) -> None:
    import torch
    import torch.distributed as dist

    phase("building the technique registry")
    technique = _technique(spec["technique"], spec["plugins"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local_rank}" if spec["device_kind"] == "cuda" else "cpu"
    source = ModelSource(spec["model"], spec["trust_remote_code"], spec["allow_pickle"])
    phase(f"loading the model ({technique.name}, {spec['dtype']}, {device})")
    model = load_model(source, technique, spec["dtype"], device)
    tokenizer = load_tokenizer(source)
    saved = torch.load(folder / BATCH, weights_only=True)
    batch = Batch(saved["input_ids"].to(device), saved["attention_mask"].to(device), tuple(spec["prompts"]))
    phase("forward of the padded prompt batch")
    logits = forward_logits(model, batch, technique).cpu()
    generated: dict[int, dict[str, Any]] = {}
    for n in spec["lengths"]:
        phase(f"greedy generation of {n} tokens")
        g = greedy_generate(model, tokenizer, batch, technique, n)
        generated[n] = {"tokens": g.tokens, "margins": g.margins}
    peers: list[Any] = [None] * dist.get_world_size() if dist.is_initialized() else [None]
    if dist.is_initialized():
        # every rank's tokens, so that a node of a multi-node run can check the ranks of the others too
        phase("gathering every rank's tokens")
        dist.all_gather_object(peers, {n: g["tokens"] for n, g in generated.items()})
    phase("saving results")
    out = {
        "rank": rank,
        "pid": os.getpid(),
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "logits": logits,
        "generated": generated,
        "peers": peers,
    }
    target = result_file(folder, rank)
    torch.save(out, target.with_name(target.name + ".tmp"))
    os.replace(target.with_name(target.name + ".tmp"), target)


def _technique(name: str, plugins: list[dict[str, str]]) -> Any:
    """The technique the session knows as ``name``: built-ins plus what each registering plugin adds
    (conftest files and plugin modules are imported here again, by name or from their file)."""

    registry = Registry(builtin_techniques())
    for plugin in plugins:
        module = _import(plugin["name"], plugin.get("file"))
        hook = module.pytest_infer_register_techniques
        params = inspect.signature(hook).parameters
        hook(registry=registry) if "registry" in params else hook()
    try:
        return registry.get(name)
    except TechniqueError as exc:
        raise TechniqueError(
            f"technique {name!r} is not known inside the rank: {exc}. Ranks re-create the registry from the "
            "modules implementing pytest_infer_register_techniques (conftest.py files, plugin modules); "
            "a technique added by a plugin object or at run time cannot reach them"
        ) from None


def _import(name: str, file: str | None) -> Any:
    if name in sys.modules:
        return sys.modules[name]
    if file:
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {name} from {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


# --- the launcher -----------------------------------------------------------------------------------
def serve() -> int:
    """The launcher, kept for a whole pytest session: one spec path per line on stdin, one launch each;
    it answers with ``launcher.rc`` (and ``launcher.error`` if the launch itself broke) in the spec's
    folder. Ranks are forked from here on CPU, so the imports below are paid once per session."""
    die_with_parent()
    for line in sys.stdin:
        spec_path = line.strip()
        if not spec_path:
            continue
        folder = Path(json.loads(Path(spec_path).read_text(encoding="utf-8"))["dir"])
        try:
            rc = launch(spec_path)
        except BaseException as exc:
            _write(folder / LAUNCHER_ERROR, traceback.format_exc())
            _write(folder / LAUNCHER_RC, "2")
            if not isinstance(exc, Exception) or type(exc).__name__ == "SignalException":
                return 2  # stopped (the agent turns SIGTERM into SignalException): stop serving too
            continue
        _write(folder / LAUNCHER_RC, str(rc))
    return 0


def launch(spec_path: str) -> int:
    """Start the ranks through ``torch.distributed.launcher.api.elastic_launch``; 0 when all succeeded."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    folder = Path(spec["dir"])
    for p in reversed(spec["sys_path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    lc = spec["launch"]
    if lc["start_method"] == "fork":
        _warm(spec)
    rdzv_configs: dict[str, Any] = {"timeout": lc["rdzv_timeout"]}
    if lc.get("node_rank") is not None:
        rdzv_configs["rank"] = lc["node_rank"]  # what torchrun passes for --node-rank (static rendezvous)
    wanted: dict[str, Any] = {
        "min_nodes": lc["nnodes"],
        "max_nodes": lc["nnodes"],
        "nproc_per_node": lc["nproc_per_node"],
        "run_id": lc["run_id"],
        "rdzv_backend": lc["rdzv_backend"],
        "rdzv_endpoint": lc["rdzv_endpoint"],
        "rdzv_configs": rdzv_configs,
        "max_restarts": 0,  # a failing rank is the finding, not something to retry
        "monitor_interval": 0.1,
        "start_method": lc["start_method"],
        "logs_specs": DefaultLogsSpecs(log_dir=str(folder / "logs"), redirects=Std.ALL),
        "local_addr": lc.get("local_addr"),
        "shutdown_timeout": 5,  # recent torch only; older ones wait their fixed grace
    }
    known = {f.name for f in dataclasses.fields(LaunchConfig)}
    config = LaunchConfig(**{k: v for k, v in wanted.items() if k in known})
    saved = {k: os.environ.get(k) for k in spec["env"]}
    os.environ.update(spec["env"])  # inherited by the ranks of this launch only
    try:
        elastic_launch(config, rank_main)(str(Path(spec_path).resolve()))
    except ChildFailedError as exc:
        failures = {
            str(rank): {"exitcode": f.exitcode, "message": f.message, "pid": f.pid, "error_file": f.error_file}
            for rank, f in exc.failures.items()
        }
        _write(folder / LAUNCHER_FAILURES, json.dumps(failures))
        return 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return 0


def _warm(spec: dict[str, Any]) -> None:
    """Import what every rank needs once, before the ranks are forked (CPU only: CUDA must not be touched
    before a fork, and nothing here does). Saves each rank the seconds of importing transformers."""
    import torch.distributed.tensor  # noqa: F401  (DTensor, used by the tensor-parallel plan)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    config = AutoConfig.from_pretrained(spec["model"], trust_remote_code=spec["trust_remote_code"])
    try:  # the model's own modeling module (transformers imports it lazily)
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except Exception:
        pass


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        sys.exit("usage: python -m pytest_infer._tp_worker --serve (started by pytest_infer.runtime.launcher)")
    # through the package module, so that the ranks unpickle pytest_infer._tp_worker.rank_main, not __main__'s
    code = importlib.import_module("pytest_infer._tp_worker").serve()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip tearing torch down: seconds on a busy machine, and nothing is left to release

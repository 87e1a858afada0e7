"""Tensor parallelism through real ranks (2 processes, gloo, started by torch.distributed's elastic launcher).

One inner session runs the built-in TP techniques and three planted faults together (one launch each,
shared by the logits, generation and rank-agreement tests of a technique); a second runs a hanging rank
under a short ``--infer-rank-timeout``. Both must leave no process and no temporary folder behind.
The fast tests at the end check the pieces without launching anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_infer.core.resources import embedded_model_path
from pytest_infer.runtime.loading import ModelSource

_CACHE = os.environ.get("PYTEST_INFER_TEST_CACHE") or str(Path.home() / ".cache" / "pytest-infer")
BASE = (sys.executable, "-m", "pytest", "-p", "pytest_infer", "-p", "no:cacheprovider", f"--infer-cache-dir={_CACHE}")
TAG = "PYTEST_INFER_TEST_TAG"

PLANTED = """
import os
import signal
import time

import torch

from pytest_infer import Technique
from pytest_infer.core.technique import Lazy
from pytest_infer.techniques.parallelism import distributed_config

TP = {"distributed_config": Lazy(distributed_config)}

if os.environ.get("RANK") == "0" and os.environ.get("LAUNCH_LOG"):  # imported by every rank of every launch
    with open(os.environ["LAUNCH_LOG"], "a") as log:
        log.write(os.environ.get("TORCHELASTIC_RUN_ID", "?") + "\\n")


def local(tensor):
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def shard_off(model):
    # rank 1 scales its shard of layer 2's down projection: its partial sum joins the all-reduce
    if torch.distributed.get_rank() == 1:
        with torch.no_grad():
            local(model.model.layers[2].mlp.down_proj.weight).mul_(1.05)
    return model


def drift(model):
    # rank 1 alone biases its own copy of the gathered logits towards token 17
    if torch.distributed.get_rank() == 1:
        def hook(module, inputs, output):
            output = output.clone()
            output[..., 17] += 3.0
            return output

        model.lm_head.register_forward_hook(hook)
    return model


def raises():
    if os.environ.get("RANK") == "1":
        raise RuntimeError("planted: rank 1 cannot build its shard")


def crashes():
    if os.environ.get("RANK") == "1":
        os.kill(os.getpid(), signal.SIGSEGV)


def hangs():
    if os.environ.get("RANK") == "1":
        time.sleep(3600)


def pytest_infer_register_techniques(registry):
    for name, kw in (("tp_shard_off", {"prepare": shard_off}), ("tp_rank_drift", {"prepare": drift}),
                     ("tp_raises", {"setup": raises}), ("tp_crashes", {"setup": crashes}),
                     ("tp_hangs", {"setup": hangs})):
        registry.add(Technique(name=name, family="parallelism", load_kwargs=TP, runner="multiprocess", **kw))
"""

LOGITS_TEST = """
def test_tp_logits(parallelism_technique, infer_parity):
    infer_parity.assert_logits(parallelism_technique)
"""


def _tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``TAG=tag`` (every process an inner session started)."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if state not in ("Z", "X") and needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _run(folder: Path, *args: str, timeout: float = 400) -> SimpleNamespace:
    """An inner pytest session in ``folder``; afterwards, what it left behind."""
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)
    tag = uuid.uuid4().hex
    env = {**os.environ, "TMPDIR": str(tmp), TAG: tag, "LAUNCH_LOG": str(folder / "launches.log")}
    env.pop("PYTEST_ADDOPTS", None)
    started = time.perf_counter()
    proc = subprocess.run([*BASE, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    time.sleep(0.2)  # let the kernel finish reaping
    log = folder / "launches.log"
    return SimpleNamespace(
        rc=proc.returncode,
        out=proc.stdout + proc.stderr,
        lines=pytest.LineMatcher((proc.stdout + proc.stderr).splitlines()),
        wall=wall,
        strays=_tagged(tag),
        leftovers=sorted(p.name for p in tmp.iterdir()),
        launches=sorted(set(log.read_text().split())) if log.is_file() else [],
    )


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("tp")
    (folder / "conftest.py").write_text(PLANTED)
    (folder / "test_tp_logits.py").write_text(LOGITS_TEST)
    techniques = "tensor_parallel,tensor_parallel_static,tp_shard_off,tp_rank_drift,tp_raises,tp_crashes"
    return _run(
        folder,
        ".",
        "--infer-suite=parity,generation",
        f"--infer-technique={techniques}",
        "-k",
        "rank_agreement or generation_parity or tp_logits",
        "-rA",
    )


def _outcome(run: SimpleNamespace, test: str, technique: str) -> str:
    for line in run.out.splitlines():
        for outcome in ("PASSED", "FAILED"):
            if line.startswith(f"{outcome} ") and f"::{test}[cpu-float32-{technique}]" in line:
                return outcome
    raise AssertionError(f"no outcome for {test}[{technique}] in:\n{run.out}")


def test_two_gloo_ranks_match_the_single_process_model(tp_run: SimpleNamespace) -> None:
    """The CI check: logits, greedy tokens at 16 and 64 tokens, and agreement of both ranks."""
    for technique in ("tensor_parallel", "tensor_parallel_static"):
        for test in ("test_tp_logits", "test_generation_parity", "test_rank_agreement"):
            assert _outcome(tp_run, test, technique) == "PASSED", tp_run.out
    tp_run.lines.fnmatch_lines(
        [
            "*rank agreement passed: tensor_parallel (float32) on cpu, 2 ranks, 8 requests x 16/64 greedy tokens: "
            "2 ranks, 640 tokens compared, 0 disagreements, logits spread 0*"
        ]
    )


def test_one_launch_per_technique_serves_every_check(tp_run: SimpleNamespace) -> None:
    # six techniques x three tests: one launch each (the failing ones included: their failures are cached)
    assert len(tp_run.launches) == 6, (tp_run.launches, tp_run.out)


def test_perturbed_shard_fails_logit_and_generation_parity(tp_run: SimpleNamespace) -> None:
    assert _outcome(tp_run, "test_tp_logits", "tp_shard_off") == "FAILED"
    assert _outcome(tp_run, "test_generation_parity", "tp_shard_off") == "FAILED"
    # the perturbed partial sum reaches every rank through the all-reduce: they agree, all wrong
    assert _outcome(tp_run, "test_rank_agreement", "tp_shard_off") == "PASSED"
    tp_run.lines.fnmatch_lines(
        [
            "*logit parity FAILED: tp_shard_off (float32) vs reference eager (float32) on cpu, 8 prompts*",
            "*max_abs * FAIL*",
        ]
    )
    tp_run.lines.fnmatch_lines(["*generation parity FAILED: tp_shard_off*", "*row * diverged at step *"])


def test_drifting_rank_fails_rank_agreement_naming_rank_request_and_step(tp_run: SimpleNamespace) -> None:
    assert _outcome(tp_run, "test_tp_logits", "tp_rank_drift") == "PASSED"  # rank 0's logits are right
    assert _outcome(tp_run, "test_rank_agreement", "tp_rank_drift") == "FAILED"
    tp_run.lines.fnmatch_lines(
        [
            "*rank agreement FAILED: tp_rank_drift (float32) on cpu, 2 ranks*",
            "*- rank 1 disagrees with rank 0 on request * ('*'), step * of the *-token generation: "
            "rank 0 chose * '*', rank 1 chose 17 '*'",
            "*- rank 1's logits differ from rank 0's by up to 3 (bound *): every rank must hold the same*",
        ]
    )


def test_raising_rank_fails_every_check_with_its_traceback(tp_run: SimpleNamespace) -> None:
    for test in ("test_tp_logits", "test_generation_parity", "test_rank_agreement"):
        assert _outcome(tp_run, test, "tp_raises") == "FAILED"
    tp_run.lines.fnmatch_lines(
        [
            "*tp_raises (float32, cpu): 2 ranks through torch.distributed elastic_launch (gloo) failed*",
            "*rank 0: stopped while *",
            "*rank 1 raised while loading the model (tp_raises, float32, cpu):",
            "*Traceback (most recent call last):",
            "*RuntimeError: planted: rank 1 cannot build its shard",
        ]
    )


def test_crashing_rank_fails_with_its_exit_signal_and_stack(tp_run: SimpleNamespace) -> None:
    assert _outcome(tp_run, "test_rank_agreement", "tp_crashes") == "FAILED"
    tp_run.lines.fnmatch_lines(
        [
            "*tp_crashes (float32, cpu): 2 ranks through torch.distributed elastic_launch (gloo) failed*",
            "*rank 1: killed by SIGSEGV while loading the model (tp_crashes, float32, cpu)",
            "*its stderr (last lines):",
            "*Fatal Python error: Segmentation fault*",
        ]
    )
    tp_run.lines.fnmatch_lines(["*in crashes*"])


def test_launches_leave_no_process_and_no_folder(tp_run: SimpleNamespace) -> None:
    assert tp_run.strays == [], f"processes left running: {tp_run.strays}"
    assert not [n for n in tp_run.leftovers if n.startswith("pytest-infer-ranks-")], tp_run.leftovers


def test_hanging_rank_fails_with_the_timeout_and_is_stopped(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(PLANTED)
    run = _run(
        tmp_path,
        "--infer-suite=parity",
        "--infer-technique=tp_hangs",
        "--infer-rank-timeout=8",
        "-k",
        "rank_agreement",
    )
    assert run.rc == 1, run.out
    run.lines.fnmatch_lines(
        [
            "*tp_hangs (float32, cpu): 2 ranks through torch.distributed elastic_launch (gloo) did not finish "
            "within --infer-rank-timeout 8 s",
            "*rank 1: still running after 8 s; last phase: *",
            "*stopped all * remaining processes of the launch; its temporary folder was removed",
        ]
    )
    assert run.strays == [], f"processes left running: {run.strays}"
    assert not [n for n in run.leftovers if n.startswith("pytest-infer-ranks-")], run.leftovers


def test_the_stray_check_sees_a_tagged_process() -> None:
    """The no-stray assertions above are not vacuous: a live process carrying the tag is found."""
    tag = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, TAG: tag})
    try:
        assert _tagged(tag) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert _tagged(tag) == []


# --- without launching ---------------------------------------------------------------------------
def test_head_counts_not_divisible_by_tp_size_are_named() -> None:
    from pytest_infer.core.resources import fixtures_dir
    from pytest_infer.runtime.launcher import model_reason

    tiny = str(fixtures_dir() / "tiny-llama")
    assert model_reason(tiny, False, 2) is None
    assert model_reason(tiny, False, 3) == (
        "tiny-llama has 4 attention heads and 2 key-value heads: both must be divisible by --infer-tp-size 3"
    )


def test_model_without_a_tp_plan_is_named(tmp_path: Path) -> None:
    from pytest_infer.runtime.launcher import model_reason

    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_head": 4, "n_embd": 64}')
    reason = model_reason(str(tmp_path), False, 2)
    assert reason is not None and "(gpt2) has no tensor-parallel plan (base_model_tp_plan)" in reason


def test_cuda_needs_tp_size_devices() -> None:
    from pytest_infer.runtime.launcher import preflight

    source = ModelSource(str(embedded_model_path()))
    assert preflight(source, "cuda:0", 2, device_count=1) == "needs 2 GPUs, found 1"
    assert preflight(source, "mps", 1, device_count=0) == (
        "tensor parallelism runs its ranks on cpu (gloo) or cuda (nccl), not mps"
    )


def test_multi_node_settings_come_from_the_environment() -> None:
    from pytest_infer.runtime.launcher import LaunchError, LaunchSettings

    one = LaunchSettings.from_env(2, {})
    assert (one.nnodes, one.nproc_per_node, one.rdzv_endpoint, one.rdzv_backend) == (1, 2, "localhost:0", "c10d")
    env = {
        "PYTEST_INFER_NNODES": "2",
        "PYTEST_INFER_NODE_RANK": "1",
        "PYTEST_INFER_RDZV_ENDPOINT": "node0:29400",
        "PYTEST_INFER_RDZV_ID": "job7",
    }
    two = LaunchSettings.from_env(4, env)
    assert (two.nnodes, two.nproc_per_node, two.node_rank, two.rdzv_endpoint) == (2, 2, 1, "node0:29400")
    with pytest.raises(LaunchError, match=r"set PYTEST_INFER_RDZV_ENDPOINT .* and PYTEST_INFER_RDZV_ID"):
        LaunchSettings.from_env(4, {"PYTEST_INFER_NNODES": "2"})
    with pytest.raises(LaunchError, match="--infer-tp-size 2 is not divisible by PYTEST_INFER_NNODES=3"):
        LaunchSettings.from_env(2, {**env, "PYTEST_INFER_NNODES": "3"})
    with pytest.raises(LaunchError, match="PYTEST_INFER_NODE_RANK=2 must be below PYTEST_INFER_NNODES=2"):
        LaunchSettings.from_env(4, {**env, "PYTEST_INFER_NODE_RANK": "2"})


class _Tokenizer:
    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


def test_rank_comparison_names_rank_request_and_step() -> None:
    from pytest_infer.parity.ranks import compare_ranks
    from pytest_infer.runtime.launcher import RankResults

    same = {16: [[1, 2, 3], [4, 5, 6]]}
    results = RankResults("tp", 3, 1.0, {0: None}, {}, {0: same, 1: same, 2: {16: [[1, 2, 3], [4, 9, 6]]}})
    result = compare_ranks(
        results, None, _Tokenizer(), device="cpu", dtype="float32", prompts=["first", "second"], logits_bound=1e-3
    )
    assert not result.passed
    assert result.failures == [
        "rank 2 disagrees with rank 0 on request 1 ('second'), step 1 of the 16-token generation: "
        "rank 0 chose 5 '<5>', rank 2 chose 9 '<9>'"
    ]
    assert result.to_dict()["check"] == "ranks" and result.metrics["tokens_compared"] == 10
    agreeing = RankResults("tp", 2, 1.0, {0: None}, {}, {0: same, 1: same})
    ok = compare_ranks(agreeing, None, _Tokenizer(), device="cpu", dtype="float32", prompts=[], logits_bound=1e-3)
    assert ok.passed and "0 disagreements" in ok.message()
    missing = RankResults("tp", 2, 1.0, {0: None}, {}, {0: same})
    assert compare_ranks(
        missing, None, _Tokenizer(), device="cpu", dtype="float32", prompts=[], logits_bound=None
    ).failures == ["no tokens from rank(s) 1 of 2"]

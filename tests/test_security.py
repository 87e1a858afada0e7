"""Security defaults, each through a real pytest session: no remote code unless asked, no pickle unless
asked (and never arbitrary objects), no unpinned hub kernels under --infer-strict, no network when the
environment says offline, no secrets in the reports.

Every inner session runs with a socket guard in its conftest (:data:`GUARD`): a connection to anything
but this machine is refused and logged, and the tests assert the log stays empty.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import time
from pathlib import Path

import pytest

from pytest_infer.core.resources import embedded_model_path

EMBEDDED = embedded_model_path()
PARITY = ("--infer-suite", "parity", "--infer-technique", "sdpa", "-k", "logit_parity")
COMMIT = "0123456789abcdef0123456789abcdef01234567"

GUARD = """
import os
import socket

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "network_attempts.log")
LOCAL = {"localhost", "127.0.0.1", "::1", "", None}


def _refuse(what):
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(what + "\\n")
    raise OSError("network disabled by the security test: " + what)


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _remote(sock, address):
    return sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL


def connect(self, address):
    return _refuse(f"connect {address!r}") if _remote(self, address) else _connect(self, address)


def connect_ex(self, address):
    return _refuse(f"connect_ex {address!r}") if _remote(self, address) else _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    return _refuse(f"getaddrinfo {name!r}") if name not in LOCAL else _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
"""


def network_attempts(root: Path) -> list[str]:
    log = root / "network_attempts.log"
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


@pytest.fixture
def guarded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """An inner-session folder whose conftest refuses (and logs) every network connection; the hub offline
    variables of the outer environment do not leak in."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(pytester.path / "hub-cache"))  # an empty cache of its own
    pytester.makeconftest(GUARD)
    return pytester


def readable(result: pytest.RunResult) -> str:
    out = result.stdout.str() + "\n" + result.stderr.str()
    assert "Traceback (most recent call last)" not in out, out
    return out


def copy_model(root: Path, name: str, *, skip: tuple[str, ...] = ()) -> Path:
    target = root / name
    target.mkdir(parents=True)
    for f in EMBEDDED.iterdir():
        if f.name not in skip:
            shutil.copy(f, target / f.name)
    return target


# --- trust_remote_code ---------------------------------------------------------------------------------

# Transformers imports remote code from a copy in its modules cache: the marker's path is written in full.
CUSTOM_CONFIG = """
import pathlib
pathlib.Path({marker!r}).write_text("configuration")
from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "{model_type}"
"""
CUSTOM_MODEL = """
import pathlib
pathlib.Path({marker!r}).write_text("modeling")
from transformers import LlamaForCausalLM
from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def remote_code_model(root: Path, model_type: str) -> Path:
    """The embedded model with ``auto_map`` pointing at code in the folder that, when imported, leaves
    ``REMOTE_CODE_RAN`` in ``root``."""
    target = copy_model(root, f"remote-{model_type}")
    config = json.loads((target / "config.json").read_text())
    config.update(
        model_type=model_type,
        architectures=["CustomForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
    )
    (target / "config.json").write_text(json.dumps(config))
    marker = str(root / "REMOTE_CODE_RAN")
    (target / "configuration_custom.py").write_text(CUSTOM_CONFIG.format(marker=marker, model_type=model_type))
    (target / "modeling_custom.py").write_text(CUSTOM_MODEL.format(marker=marker))
    return target


def test_remote_code_is_refused_at_start_up_with_the_option_to_set(guarded: pytest.Pytester, run_infer) -> None:
    remote_code_model(guarded.path, "infer_custom")
    result = run_infer("--infer-model", "remote-infer_custom", *PARITY)
    readable(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "config.json maps the model to its own Python code (AutoConfig -> configuration_custom.CustomConfig" in err
    assert "model_type 'infer_custom' is not built into Transformers" in err
    assert "pass --infer-trust-remote-code (ini: infer_trust_remote_code = true) only if you trust it" in err
    assert not (guarded.path / "REMOTE_CODE_RAN").exists()
    assert network_attempts(guarded.path) == []

    # the option is the one way in: the same model then loads through its own code, and passes
    result = run_infer("--infer-model", "remote-infer_custom", "--infer-trust-remote-code", *PARITY)
    result.assert_outcomes(passed=1)
    assert (guarded.path / "REMOTE_CODE_RAN").exists()
    assert network_attempts(guarded.path) == []


# --- pickle ----------------------------------------------------------------------------------------------


def pickle_model(root: Path, name: str, *, keep_safetensors: bool) -> Path:
    """The embedded model with its weights also (or only) as ``pytorch_model.bin``, a real torch pickle."""
    import torch
    from safetensors.torch import load_file

    target = copy_model(root, name, skip=() if keep_safetensors else ("model.safetensors",))
    torch.save(load_file(EMBEDDED / "model.safetensors"), target / "pytorch_model.bin")
    return target


class _Payload:
    """Unpickled by a full ``pickle.load``: creates the file ``PICKLE_RAN`` (what a malicious checkpoint
    would do with ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return io.open, (self.marker, "w")


def evil_pickle(folder: Path, marker: Path) -> None:
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Payload(marker)}, f, protocol=2)  # what torch.save writes


def test_pickle_only_checkpoint_needs_allow_pickle(guarded: pytest.Pytester, run_infer) -> None:
    pickle_model(guarded.path, "ckpt", keep_safetensors=False)
    result = run_infer("--infer-model", "ckpt", *PARITY)
    readable(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "--infer-model ckpt: only pickle weights (pytorch_model.bin) found; pickle can run arbitrary code. "
        "Convert to safetensors, or pass --infer-allow-pickle if you trust this checkpoint"
    ) in result.stderr.str()

    result = run_infer("--infer-model", "ckpt", "--infer-allow-pickle", *PARITY)
    result.assert_outcomes(passed=1)  # end to end: the reference and sdpa both load from the pickle
    assert network_attempts(guarded.path) == []


def test_a_hostile_folder_loads_only_the_built_in_code_and_safetensors(guarded: pytest.Pytester, run_infer) -> None:
    """A downloaded folder with its own code (auto_map) for an architecture Transformers knows, and a
    malicious pickle next to the safetensors: the built-in class and the safetensors load, nothing else
    in the folder runs."""
    folder = remote_code_model(guarded.path, "llama")
    marker = guarded.path / "PICKLE_RAN"
    evil_pickle(folder, marker)
    result = run_infer("--infer-model", folder.name, *PARITY)
    readable(result)
    result.assert_outcomes(passed=1)
    assert not (guarded.path / "REMOTE_CODE_RAN").exists()
    assert not marker.exists()
    assert network_attempts(guarded.path) == []


def test_allow_pickle_still_refuses_arbitrary_objects(tmp_path: Path) -> None:
    """--infer-allow-pickle admits tensors, not code: Transformers unpickles with weights_only=True, and
    the failure says so (called in process: the session path is the one above)."""
    from pytest_infer.core.errors import ExplainedFailure
    from pytest_infer.runtime.loading import ModelLoadError, ModelSource, load_model
    from pytest_infer.techniques import builtin_techniques

    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe), protocol=2)).close()  # the payload is real: a full unpickle runs it
    assert probe.exists()
    marker = tmp_path / "PICKLE_RAN"
    folder = copy_model(tmp_path, "ckpt", skip=("model.safetensors",))
    evil_pickle(folder, marker)
    eager = next(t for t in builtin_techniques() if t.name == "eager")
    with pytest.raises(ModelLoadError) as failed:
        load_model(ModelSource(str(folder), allow_pickle=True), eager, "float32", "cpu")
    assert isinstance(failed.value, ExplainedFailure)  # reported as its message, without a traceback
    text = str(failed.value)
    assert text.startswith("loading ckpt with eager (float32) failed: UnpicklingError: Weights only load failed.")
    assert text.endswith(
        "-- pytest-infer loads pickle checkpoints only with torch.load(weights_only=True), never with arbitrary "
        "objects: convert the checkpoint to safetensors"
    )
    assert not marker.exists()


# --- hub kernels -----------------------------------------------------------------------------------------

HUB_KERNELS = f"""
from pytest_infer.techniques.kernels import hub_layer_technique


def pytest_infer_register_techniques(registry):
    registry.add(hub_layer_technique("hub_unpinned", "infer-test/rmsnorm", layer="RMSNorm", version=1, devices=("cpu",)))
    registry.add(
        hub_layer_technique("hub_pinned", "infer-test/rmsnorm", layer="RMSNorm", revision="{COMMIT}", devices=("cpu",))
    )
"""


def test_unpinned_hub_kernel_is_refused_under_strict_offline_without_network(
    guarded: pytest.Pytester, run_infer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KERNELS_CACHE", str(guarded.path / "kernels-cache"))
    guarded.makeconftest(GUARD + HUB_KERNELS)
    args = ("--infer-suite", "parity", "--infer-technique", "hub_unpinned,hub_pinned", "-k", "logit_parity")
    result = run_infer(*args, "--infer-strict")
    readable(result)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*--infer-strict: hub_unpinned: hub kernel infer-test/rmsnorm@v1 is not pinned: 'v1' is a version "
            "branch that moves. Pin it to a commit: revision='<40-hex commit>'*",
        ]
    )
    out = result.stdout.str()
    # the pinned one is not refused for its pin: it fails (strict) only because it is not downloaded
    assert f"--infer-strict: hub_pinned: hub kernel infer-test/rmsnorm@{COMMIT} not in the local cache" in out
    assert "hub_pinned: hub kernel infer-test/rmsnorm@" + COMMIT + " is not pinned" not in out
    assert network_attempts(guarded.path) == []


def test_the_socket_guard_sees_a_network_call(guarded: pytest.Pytester, run_infer) -> None:
    """The guard can fail the tests above: online, the kernels family probes the hub for a kernel it does
    not have, and the guard records it (offline, the same session makes no call)."""
    guarded.makeconftest(GUARD + HUB_KERNELS)
    result = run_infer("--infer-suite", "parity", "--infer-technique", "hub_pinned", "-k", "logit_parity", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*the hub is unreachable (*network disabled by the security test*"])
    assert any("huggingface.co" in line for line in network_attempts(guarded.path))


# --- offline ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_hub_id_offline_fails_fast_without_network(
    guarded: pytest.Pytester, run_infer, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "1")
    started = time.perf_counter()
    result = run_infer("--infer-model", "some-org/tiny-model", *PARITY)
    elapsed = time.perf_counter() - started
    readable(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        f"as a hub id it is not in the local cache ({guarded.path / 'hub-cache'}) while {variable}=1 forbids "
        "downloads" in result.stderr.str()
    )
    assert elapsed < 20, f"{elapsed:.1f} s: an offline hub id must fail at start-up, not after retries"
    assert network_attempts(guarded.path) == []


# --- secrets ---------------------------------------------------------------------------------------------

SECRETS = {
    "HF_TOKEN": "hf_secretTOKENvalue0123456789abcdefXYZ",
    "HUGGING_FACE_HUB_TOKEN": "hf_otherSECRET9876543210zyxwvu",
    "GITHUB_TOKEN": "ghp_secretGITHUBtoken0123456789abcdefgh",
    "AWS_SECRET_ACCESS_KEY": "aws/secretACCESSkey+0123456789abcdefghij",
}


def leaks(files: list[Path]) -> list[str]:
    """``file: VARIABLE`` for every secret value found in one of ``files`` (raw, or JSON-escaped)."""
    found = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        for name, value in SECRETS.items():
            if value in text or json.dumps(value)[1:-1] in text:
                found.append(f"{f.name}: {name}")
    return found


def cache_hub_model(cache: Path, repo_id: str) -> None:
    """The embedded model as ``repo_id`` in a hub cache (``refs/main`` -> a snapshot), as a download leaves it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(EMBEDDED, repo / "snapshots" / COMMIT)


@pytest.fixture
def secret_env(guarded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(guarded.path / "step-summary.md"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return guarded


REPORTS = ("--infer-report=report.json", "--infer-markdown=report.md", "--benchmark-json=bench.json")


def test_reports_hold_no_tokens_or_environment_secrets(secret_env: pytest.Pytester, run_infer) -> None:
    """With tokens in the environment, a hub model from the cache, offline: the run passes without a
    network call, and neither the JSON report, the Markdown, the job summary nor pytest-benchmark's JSON
    holds a secret."""
    cache_hub_model(secret_env.path / "hub-cache", "infer-test/tiny-llama")
    result = run_infer(
        "--infer-model", "infer-test/tiny-llama", "--infer-suite", "parity,perf", "--infer-technique", "sdpa",
        "-k", "logit_parity or decode_speed", "--infer-perf-rounds", "2", "--infer-perf-new-tokens", "4", *REPORTS,
    )  # fmt: skip
    readable(result)
    result.assert_outcomes(passed=2)
    assert "infer: model infer-test/tiny-llama" in result.stdout.str()
    files = [secret_env.path / n for n in ("report.json", "report.md", "bench.json", "step-summary.md")]
    assert all(f.stat().st_size > 0 for f in files)
    assert json.loads(files[0].read_text())["results"], "the report must hold results for the check to mean anything"
    assert leaks(files) == []
    assert not [name for name, value in SECRETS.items() if value in result.stdout.str() + result.stderr.str()]
    assert network_attempts(secret_env.path) == []


def test_the_secret_scan_finds_a_planted_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan above can fail: a result that carries an environment variable, written as the session
    writes its report, is caught (in process: the writing path is the one the session uses)."""
    import os

    from pytest_infer.reports.document import report_document, write_atomically

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    leaky = {"technique": "leaky", "check": "logits", "passed": True, "note": os.environ["AWS_SECRET_ACCESS_KEY"]}
    write_atomically(tmp_path / "report.json", report_document({}, {}, [leaky], [], 0.0, {}))
    assert leaks([tmp_path / "report.json"]) == ["report.json: AWS_SECRET_ACCESS_KEY"]


def test_a_token_in_the_model_path_is_masked_in_the_terminal_and_every_report(
    guarded: pytest.Pytester, run_infer
) -> None:
    """A model given with a token inside its path or URL (a folder named after the token, pasted from a URL):
    the header, the matrix, the JSON report and the Markdown show ``hf_a***``, never the token. (Refusals at
    start-up are covered in tests/test_bad_input.py: a URL with user:token@ and an id that is a token.)"""
    token = "hf_" + "aZ3kLq9WmT2xV7bN4cR8pY1sD6fG0hJ"
    folder = guarded.path / "models" / token
    folder.parent.mkdir()
    shutil.copytree(EMBEDDED, folder)
    result = run_infer(
        f"--infer-model=models/{token}", "--infer-suite", "parity", "--infer-technique", "sdpa", "-k", "logit",
        "--infer-report=r.json", "--infer-markdown=r.md",
    )  # fmt: skip
    readable(result)
    result.assert_outcomes(passed=1)
    out = result.stdout.str() + result.stderr.str()
    assert f"infer: model {guarded.path}/models/hf_a***" in out
    for text in (out, (guarded.path / "r.json").read_text(), (guarded.path / "r.md").read_text()):
        assert [line for line in text.splitlines() if token[4:] in line] == []
    assert json.loads((guarded.path / "r.json").read_text())["config"]["model"].endswith("/models/hf_a***")

"""Unit tests for pytest_infer.core.stack and core.detect (CPU only; GPU stacks are built by hand or faked)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_infer.core import detect as st
from pytest_infer.core.requirements import Requirements
from pytest_infer.core.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def cuda_stack(
    name: str = "NVIDIA H100 80GB HBM3",
    cc: tuple[int, int] = (9, 0),
    cuda: str = "13.0",
    count: int = 1,
    extra: dict[str, str | None] | None = None,
) -> Stack:
    pkgs: dict[str, str | None] = {"torch": "2.11.0+cu130", "transformers": "5.24.0"}
    pkgs.update(extra or {})
    return Stack(
        device_kind="cuda",
        device_name=name,
        compute_capability=cc,
        device_count=count,
        device_memory_bytes=80 * GIB,
        driver_version="570.86.10",
        cuda_version=cuda,
        cudnn_version="9.10.2",
        python="3.11.7",
        platform="Linux-x86_64",
        packages=pkgs,
        machine="x86_64",
        cpu_name="AMD EPYC 9654 96-Core Processor",
        cpu_count=16,
        host_memory_bytes=128 * GIB,
    )


T4 = cuda_stack("Tesla T4", cc=(7, 5), cuda="12.8")


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    st.detect_stack.cache_clear()
    yield
    st.detect_stack.cache_clear()


# -- detection on this (CPU) machine -------------------------------------------


def test_detect_stack_on_this_machine() -> None:
    s = st.detect_stack()
    assert s.device_kind == "cpu"
    assert s.compute_capability is None and s.device_count == 1
    assert s.version("torch") == st.package_version("torch") is not None
    assert s.packages["transformers"] == st.package_version("transformers") is not None
    assert set(s.packages) == set(st.TRACKED_PACKAGES)
    assert s.device_memory_bytes and s.device_memory_bytes > 0
    assert st.detect_stack() is s  # cached
    assert st.detect_stack("cpu") == s


def test_to_dict_is_json_and_round_trips() -> None:
    s = st.detect_stack()
    d = json.loads(json.dumps(s.to_dict()))
    assert isinstance(d["packages"], dict)
    back = Stack.from_dict(d)
    assert back == s and back.to_dict() == s.to_dict() and hash(back) == hash(s)
    h = cuda_stack()
    assert json.loads(json.dumps(h.to_dict()))["compute_capability"] == "9.0"
    assert Stack.from_dict(json.loads(json.dumps(h.to_dict()))) == h


def test_from_dict_tolerates_missing_and_unknown_keys() -> None:
    s = Stack.from_dict({"device_kind": "cpu", "device_name": "x", "future_field": 1})
    assert s.device_kind == "cpu" and dict(s.packages) == {}


def test_stack_is_frozen_and_rejects_unknown_kind() -> None:
    s = cuda_stack()
    with pytest.raises(AttributeError):
        s.device_kind = "cpu"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.packages["torch"] = "1.0"  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown device kind"):
        Stack(device_kind="tpu", device_name="x")


def test_package_version_name_variants() -> None:
    assert st.package_version("pytest_xdist") == st.package_version("pytest-xdist") is not None
    assert st.package_version("definitely-not-installed-pkg") is None


# -- header and key ------------------------------------------------------------


def test_header_line_cpu() -> None:
    s = st.detect_stack()
    line = s.header_line()
    assert "\n" not in line and line.startswith("infer stack: cpu ")
    assert f"torch {st.package_version('torch')}" in line
    assert "bitsandbytes" not in line or s.packages.get("bitsandbytes")


def test_header_line_cuda() -> None:
    line = cuda_stack(extra={"bitsandbytes": "0.50.2", "hqq": None}).header_line()
    assert line == (
        "infer stack: cuda NVIDIA H100 80GB HBM3 (sm 9.0, 1x 80.0 GiB)"
        " | driver 570.86.10 cuda 13.0 cudnn 9.10.2"
        " | torch 2.11.0+cu130 transformers 5.24.0 bitsandbytes 0.50.2"
    )


def test_key_is_filesystem_safe_and_distinguishes_stacks() -> None:
    keys = [
        st.detect_stack().key(),
        cuda_stack().key(),
        cuda_stack("NVIDIA A100-SXM4-80GB", cc=(8, 0)).key(),
        cuda_stack(cuda="12.8").key(),
        cuda_stack("x" * 300).key(),
    ]
    for k in keys:
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", k), k
        assert len(k) <= 80
    assert keys[1] == "cuda-nvidia_h100_80gb_hbm3-cu13.0-torch2.11.0-tf5.24.0"
    assert len(set(keys)) == len(keys)
    here = f"-torch{str(st.package_version('torch')).split('+')[0]}-tf{st.package_version('transformers')}"
    assert keys[0].startswith("cpu-") and keys[0].endswith(here)
    # two transformers (or torch) versions never share a key: merge and compare keep them apart
    assert cuda_stack(extra={"transformers": "5.17.0"}).key() != keys[1]
    assert cuda_stack(extra={"torch": "2.10.0+cu130"}).key() != keys[1]


def test_key_cpu_and_rocm() -> None:
    cpu = Stack(
        device_kind="cpu",
        device_name="Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz",
        machine="x86_64",
        packages={"torch": "2.13.0+cpu", "transformers": "5.24.0"},
    )
    assert cpu.key() == "cpu-x86_64-intel_xeon_platinum_8480-torch2.13.0-tf5.24.0"
    rocm = Stack(
        device_kind="rocm",
        device_name="AMD Instinct MI300X",
        rocm_version="6.4.43482-0f2d60242",
        packages={"torch": "2.13.0+rocm6.4", "transformers": "5.17.0"},
    )
    assert rocm.key() == "rocm-amd_instinct_mi300x-rocm6.4-torch2.13.0-tf5.17.0"


def test_for_device_cpu_view_of_cuda_stack() -> None:
    s = cuda_stack(extra={"bitsandbytes": "0.50.2"})
    cpu = s.for_device("cpu")
    assert cpu.device_kind == "cpu" and cpu.compute_capability is None
    assert cpu.device_name == s.cpu_name and cpu.device_memory_bytes == s.host_memory_bytes
    assert cpu.packages == s.packages and cpu.driver_version is None
    assert cpu.key().startswith("cpu-x86_64-amd_epyc_9654-")
    assert s.for_device("cuda:0") is s and s.for_device("auto") is s
    with pytest.raises(ValueError, match="not a device"):
        s.for_device("xpu")


# -- devices -------------------------------------------------------------------


def test_validate_device_on_this_machine() -> None:
    assert st.validate_device("cpu") is None
    assert st.validate_device("auto") is None
    assert st.available_devices()[0] == "cpu"
    msg = st.validate_device("cuda")
    assert msg is not None and "cuda requested" in msg and "is_available() is False" in msg
    assert "available: cpu" in msg
    msg = st.validate_device("cuda:1")
    assert msg is not None and msg.startswith("cuda:1")
    msg = st.validate_device("tpu")
    assert msg is not None and "auto, cpu, cuda, cuda:N, xpu, xpu:N, mps" in msg
    with pytest.raises(ValueError, match="tpu"):
        st.detect_stack("tpu")


def _fake_torch(n: int = 1, hip: str | None = None) -> Any:
    props = SimpleNamespace(total_memory=80 * GIB)
    cuda = SimpleNamespace(
        is_available=lambda: n > 0,
        device_count=lambda: n,
        get_device_name=lambda i: f"Fake GPU {i}",
        get_device_capability=lambda i: (8, 6),
        get_device_properties=lambda i: props,
    )
    cudnn = SimpleNamespace(is_available=lambda: True, version=lambda: 91002)
    return SimpleNamespace(
        __version__="2.13.0+cu130",
        cuda=cuda,
        version=SimpleNamespace(cuda=None if hip else "13.0", hip=hip),
        backends=SimpleNamespace(cudnn=cudnn, mps=SimpleNamespace(is_available=lambda: False)),
    )


def test_fake_cuda_machine(monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> None:
    monkeypatch.setattr(st, "_torch", lambda: _fake_torch(1))
    monkeypatch.setattr(st, "_nvidia_driver", lambda: "570.1")
    assert st.available_devices() == ["cpu", "cuda:0"]
    assert st.validate_device("cuda:0") is None
    assert st.validate_device("cuda:1") == "cuda:1 is not available: this machine has cuda:0 only"
    s = st.detect_stack()
    assert (s.device_kind, s.device_name, s.compute_capability) == ("cuda", "Fake GPU 0", (8, 6))
    assert (s.cudnn_version, s.driver_version, s.cuda_version) == ("9.10.2", "570.1", "13.0")
    assert st.detect_stack("cpu") == s.for_device("cpu")


def test_fake_rocm_and_gpu_build_without_gpu(monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> None:
    monkeypatch.setattr(st, "_torch", lambda: _fake_torch(2, hip="6.4.1"))
    s = st.detect_stack("cuda:1")
    assert (s.device_kind, s.device_name, s.device_count) == ("rocm", "Fake GPU 1", 2)
    assert s.cudnn_version is None and s.rocm_version == "6.4.1"
    monkeypatch.setattr(st, "_torch", lambda: _fake_torch(0))
    msg = st.validate_device("cuda")
    assert msg is not None and "sees no GPU" in msg


def test_probe_failures_become_none(monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> None:
    fake = _fake_torch(1)

    def boom(*_: object) -> None:
        raise RuntimeError("driver exploded")

    fake.cuda.get_device_properties = boom
    fake.cuda.get_device_capability = boom
    fake.backends.cudnn.version = boom
    monkeypatch.setattr(st, "_torch", lambda: fake)
    monkeypatch.setattr(st, "_nvidia_driver", lambda: None)
    s = st.detect_stack("cuda")
    assert s.compute_capability is None and s.device_memory_bytes is None
    assert s.cudnn_version is None and s.driver_version is None


def test_format_cudnn() -> None:
    assert st._format_cudnn(91002) == "9.10.2"
    assert st._format_cudnn(8907) == "8.9.7"
    assert st._format_cudnn(None) is None


# -- requirements --------------------------------------------------------------


def _reason(req: Requirements, s: Stack) -> str:
    reason = req.check(s)
    assert reason is not None
    assert "\n" not in reason and not reason.endswith(".")
    return reason


def test_device_kind_reason() -> None:
    cpu = cuda_stack().for_device("cpu")
    assert _reason(Requirements(device_kinds=frozenset({"cuda"})), cpu) == ("needs a cuda device, running on cpu")
    assert Requirements(device_kinds=frozenset({"cuda"})).check(cuda_stack()) is None
    assert Requirements().check(cpu) is None


def test_compute_capability_reason() -> None:
    req = Requirements(min_compute_capability=(8, 0))
    assert _reason(req, T4) == "needs compute capability >= 8.0, found 7.5"
    assert req.check(cuda_stack()) is None
    assert "found none" in _reason(req, T4.for_device("cpu"))


def test_device_count_reason() -> None:
    req = Requirements(device_kinds=frozenset({"cuda"}), min_device_count=2)
    assert _reason(req, T4) == "needs 2 cuda devices, found 1"
    assert req.check(cuda_stack(count=2)) is None


def test_package_reasons() -> None:
    s = cuda_stack(extra={"bitsandbytes": "0.44.1", "flash-attn": None})
    req = Requirements(packages=(("bitsandbytes", ">=0.45"),))
    assert _reason(req, s) == "needs bitsandbytes>=0.45, found 0.44.1"
    assert req.check(cuda_stack(extra={"bitsandbytes": "0.46.0rc1"})) is None  # pre-release
    assert _reason(Requirements(packages=(("flash-attn", ""),)), s) == (
        "flash-attn not installed (pip install flash-attn)"
    )
    assert _reason(Requirements(packages=(("flash_attn", ">=2.6"),)), s) == (
        "flash_attn not installed (pip install 'flash_attn>=2.6')"
    )
    bad = cuda_stack(extra={"hqq": "weird"})
    assert "not PEP 440" in _reason(Requirements(packages=(("hqq", ">=1"),)), bad)
    with pytest.raises(ValueError, match="invalid version specifier"):
        Requirements(packages=(("torch", "~~2"),))


def test_local_versions_match() -> None:
    cpu = Stack(device_kind="cpu", device_name="x", packages={"torch": "2.13.0+cpu"})
    assert Requirements(packages=(("torch", ">=2.5"),)).check(cpu) is None
    assert Requirements(packages=(("torch", "==2.13.0"),)).check(cpu) is None
    nightly = Stack(device_kind="cpu", device_name="x", packages={"torch": "2.14.0.dev20260101+cu130"})
    assert Requirements(packages=(("torch", ">=2.5,<3"),)).check(nightly) is None
    assert _reason(Requirements(packages=(("torch", "<2.13"),)), cpu) == ("needs torch<2.13, found 2.13.0+cpu")


def test_untracked_package_is_looked_up_live() -> None:
    req = Requirements(packages=(("pytest", ">=7"),))
    assert req.check(T4) is None
    assert "not installed" in _reason(Requirements(packages=(("no-such-dist-x", ""),)), T4)


def test_python_modules() -> None:
    assert Requirements(python_modules=("json.decoder",)).check(T4) is None
    assert _reason(Requirements(python_modules=("no_such_mod.sub",)), T4) == ("module no_such_mod.sub not importable")


def test_custom_checks_and_order() -> None:
    def needs_new_transformers(s: Stack) -> str | None:
        ok = (s.version("transformers") or "").startswith("5.")
        return None if ok else "needs transformers 5"

    def always(s: Stack) -> str | None:
        return "second check."

    def crashes(s: Stack) -> str | None:
        raise KeyError("x")

    req = Requirements(custom=(needs_new_transformers, always))
    assert _reason(req, T4) == "second check"
    old = cuda_stack(extra={"transformers": "4.57.0"})
    assert _reason(req, old) == "needs transformers 5"
    assert "crashes failed: KeyError" in _reason(Requirements(custom=(crashes,)), T4)
    # device kind is checked before everything else, capability before packages
    full = Requirements(
        device_kinds=frozenset({"cuda"}),
        min_compute_capability=(9, 0),
        packages=(("no-such-dist-x", ""),),
        custom=(always,),
    )
    assert _reason(full, T4.for_device("cpu")).startswith("needs a cuda device")
    assert _reason(full, T4).startswith("needs compute capability")
    assert _reason(full, cuda_stack()).startswith("no-such-dist-x not installed")


def test_merge() -> None:
    def c1(s: Stack) -> str | None:
        return None

    a = Requirements(
        device_kinds=frozenset({"cuda", "rocm"}),
        min_compute_capability=(8, 0),
        packages=(("bitsandbytes", ">=0.45"), ("torch", "")),
        custom=(c1,),
        python_modules=("json",),
        name="bnb",
    )
    b = Requirements(
        device_kinds=frozenset({"cuda"}),
        min_compute_capability=(9, 0),
        packages=(("bitsandbytes", "<1"), ("flash-attn", ">=2.6")),
        min_device_count=2,
        custom=(c1,),
        python_modules=("re",),
        name="fa",
    )
    m = a.merge(b)
    assert m.device_kinds == {"cuda"}
    assert m.min_compute_capability == (9, 0) and m.min_device_count == 2
    assert m.packages == (("bitsandbytes", ">=0.45,<1"), ("torch", ""), ("flash-attn", ">=2.6"))
    assert m.custom == (c1,) and m.python_modules == ("json", "re") and m.name == "bnb + fa"
    assert Requirements().merge(a).device_kinds == a.device_kinds
    assert m.describe() == (
        "cuda, 2 devices, sm>=9.0, bitsandbytes>=0.45,<1, torch, flash-attn>=2.6, module json, module re, check c1"
    )
    cpu_only = Requirements(device_kinds=frozenset({"cpu"}), name="cpu-offload")
    expected = "contradictory requirements: fa needs cuda, cpu-offload needs cpu"
    with pytest.raises(ValueError, match=expected):
        b.merge(cpu_only)


def test_describe_and_to_dict() -> None:
    req = Requirements(
        device_kinds=frozenset({"cuda"}), min_compute_capability=(8, 0), packages=(("flash-attn", ">=2.6"),)
    )
    assert req.describe() == "cuda, sm>=8.0, flash-attn>=2.6"
    assert Requirements().describe() == "any device"
    d = json.loads(json.dumps(req.to_dict()))
    assert d["min_compute_capability"] == "8.0" and d["packages"] == [["flash-attn", ">=2.6"]]


def test_import_does_not_import_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; import pytest_infer.core.stack, pytest_infer.core.detect; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)

"""NVML through nvidia-ml-py (the optional `nvml` extra): the driver version and the GPU count, quiet about the
deprecated `pynvml` distribution, and None wherever NVML cannot answer (no binding, no driver, an NVML error)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

from pytest_infer import xdist as infer_xdist
from pytest_infer.core import detect, nvml

ROOT = Path(__file__).resolve().parents[1]

FAKE_BINDING = """
import warnings

# what the deprecated `pynvml` distribution does at import; warnings are errors in these tests
warnings.warn("The pynvml package is deprecated. Please install nvidia-ml-py instead.", FutureWarning)

CALLS = []
FAIL = set()


class NVMLError(Exception):
    pass


def _call(name, value=None):
    CALLS.append(name)
    if name in FAIL:
        raise NVMLError(name + " failed")
    return value


def nvmlInit():
    return _call("init")


def nvmlShutdown():
    return _call("shutdown")


def nvmlSystemGetDriverVersion():
    return _call("driver", b"580.95.05")


def nvmlDeviceGetCount():
    return _call("count", 8)
"""


def test_the_nvml_extra_is_nvidia_ml_py_not_the_deprecated_pynvml() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert [r.split(">")[0] for r in extras["nvml"]] == ["nvidia-ml-py"]
    assert any("nvml" in r for r in extras["dev"] if r.startswith("pytest-infer["))
    requirements = project["dependencies"] + [r for rs in extras.values() for r in rs]
    assert not [r for r in requirements if r.lower().startswith("pynvml")]


def test_driver_version_and_gpu_count_through_the_binding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pynvml.py").write_text(FAKE_BINDING)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    assert nvml.driver_version() == "580.95.05"  # bytes from older bindings, decoded; the import warning kept quiet
    fake = sys.modules["pynvml"]
    assert fake.CALLS == ["init", "driver", "shutdown"]
    assert detect._nvidia_driver() == "580.95.05"
    if not Path("/proc/driver/nvidia/gpus").is_dir():  # where /proc has none, the count comes from NVML
        assert infer_xdist.count_gpus() == 8
    fake.FAIL.add("count")
    assert nvml.gpu_count() is None and fake.CALLS[-1] == "shutdown"  # shut down after a failed query too
    fake.FAIL.add("init")  # NVMLError_LibraryNotFound / DriverNotLoaded on a machine without an NVIDIA driver
    fake.CALLS.clear()
    assert nvml.driver_version() is None and nvml.gpu_count() is None and fake.CALLS == ["init", "init"]


def test_without_a_binding_or_a_driver_it_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if Path("/proc/driver/nvidia").is_dir():
        pytest.skip("this machine has an NVIDIA driver")
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    assert nvml.driver_version() is None and nvml.gpu_count() is None  # the real binding, if installed: no driver
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed: the import fails
    assert nvml.driver_version() is None and nvml.gpu_count() is None
    assert nvml.binding() is None or nvml.binding().startswith(("nvidia-ml-py ", "pynvml "))

"""Output hygiene: the optional backends' import chatter (torchao's 'Failed to load ...so' lines, torch's pytree and
torch.jit deprecation messages) stays out of the session's output and is shown once, condensed, under -v."""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import logging
import shutil
import sys
import warnings
from pathlib import Path

import pytest

from pytest_infer.runtime.quiet import QuietImports, condense

FAKE_BACKEND = """
import logging
import sys
import warnings

log = logging.getLogger("fakebackend")
own = logging.getLogger("fakebackend.noisy")  # a logger with its own stderr handler, as torch's
own.addHandler(logging.StreamHandler(sys.stderr))
own.propagate = False

log.warning("Failed to load /site/fakebackend/_C_fast.cpython-311-x86_64-linux-gnu.so: libcuda.so.1: cannot open "
            "shared object file")
log.warning("Failed to load /site/fakebackend/_C_mx.abi3.so: libcuda.so.1: cannot open shared object file")
own.warning("<enum 'Mode'> is an Enum subclass ... register_constant() on Enum subclasses is deprecated")
warnings.warn("`torch.jit.script_method` is deprecated.", DeprecationWarning)
warnings.warn("Detected no triton, certain kernels will not work", UserWarning)
from . import sub
"""


@pytest.fixture
def fake_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = tmp_path / "fakebackend"
    package.mkdir()
    (package / "__init__.py").write_text(FAKE_BACKEND)
    (package / "sub.py").write_text("import logging\nlogging.getLogger(__name__).warning('sub module says hello')\n")
    (package / "data.txt").write_text("a resource")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fakebackend", "fakebackend.sub"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return package


def test_a_backend_imports_quietly_and_says_once_what_it_said(
    fake_backend: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    quiet = QuietImports(["fakebackend"]).install()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a user's `-W error` must not make the import fail
            module = importlib.import_module("fakebackend")
    finally:
        quiet.remove()
    assert quiet not in sys.meta_path
    out, err = capsys.readouterr()
    assert out == err == "" and caplog.records == []  # nothing reached a handler, the terminal or pytest's capture
    assert quiet.notes() == [
        "fakebackend: optional native extensions unavailable: _C_fast, _C_mx (libcuda.so.1: cannot open shared "
        "object file)",
        "fakebackend: sub module says hello",  # the submodule ran inside the package: its records are the package's
        "fakebackend: Detected no triton, certain kernels will not work",
        "fakebackend: 2 deprecation messages hidden",
    ]
    # only the module's execution was wrapped: it keeps its real loader (resources, source)
    assert type(module.__loader__).__name__ == "SourceFileLoader" and module.__spec__.loader is module.__loader__
    assert (importlib.resources.files("fakebackend") / "data.txt").read_text() == "a resource"
    logging.getLogger("fakebackend").warning("after the import")  # logging works as before
    assert [r.getMessage() for r in caplog.records] == ["after the import"]


def test_condense_keeps_what_a_person_needs() -> None:
    record = logging.LogRecord(
        "torchao",
        logging.WARNING,
        "x",
        1,
        "Failed to load /p/_C_a.so: Could not load this library: /p/_C_a.so",
        None,
        None,
    )
    assert condense("torchao", [record], []) == [
        "torchao: optional native extension unavailable: _C_a (Could not load this library)"
    ]
    assert condense("hqq", [], []) == []
    # bitsandbytes on AVX512-BF16 CPUs, offline: its Hub kernel is unavailable and it says so in one long line
    hub = logging.LogRecord(
        "bitsandbytes", logging.WARNING, "x", 1,
        "Failed to load CPU gemm_4bit_forward from kernels-community: Kernel repository 'kernels-community/q' could "
        "not verify publisher trust status. Set trust_remote_code=True or add the repository ID to the allowlist.. "
        "Please make sure you already `pip install kernels`", None, None,
    )  # fmt: skip
    assert condense("bitsandbytes", [hub], []) == [
        "bitsandbytes: CPU gemm_4bit_forward from kernels-community unavailable (Kernel repository "
        "'kernels-community/q' could not verify publisher trust status); its fallback runs"
    ]


def test_a_session_keeps_the_backends_chatter_out_of_its_output(pytester: pytest.Pytester, run_infer) -> None:
    if not all(importlib.util.find_spec(m) for m in ("torchao", "bitsandbytes")):  # (not imported here)
        pytest.skip("needs torchao and bitsandbytes: the quantization extra")
    pytester.makepyfile(
        """
        def test_uses_backends(infer_config):
            import bitsandbytes  # its import warns (torch.jit)
            import torchao  # its import logs (native extensions, torch's pytree)

            assert False, "planted failure: its captured output must hold no backend chatter"
        """
    )
    result = run_infer("-v", "-W", "error::DeprecationWarning")
    result.assert_outcomes(failed=1)
    out = result.stdout.str() + result.stderr.str()
    assert "AssertionError: planted failure" in out
    for noise in ("Failed to load", "_pytree.py", "script_method", "DeprecationWarning", "warnings summary"):
        assert noise not in out, f"{noise!r} reached the output:\n{out[out.find(noise) - 300 :][:600]}"
    if shutil.which("nvidia-smi") is None:  # torchao's CUDA extensions cannot load here: said once, condensed
        result.stdout.fnmatch_lines(["infer backends: torchao: optional native extension* unavailable: _C_*"])

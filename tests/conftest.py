"""Shared helpers for the plugin's own tests: real pytest sessions through pytester.

Every inner session runs in a subprocess (``--runpytest=subprocess`` in pyproject): pytester's
in-process mode restores ``sys.modules`` after each run, and torch's native extensions cannot be
imported twice in one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _pytest import pytester as _pytester

# The pytester fixture restores sys.modules when a test ends, dropping whatever the test imported.
# torch's native extensions (and the operator libraries of torch._inductor, torch.distributed) cannot
# be imported twice in one process, so modules of these packages are kept across that restore.
_KEEP = {
    "torch",
    "transformers",
    "accelerate",
    "safetensors",
    "tokenizers",
    "huggingface_hub",
    "triton",
    "sympy",
    "numpy",
    "functorch",
    "pytest_infer",
    "psutil",  # Transformers' continuous batching looks it up through sys.modules["psutil"]
    "bitsandbytes",
    "torchao",
    "optimum",
    "hqq",
    "kernels",
}
_snapshot_init = _pytester.SysModulesSnapshot.__init__


def _keeping_heavy_modules(self, preserve=None):  # type: ignore[no-untyped-def]
    def keep(name: str) -> bool:
        return name.split(".", 1)[0] in _KEEP or (preserve is not None and preserve(name))

    _snapshot_init(self, preserve=keep)


_pytester.SysModulesSnapshot.__init__ = _keeping_heavy_modules  # type: ignore[method-assign]

# pytester gives each inner session its own HOME; share one compile cache between them so that
# flex_attention is compiled once per machine, not once per test.
_CACHE = os.environ.get("PYTEST_INFER_TEST_CACHE") or str(Path.home() / ".cache" / "pytest-infer")

# Sessions inside pytester run the real plugin; these flags keep their output predictable.
_STRICT_WARNINGS = (
    "error",
    # deprecation chatter of torch/transformers that is not ours to fix
    "ignore::DeprecationWarning:torch.*",
    "ignore::FutureWarning:transformers.*",
    "ignore::DeprecationWarning:transformers.*",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Warnings are errors in the plugin's own tests (and only there: see pyproject.toml)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            for spec in _STRICT_WARNINGS:
                item.add_marker(pytest.mark.filterwarnings(spec))


# one token (--flag=value): a separate path argument would take part in pytest's rootdir choice
BASE_ARGS = ("-p", "pytest_infer", "-p", "no:cacheprovider", f"--infer-cache-dir={_CACHE}")


@pytest.fixture
def run_infer(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """Run a pytest session in a subprocess with ``-p pytest_infer`` and return its result.

    When our own suite runs under pytest-xdist, the inner session must not believe it is a worker; on a CI
    machine (CI or BUILD_NUMBER set) pytest prints every failure's message again, untruncated, in the short
    summary: the inner session must print the same on a laptop and in CI, so both are unset."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "CI", "BUILD_NUMBER"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> pytest.RunResult:
        result = pytester.runpytest_subprocess(*BASE_ARGS, *args)
        for report in _reports_asked_for(args, pytester.path):
            # every report a session writes follows the shipped JSON Schema (one refused at start-up writes none:
            # the path may hold an input it refused to overwrite)
            if report.is_file() and result.ret != pytest.ExitCode.USAGE_ERROR:
                from _schema import validate_report  # jsonschema is in the dev extra: the README's main command,
                # run from this folder on the base install, loads this conftest without it

                validate_report(report)
        return result

    return run


def _reports_asked_for(args: tuple[str, ...], cwd: Path) -> list[Path]:
    named = [a.split("=", 1)[1] for a in args if a.startswith("--infer-report=")]
    named += [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--infer-report"]
    return [cwd / p for p in named]

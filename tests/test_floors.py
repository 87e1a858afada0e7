"""The floors of pytest_infer (docs/architecture.md) hold: import-linter's contracts (pyproject.toml), no import
cycle, no function-level import of a pytest_infer module, and every module small and saying what it owns."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pytest_infer"
MAX_LINES = 450


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(module: str, tree: ast.AST, known: dict[str, Path], is_package: bool) -> list[tuple[ast.AST, str]]:
    """(node, imported pytest_infer module) for every import statement of ``tree``, at any depth."""
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(anchor[: len(anchor) - (node.level - 1)] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        targets = set()
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        found.extend((node, target) for target in sorted(targets))
    return found


def test_import_linter_contracts_hold() -> None:
    """Imports only go down the floors, nothing below the pytest layer imports pytest but checks.verdict, and
    technique families do not import each other (the contracts in pyproject.toml)."""
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    assert Path(lint).exists(), "import-linter is a dev dependency: pip install -e '.[dev]'"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_import_cycle_and_no_function_level_import_of_our_own_modules() -> None:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    late = []
    for module, path in known.items():
        if module == "pytest_infer":
            continue  # the package's lazy public exports are not a floor
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node, target in _imports(module, tree, known, path.name == "__init__.py"):
            edges[module].add(target)
            parent = parents.get(node)
            while parent is not None and not isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
                parent = parents.get(parent)
            if parent is not None:
                late.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target} inside {parent.name}()")
    assert not late, (
        "function-level imports of pytest_infer modules (move the shared thing down a floor):\n" + "\n".join(late)
    )
    assert not _cycles(edges)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_module_is_small_and_says_what_it_owns() -> None:
    problems = []
    for module, path in modules().items():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_LINES:
            problems.append(f"{module}: {lines} lines (at most {MAX_LINES}: split it by concern)")
        if not ast.get_docstring(ast.parse(text)):
            problems.append(f"{module}: no docstring saying what it owns")
    assert not problems, "\n".join(problems)

"""Outputs that would clobber another output or an input: one rule for the session's reports (a usage error at
start-up) and for the ``pytest-infer`` CLI (exit 2), decided before anything is written.

Two paths are the same file when they resolve to the same real path (``./r.json`` and ``out/../r.json``, a
symbolic link and its target) or, both existing, :func:`os.path.samefile` says so (a hard link). An output
that is an existing file inside an input folder (the model directory, pytest-benchmark's stored runs) would
overwrite what the run reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

Named = tuple[str, str]  # (how the user named it: "--infer-report", "$GITHUB_STEP_SUMMARY", ...; the path)


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file."""
    ra, rb = os.path.realpath(os.path.expanduser(a)), os.path.realpath(os.path.expanduser(b))
    if ra == rb:
        return True
    try:
        return os.path.samefile(ra, rb)
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    real, root = Path(os.path.realpath(os.path.expanduser(path))), Path(os.path.realpath(os.path.expanduser(folder)))
    return real.is_file() and root in real.parents


def collision(
    outputs: Sequence[Named], inputs: Sequence[Named] = (), input_folders: Sequence[Named] = ()
) -> str | None:
    """The first output that would overwrite another output or an input, as a message naming both (None: no
    clash). ``outputs``, ``inputs`` and ``input_folders`` are (name, path); empty paths are left out."""
    outs = [(n, p) for n, p in outputs if p]
    for i, (name, path) in enumerate(outs):
        for other_name, other in outs[:i]:
            if same_file(path, other):
                return f"{name} {path}: the same file as {other_name} {other}; give each output its own path"
        for in_name, in_path in inputs:
            if in_path and same_file(path, in_path):
                return (
                    f"{name} {path}: the same file as {in_name} {in_path}, which is read, not written: writing it "
                    "would destroy it; choose another path"
                )
        for in_name, folder in input_folders:
            if folder and _inside(path, folder):
                return (
                    f"{name} {path}: an existing file of {in_name} {folder}, which is read, not written; choose a "
                    "path outside it"
                )
    return None


def partial_path(path: str) -> str:
    """Where an interrupted run writes an output whose path holds an earlier run's: ``r.json`` -> ``r.partial.json``."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.partial{p.suffix}"))

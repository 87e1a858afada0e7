"""Goldens: what a run produced, stored per model x stack class x dtype x technique so that a later run (another
transformers, torch or kernel; changed model code) is compared with it. This module owns the file format, where a
golden lives, reading it back (every defect named with the file), writing it atomically, and the list of what
changed between the run that recorded it and this one. No pytest; torch only inside the function that extracts
log-probabilities.

One golden is one JSON file, ``DIR/<model>/<stack class>/<dtype>/<technique>.<check>.json``:

- ``logits``: the top-k log-probabilities (and their token ids) at every real position of the prompt batch, as
  exact float32 in a zlib + base64 field (``data``), beside a readable part a diff shows: each position's top-1 token
  id and log-probability (3 decimals), one line per prompt;
- ``generation``: the greedy tokens of each prompt and the golden's own top-1/top-2 logit margin at each step (4
  decimals), one line per prompt;
- ``recorded``: the stack (device, capability, CPU ISA, CUDA, torch, transformers, backends), the model files' and
  tokenizer's hashes, the prompt set's hash, the bound in force and the noise floor it came from, the date.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import sys
import tempfile
import zlib
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import torch

FORMAT = "pytest-infer golden"
FORMAT_VERSION = 1
CHECKS = ("logits", "generation")


class GoldenError(Exception):
    """A golden file cannot be used; the message names the file and what to do."""


class FutureGolden(GoldenError):
    """A golden written by a newer pytest-infer (a format this one cannot read): never overwritten."""


@dataclass(frozen=True)
class GoldenKey:
    """What a golden is the output of."""

    model: str
    stack_class: str
    dtype: str
    technique: str
    check: str  # logits | generation

    def path(self, root: str | Path) -> Path:
        name = f"{_safe(self.technique)}.{self.check}.json"
        return Path(root) / _safe(self.model) / _safe(self.stack_class) / self.dtype / name

    def to_dict(self) -> dict[str, str]:
        return {
            "model": self.model,
            "stack_class": self.stack_class,
            "dtype": self.dtype,
            "technique": self.technique,
            "check": self.check,
        }


def _safe(name: str) -> str:
    """A file name for a technique or model name (``paged|sdpa`` -> ``paged%7Csdpa``): readable, reversible."""
    return quote(name, safe="+-_.=@") or "_"


def model_name(name_or_path: str, is_local: bool) -> str:
    """The model part of a golden's key: a local directory's name, or the hub id (``org/name`` -> ``org--name``)."""
    return Path(name_or_path).name if is_local else name_or_path.replace("/", "--")


def stack_classes(root: str | Path, model: str) -> list[str]:
    """The stack classes ``root`` holds goldens of ``model`` for (to say where the goldens are when one is missing)."""
    folder = Path(root) / _safe(model)
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


# --- the data -------------------------------------------------------------------------------------------------
@dataclass
class LogitsGolden:
    """Top-k log-probabilities per real position: ``ids[row][position][k]`` and ``logprobs`` alike."""

    top_k: int
    ids: list[list[list[int]]]
    logprobs: list[list[list[float]]]

    @property
    def positions(self) -> list[int]:
        return [len(row) for row in self.ids]

    def top1(self, row: int) -> list[int]:
        return [p[0] for p in self.ids[row]]


@dataclass
class GenerationGolden:
    """Greedy tokens ``[row][step]`` and the golden's own top-1/top-2 margin at each step (None where the technique
    does not report scores: continuous batching)."""

    new_tokens: int
    tokens: list[list[int]]
    margins: list[list[float]] | None


@dataclass
class Golden:
    key: GoldenKey
    recorded: dict[str, Any]
    logits: LogitsGolden | None = None
    generation: GenerationGolden | None = None
    path: str = ""


def logits_golden(logits: torch.Tensor, mask: torch.Tensor, top_k: int) -> LogitsGolden:
    """The top-k log-probabilities of ``[batch, seq, vocab]`` logits at the positions where ``mask`` is true."""
    import torch

    k = min(top_k, int(logits.shape[-1]))
    ids: list[list[list[int]]] = []
    values: list[list[list[float]]] = []
    real = mask.bool().to(logits.device)
    for b in range(logits.shape[0]):
        rows = logits[b, real[b].nonzero().flatten()].float()  # float32: ~1e-6 off, 100x below any bound
        top = torch.log_softmax(rows, dim=-1).topk(k, dim=-1)
        ids.append(top.indices.tolist())
        values.append(top.values.tolist())
    return LogitsGolden(k, ids, values)


# --- writing --------------------------------------------------------------------------------------------------
STEP = 2.0**-16  # log-probabilities are stored to this step: at most 7.6e-6 off, 13x below float32's tightest bound
_MAX_Q = 2**31 - 1


def _shuffle(data: bytes, width: int) -> bytes:
    """Byte planes (all first bytes, then all second bytes...): what zlib compresses best for numbers."""
    return b"".join(data[i::width] for i in range(width))


def _unshuffle(data: bytes, width: int) -> bytes:
    count = len(data) // width
    out = bytearray(len(data))
    for i in range(width):
        out[i::width] = data[i * count : (i + 1) * count]
    return bytes(out)


def _pack(golden: LogitsGolden) -> tuple[str, int]:
    """Log-probabilities as steps of :data:`STEP` below 0 (each position's first absolute, then the gap to the one
    before: top-k is sorted), then the token ids; each array byte-plane shuffled, little-endian, zlib, base64."""
    steps: list[int] = []
    for row in golden.logprobs:
        for position in row:
            previous = 0
            for j, value in enumerate(position):
                q = _MAX_Q if math.isnan(value) else min(_MAX_Q, max(0, round(-value / STEP)))
                steps.append(q - previous if j else q)
                previous = q
    flat_ids = [i for row in golden.ids for p in row for i in p]
    id_code = "H" if max(flat_ids, default=0) < 2**16 else "I"
    values, ids = array("I", steps), array(id_code, flat_ids)
    if values.itemsize != 4:  # array("I") is 4 bytes wherever CPython runs; say so if not
        raise RuntimeError("unsigned int is not 4 bytes on this platform")
    if sys.byteorder == "big":  # the file is little-endian everywhere
        values.byteswap()
        ids.byteswap()
    raw = _shuffle(values.tobytes(), 4) + _shuffle(ids.tobytes(), ids.itemsize)
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii"), ids.itemsize


def _finite(x: float) -> float:
    """JSON has no infinity: a masked token's log-probability (-inf) is written as -1e30."""
    return x if math.isfinite(x) else math.copysign(1e30, x)


def golden_document(golden: Golden) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "key": golden.key.to_dict(),
        "recorded": golden.recorded,
    }
    if golden.logits is not None:
        lg = golden.logits
        data, id_bytes = _pack(lg)
        doc["logits"] = {
            "top_k": lg.top_k,
            "positions": lg.positions,
            "top1": [lg.top1(r) for r in range(len(lg.ids))],
            "top1_logprob": [[_finite(round(p[0], 3)) for p in row] for row in lg.logprobs],
            "encoding": (
                f"zlib+base64 of byte-plane shuffled little-endian arrays, [row][position][k]: uint32 log-probs in "
                f"steps of 2^-16 below 0 (the first of a position absolute, then the gap), then uint{8 * id_bytes} ids"
            ),
            "id_bytes": id_bytes,
            "data": data,
        }
    if golden.generation is not None:
        g = golden.generation
        doc["generation"] = {
            "new_tokens": g.new_tokens,
            "tokens": g.tokens,
            "margins": None if g.margins is None else [[_finite(round(m, 4)) for m in row] for row in g.margins],
        }
    return doc


def dumps(obj: Any, indent: int = 0) -> str:
    """JSON with one line per list of numbers (a prompt's tokens, a position's ids): a diff shows what moved."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in obj) + f"\n{pad}]"
    return json.dumps(obj, separators=(", ", ": "), allow_nan=False)


def write_golden(path: str | Path, golden: Golden) -> int:
    """Write ``golden`` to ``path`` atomically (a temporary file renamed into place); the bytes written."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(golden_document(golden)) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(text.encode())


# --- reading --------------------------------------------------------------------------------------------------
_FIX = "restore it (git checkout) or record it anew with --infer-golden-regen"


def read_golden(path: str | Path, expected: GoldenKey | None = None) -> Golden:
    """Load the golden at ``path``; :class:`GoldenError` names the file and what is wrong (truncated, not ours,
    another key, a newer format)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GoldenError(f"golden {p}: not UTF-8 text ({exc.reason} at byte {exc.start}); {_FIX}") from None
    except OSError as exc:
        raise GoldenError(f"golden {p}: cannot read it ({exc.strerror or exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GoldenError(
            f"golden {p}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): the file is "
            f"truncated or corrupt; {_FIX}"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GoldenError(f"golden {p}: not a pytest-infer golden (no format {FORMAT!r}); remove it or {_FIX}")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FutureGolden(
            f"golden {p}: format version {version!r}, written by a newer pytest-infer; this one reads version "
            f"{FORMAT_VERSION}: upgrade pytest-infer to compare with it (it is never overwritten by an older one)"
        )
    try:
        golden = _parse(doc, str(p))
    except (KeyError, TypeError, ValueError, IndexError, binascii.Error, zlib.error) as exc:
        raise GoldenError(f"golden {p}: malformed ({type(exc).__name__}: {exc}); {_FIX}") from None
    if expected is not None and golden.key != expected:
        raise GoldenError(
            f"golden {p}: holds the golden of {golden.key.to_dict()}, not of {expected.to_dict()} (copied or renamed "
            f"by hand?); {_FIX}"
        )
    return golden


def _parse(doc: Mapping[str, Any], path: str) -> Golden:
    key = GoldenKey(**{k: str(doc["key"][k]) for k in ("model", "stack_class", "dtype", "technique", "check")})
    recorded = doc["recorded"]
    if not isinstance(recorded, dict):
        raise TypeError("'recorded' is not an object")
    golden = Golden(key, recorded, path=path)
    if "logits" in doc:
        golden.logits = _parse_logits(doc["logits"])
    if "generation" in doc:
        g = doc["generation"]
        tokens = [[int(t) for t in row] for row in g["tokens"]]
        margins = None if g["margins"] is None else [[float(m) for m in row] for row in g["margins"]]
        if margins is not None and [len(r) for r in tokens] != [len(r) for r in margins]:
            raise ValueError("generation: tokens and margins differ in length")
        golden.generation = GenerationGolden(int(g["new_tokens"]), tokens, margins)
    if golden.logits is None and golden.generation is None:
        raise ValueError("neither logits nor generation data")
    return golden


def _parse_logits(section: Mapping[str, Any]) -> LogitsGolden:
    k, positions, id_bytes = int(section["top_k"]), [int(n) for n in section["positions"]], int(section["id_bytes"])
    if k < 1 or id_bytes not in (2, 4) or any(n < 0 for n in positions):
        raise ValueError(f"top_k {k}, id_bytes {id_bytes}, positions {positions}")
    raw = zlib.decompress(base64.b64decode(section["data"], validate=True))
    count = sum(positions) * k
    if len(raw) != count * (4 + id_bytes):
        raise ValueError(f"data holds {len(raw)} bytes, {count * (4 + id_bytes)} expected for {count} entries")
    values, ids = array("I"), array("H" if id_bytes == 2 else "I")
    values.frombytes(_unshuffle(raw[: 4 * count], 4))
    ids.frombytes(_unshuffle(raw[4 * count :], id_bytes))
    if sys.byteorder == "big":
        values.byteswap()
        ids.byteswap()
    logprobs: list[float] = []
    for start in range(0, count, k):
        q = 0
        for j in range(k):
            q = values[start + j] + (q if j else 0)
            logprobs.append(-q * STEP)
    out_ids: list[list[list[int]]] = []
    out_values: list[list[list[float]]] = []
    at = 0
    for n in positions:
        out_ids.append([list(ids[at + i * k : at + (i + 1) * k]) for i in range(n)])
        out_values.append([logprobs[at + i * k : at + (i + 1) * k] for i in range(n)])
        at += n * k
    return LogitsGolden(k, out_ids, out_values)


# --- what changed since a golden was recorded -------------------------------------------------------------------
_STACK_FIELDS = (
    ("device_name", "device"),
    ("compute_capability", "compute capability"),
    ("cpu_capability", "CPU ISA"),
    ("cuda_version", "cuda"),
    ("rocm_version", "rocm"),
    ("cudnn_version", "cudnn"),
    ("driver_version", "driver"),
    ("python", "python"),
)


def changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two ``recorded`` blocks, packages first: ``transformers 5.17.0 -> 5.24.0``, a model
    file's or the tokenizer's hash, the device... Fields one side lacks (not computed) are left out."""
    out: list[str] = []
    old_stack, new_stack = old.get("stack") or {}, new.get("stack") or {}
    old_pkgs, new_pkgs = old_stack.get("packages") or {}, new_stack.get("packages") or {}
    for name in dict.fromkeys([*old_pkgs, *new_pkgs]):
        a, b = old_pkgs.get(name), new_pkgs.get(name)
        if a != b:
            out.append(f"{name} {a or 'not installed'} -> {b or 'not installed'}")
    if old.get("pytest_infer") != new.get("pytest_infer") and new.get("pytest_infer"):
        out.append(f"pytest-infer {old.get('pytest_infer')} -> {new.get('pytest_infer')}")
    for name, label in _STACK_FIELDS:
        a, b = old_stack.get(name), new_stack.get(name)
        if a != b and name in old_stack and name in new_stack:
            out.append(f"{label} {a} -> {b}")
    old_files, new_files = (old.get("model") or {}).get("files"), (new.get("model") or {}).get("files")
    if isinstance(old_files, dict) and isinstance(new_files, dict):
        for name in dict.fromkeys([*old_files, *new_files]):
            a, b = old_files.get(name), new_files.get(name)
            if a != b:
                out.append(f"model file {name} {_short(a)} -> {_short(b)}")
    for name in ("tokenizer", "prompt_ids"):
        a, b = old.get(name), new.get(name)
        if a and b and a != b:
            out.append(f"{name.replace('_', ' ')} {_short(a)} -> {_short(b)}")
    return out


def _short(digest: Any) -> str:
    return "absent" if digest is None else str(digest)[:12]


def stale(golden: Golden, prompts_sha256: str, rows: int) -> str | None:
    """Why ``golden`` cannot be compared with this run at all (another prompt set), or None."""
    recorded = (golden.recorded.get("prompts") or {}).get("sha256")
    if recorded and recorded != prompts_sha256:
        return (
            f"golden {golden.path} was recorded on another prompt set (sha256 {_short(recorded)}, this run's "
            f"{_short(prompts_sha256)}): regenerate it for these prompts with --infer-golden-regen"
        )
    count = len(golden.logits.ids) if golden.logits else len(golden.generation.tokens) if golden.generation else 0
    if count != rows:
        return (
            f"golden {golden.path} holds {count} prompts, this run has {rows}: regenerate it with --infer-golden-regen"
        )
    return None


def describe_recorded(recorded: Mapping[str, Any], names: Sequence[str] = ("transformers", "torch")) -> str:
    """``2026-05-01 on transformers 5.17.0, torch 2.13.0``: when and on what a golden was recorded."""
    packages = (recorded.get("stack") or {}).get("packages") or {}
    versions = ", ".join(f"{n} {packages[n]}" for n in names if packages.get(n))
    date = str(recorded.get("date", "?"))[:10]
    return f"{date} on {versions}" if versions else date

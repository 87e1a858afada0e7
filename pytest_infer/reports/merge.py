"""Merge the JSON reports of several runners (an H100, an A10, a CPU job, ...) into one stack x technique
matrix, in Markdown and JSON: ``pytest-infer merge a.json b.json --markdown m.md --json m.json``.

A report holds the results of one run (one stack); each CI job writes its own. This module reads them
back, checks they are reports this version can read (same ``schema_version``), sums every case up
(technique x device x dtype: its checks, its speed, why it was skipped) and lays the cases out with one
column per stack, named by the stack's key (:meth:`pytest_infer.stack.Stack.key`, the same key that
separates the pytest-benchmark baselines). Nothing here imports torch: merging runs anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_infer.core.known_issues import CHECKS
from pytest_infer.core.stack import Stack
from pytest_infer.core.version import __version__
from pytest_infer.reports.document import SCHEMA_VERSION
from pytest_infer.reports.validate_input import InputError, read_json, validate_report

MERGED_KIND = "stack_matrix"
PARITY_CHECKS = ("logits", "padding", "generation")
# test id of a parametrized case: [<device without ':'>-<dtype>-<technique>] (session.Case.id)
_CASE_ID = re.compile(r"\[(?P<device>[a-z]+\d*)-(?P<dtype>float32|bfloat16|float16)-(?P<technique>[^\]]+)\]$")


class ReportError(Exception):
    """A report cannot be used; the message names the file and says what to do."""


class SchemaMismatch(ReportError):
    """A report was written with another schema version than this pytest-infer reads."""


def _version() -> str:

    return __version__


def read_report(path: str | Path) -> dict[str, Any]:
    """Load one JSON report (``--infer-report``); :class:`ReportError` names the file and what is wrong."""
    try:
        doc = read_json(path)
    except InputError as exc:
        raise ReportError(str(exc)) from None
    if not isinstance(doc, dict) or "schema_version" not in doc:
        raise ReportError(
            f"{path}: not a pytest-infer report (no schema_version); write one with `pytest --infer-report PATH`"
        )
    if doc.get("kind") == MERGED_KIND:
        raise ReportError(f"{path}: is a merged stack matrix, not a run report; merge the reports of the runs instead")
    return doc


def check_versions(documents: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Every report must have the schema version this pytest-infer reads (:data:`SCHEMA_VERSION`)."""
    for path, doc in documents:
        found = doc.get("schema_version")
        if found != SCHEMA_VERSION:
            agreeing = [p for p, d in documents if d.get("schema_version") == SCHEMA_VERSION]
            also = f"; {agreeing[0]} has version {SCHEMA_VERSION}" if agreeing else ""
            raise SchemaMismatch(
                f"{path}: report schema version {found!r} does not match version {SCHEMA_VERSION}, the one "
                f"pytest-infer {_version()} reads{also}. Merge reports written by the same pytest-infer version "
                "(re-run that job, or run the merge with the pytest-infer version that wrote the report)"
            )
    for path, doc in documents:
        try:
            validate_report(path, doc)
        except InputError as exc:
            raise ReportError(str(exc)) from None


def load_reports(paths: Iterable[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    documents = [(str(p), read_report(p)) for p in paths]
    check_versions(documents)
    return documents


# --- one report, summed up per case ---------------------------------------------------------------------
def device_id(device: str) -> str:
    """``cuda:0`` -> ``cuda0``: the form of test ids, so results and test outcomes meet."""
    return device.replace(":", "")


def device_from_id(text: str) -> str:
    """``cuda0`` -> ``cuda:0`` (the device a test id names), ``cpu`` -> ``cpu``."""
    match = re.fullmatch(r"([a-z]+)(\d+)", text)
    return f"{match[1]}:{match[2]}" if match else text


def check_of_test(nodeid: str) -> str | None:
    """The check a bundled suite test runs (``test_logit_parity`` -> ``logits``), None for other tests."""

    name = nodeid.rsplit("::", 1)[-1].split("[", 1)[0]
    return {**CHECKS, "test_decode_speed": "speed"}.get(name)


@dataclass
class CaseSummary:
    """Everything a report says about one technique on one device in one dtype."""

    technique: str
    device: str
    dtype: str
    results: list[Mapping[str, Any]] = field(default_factory=list)
    tests: list[Mapping[str, Any]] = field(default_factory=list)

    def _excused(self) -> set[str]:
        """Checks whose failure is a known upstream defect (their test xfailed)."""
        return {c for t in self.tests if t.get("outcome") == "xfailed" and (c := check_of_test(t["nodeid"]))}

    def checks(self) -> dict[str, str]:
        """check -> pass / fail / xfail, from the recorded results."""
        out: dict[str, str] = {}
        excused = self._excused()
        for r in self.results:
            check = str(r.get("check", r.get("kind", "?")))
            verdict = "pass" if r.get("passed") else "xfail" if check in excused else "fail"
            if out.get(check) in (None, "pass") or verdict == "fail":
                out[check] = verdict
        return out

    def failed_tests(self) -> list[str]:
        return [t["nodeid"] for t in self.tests if t.get("outcome") in ("failed", "xpassed", "error")]

    def status(self) -> str:
        """pass, fail, xfail, skip, or not run."""
        checks = self.checks()
        if "fail" in checks.values() or self.failed_tests():
            return "fail"
        if "pass" in checks.values():
            return "pass"
        outcomes = {t.get("outcome") for t in self.tests}
        if "xfailed" in outcomes or "xfail" in checks.values():
            return "xfail"
        if "passed" in outcomes:
            return "pass"
        if "skipped" in outcomes:
            return "skip"
        return "not run"

    def skip_reason(self) -> str | None:
        reasons = [t.get("reason", "") for t in self.tests if t.get("outcome") == "skipped"]
        reason = next((r for r in reasons if r), None)
        return None if reason is None else reason.removeprefix(f"{self.technique}: ")

    def parity(self) -> str | None:
        """pass / fail over the parity checks (logits, padding, generation); None when none ran."""
        verdicts = [v for c, v in self.checks().items() if c in PARITY_CHECKS]
        if not verdicts:
            return None
        return "pass" if all(v == "pass" for v in verdicts) else "fail"

    def speed(self) -> dict[str, Any] | None:
        """The decode speed result (else the last timed one): speedup with its interval, and the memory ratio
        (peak where measured, else weights; from any scenario of the case that has it)."""
        runs = [r for r in self.results if r.get("check") == "speed"]
        timed = [r for r in runs if "speedup" in r.get("metrics", {})]
        if not timed:
            return None
        r = next((t for t in timed if t.get("scenario_key", "decode") == "decode"), timed[-1])
        m = dict(r.get("metrics", {}))
        for other in runs:  # e.g. the memory scenario measures peak memory, the decode one speed
            for key in ("peak_memory_ratio", "weight_memory_ratio"):
                m.setdefault(key, other.get("metrics", {}).get(key))
        metric = "peak_memory_ratio" if m.get("peak_memory_ratio") is not None else "weight_memory_ratio"
        return {
            "speedup": m.get("speedup"),
            "speedup_low": m.get("speedup_low"),
            "speedup_high": m.get("speedup_high"),
            "memory_ratio": m.get(metric),
            "memory_metric": metric,
            "verdict": r.get("verdict", "pass" if r.get("passed") else "fail"),
            "baseline": r.get("baseline"),
            "scenario": r.get("variant") or r.get("scenario"),
        }


def case_summaries(document: Mapping[str, Any]) -> dict[tuple[str, str, str], CaseSummary]:
    """(technique, device id, dtype) -> :class:`CaseSummary`, in the order the report first mentions them.
    Tests that are not parametrized by a case (a repository's own helpers) are left out."""
    cases: dict[tuple[str, str, str], CaseSummary] = {}

    def case(technique: str, device: str, dtype: str) -> CaseSummary:
        key = (technique, device_id(device), dtype)
        if key not in cases:
            cases[key] = CaseSummary(technique, device, dtype)
        return cases[key]

    for r in document.get("results", []):
        case(str(r.get("technique", "?")), str(r.get("device", "?")), str(r.get("dtype", "?"))).results.append(r)
    for t in document.get("tests", []):
        match = _CASE_ID.search(str(t.get("nodeid", "")))
        if match:
            case(match["technique"], device_from_id(match["device"]), match["dtype"]).tests.append(t)
    return cases


def stack_key(stack: Mapping[str, Any], device: str, fallback: str) -> str:
    """The key of the stack ``device`` ran on: a report's stack is that of its first device; a result on the
    host's cpu in a GPU run belongs to the host's cpu stack."""
    if stack.get("key"):
        return str(stack["key"])

    try:
        return Stack.from_dict(stack).for_device(device).key()
    except (TypeError, ValueError):
        return fallback


def header_for(stack: Mapping[str, Any], device: str) -> str:

    try:
        return Stack.from_dict(stack).for_device(device).header_line().removeprefix("infer stack: ")
    except (TypeError, ValueError):
        return "(stack not recorded)"


# --- many reports: the matrix -----------------------------------------------------------------------------
def _cell(case: CaseSummary, sources: list[str]) -> dict[str, Any]:
    return {
        "status": case.status(),
        "checks": case.checks(),
        "failed_tests": case.failed_tests(),
        "speed": case.speed(),
        "reason": case.skip_reason() if case.status() == "skip" else None,
        "sources": sources,
    }


def merge_reports(documents: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """One stack x technique document from ``(path, report)`` pairs (see docs/reports.md for its shape).
    Reports of the same stack (say, a parity job and a perf job on one runner) share a column."""
    stacks: dict[str, dict[str, Any]] = {}
    merged: dict[tuple[str, str, str], tuple[CaseSummary, list[str]]] = {}  # (technique, dtype, stack key)
    for path, doc in documents:
        stack = doc.get("stack", {})
        for summary in case_summaries(doc).values():
            key = stack_key(stack, summary.device, fallback=Path(path).stem)
            column = stacks.setdefault(key, {"key": key, "header": header_for(stack, summary.device), "sources": []})
            if path not in column["sources"]:
                column["sources"].append(path)
            slot = (summary.technique, summary.dtype, key)
            if slot not in merged:
                merged[slot] = (CaseSummary(summary.technique, summary.device, summary.dtype), [])
            target, sources = merged[slot]
            target.results.extend(summary.results)
            target.tests.extend(summary.tests)
            if path not in sources:
                sources.append(path)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for (technique, dtype, key), (summary, sources) in merged.items():
        row = rows.setdefault((technique, dtype), {"technique": technique, "dtype": dtype, "cells": {}})
        row["cells"][key] = _cell(summary, sources)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": MERGED_KIND,
        "tool": {"pytest-infer": _version()},
        "sources": [path for path, _ in documents],
        "stacks": list(stacks.values()),
        "rows": list(rows.values()),
    }


def cell_text(cell: Mapping[str, Any] | None) -> str:
    """A matrix cell: the verdict, the failing checks, the speedup when measured."""
    if cell is None:
        return "–"
    status = cell["status"]
    text = {"pass": "pass", "fail": "FAIL", "xfail": "xfail", "skip": "skip", "not run": "–"}[status]
    if status == "fail":
        failed = [c for c, v in cell.get("checks", {}).items() if v == "fail"]
        text += f" {','.join(failed)}" if failed else " (error)"
    speed = cell.get("speed")
    if speed and isinstance(speed.get("speedup"), (int, float)):
        text += f" {speed['speedup']:.2f}x"
        if isinstance(speed.get("memory_ratio"), (int, float)):
            text += f" mem {speed['memory_ratio']:.2f}"
    return text


def merged_markdown(merged: Mapping[str, Any]) -> str:
    """The merged matrix as Markdown: one row per technique and dtype, one column per stack, then the
    stacks behind the column keys and the reasons of every skip."""
    keys = [s["key"] for s in merged["stacks"]]
    out = ["## pytest-infer: stack x technique", ""]
    if not merged["rows"]:
        return "\n".join([*out, "No technique results in these reports.", ""])
    out.append("| technique | dtype | " + " | ".join(f"`{k}`" for k in keys) + " |")
    out.append("|---|---|" + "---|" * len(keys))
    skips: list[str] = []
    for row in merged["rows"]:
        cells = [row["cells"].get(k) for k in keys]
        out.append(f"| {row['technique']} | {row['dtype']} | " + " | ".join(cell_text(c) for c in cells) + " |")
        for key, cell in zip(keys, cells, strict=True):
            if cell is not None and cell["status"] == "skip" and cell.get("reason"):
                skips.append(f"- {row['technique']} ({row['dtype']}) on `{key}`: {cell['reason']}")
    out += ["", "Stacks:", ""]
    out += [f"- `{s['key']}`: {s['header']} (from {', '.join(s['sources'])})" for s in merged["stacks"]]
    if skips:
        out += ["", "Skipped:", "", *skips]
    return "\n".join(out) + "\n"

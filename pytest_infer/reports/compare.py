"""Compare two runs: ``pytest-infer compare OLD NEW`` over two JSON reports (or two folders of them).

Reports are paired by stack class (the hardware: :meth:`pytest_infer.core.stack.Stack.stack_class`), so a run of
the last release and one of the candidate on the same GPU meet even though their stack keys (which carry torch and
transformers) differ. For each stack class, technique and dtype it lists: the tests newly failing, newly passing and
newly skipped; each speed result's change with its 95 % interval; each memory ratio's change; and every metric of
every check (parity, golden, cache...) whose value moved, old and new. A regression is a test newly failing, a
speedup whose change lies wholly below ``-threshold`` (its interval, not its point estimate), or a memory ratio
grown past ``+threshold``. Nothing here imports torch or pytest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_infer.core.stack import Stack
from pytest_infer.core.version import __version__
from pytest_infer.reports.merge import ReportError, case_summaries, check_versions, read_report, stack_key

FAILED = ("failed", "error", "xpassed")
# a bundled suite's test wherever the suites folder was (a checkout, a venv's site-packages): test_parity.py::...
_SUITE_PATH = re.compile(r"^(?:.*/)?suites/(?=test_\w+\.py::)")
MEMORY_METRICS = ("peak_memory_ratio", "weight_memory_ratio", "peak_rss_ratio", "kv_memory_ratio")


def load_side(path: str) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The run reports of ``path`` (a report, or a folder searched recursively) and the files left out (not run
    reports: a merged matrix, another tool's JSON)."""
    p = Path(path)
    if not p.exists():
        raise ReportError(f"{path}: no such file or folder")
    if not p.is_dir():
        return [(str(p), read_report(p))], []
    found, skipped = [], []
    for file in sorted(p.rglob("*.json")):
        try:
            found.append((str(file), read_report(file)))
        except ReportError as exc:
            skipped.append(str(exc))
    if not found:
        raise ReportError(f"{path}: no pytest-infer run report in this folder (write them with --infer-report PATH)")
    return found, skipped


def _class_of(stack: Mapping[str, Any], device: str, fallback: str) -> str:
    try:
        return Stack.from_dict(stack).for_device(device).stack_class()
    except (TypeError, ValueError):
        return fallback


@dataclass
class Side:
    """One side of the comparison: per stack class, its stack keys, results and test outcomes."""

    keys: dict[str, set[str]] = field(default_factory=dict)  # stack class -> stack keys
    results: dict[tuple[str, str, str], list[Mapping[str, Any]]] = field(default_factory=dict)  # (class, tech, dtype)
    tests: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)  # (class, nodeid) -> outcome
    cases: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # (class, nodeid) -> (tech, dtype)


def match_id(nodeid: str) -> str:
    """The id a test is matched by across runs: a bundled suite's path prefix (where pytest-infer was installed,
    which two releases' environments do not share) is dropped."""
    return _SUITE_PATH.sub("", nodeid)


def collect(documents: Sequence[tuple[str, Mapping[str, Any]]]) -> Side:
    side = Side()
    for path, doc in documents:
        stack = doc.get("stack", {})
        default_device = str(stack.get("device_kind") or "cpu")
        for summary in case_summaries(doc).values():
            cls = _class_of(stack, summary.device, Path(path).stem)
            side.keys.setdefault(cls, set()).add(stack_key(stack, summary.device, Path(path).stem))
            side.results.setdefault((cls, summary.technique, summary.dtype), []).extend(summary.results)
            for t in summary.tests:
                side.tests[(cls, match_id(str(t["nodeid"])))] = t
                side.cases[(cls, match_id(str(t["nodeid"])))] = (summary.technique, summary.dtype)
        cls = _class_of(stack, default_device, Path(path).stem)
        for t in doc.get("tests", []):  # a repository's own tests, not parametrized by a case
            side.tests.setdefault((cls, match_id(str(t.get("nodeid")))), t)
    return side


@dataclass
class Comparison:
    old: list[str]
    new: list[str]
    threshold: float
    stacks: list[dict[str, Any]] = field(default_factory=list)
    regressions: list[dict[str, Any]] = field(default_factory=list)
    improvements: list[dict[str, Any]] = field(default_factory=list)
    newly_passing: list[dict[str, Any]] = field(default_factory=list)
    newly_skipped: list[dict[str, Any]] = field(default_factory=list)
    perf: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "comparison", "tool": {"pytest-infer": __version__}, **self.__dict__}


def compare_reports(
    old: Sequence[tuple[str, Mapping[str, Any]]], new: Sequence[tuple[str, Mapping[str, Any]]], threshold: float
) -> Comparison:
    """Everything that changed from ``old`` to ``new`` (see the module docstring); ``threshold`` is a fraction."""
    check_versions([*old, *new])
    a, b = collect(old), collect(new)
    out = Comparison([p for p, _ in old], [p for p, _ in new], threshold)
    for cls in dict.fromkeys([*a.keys, *b.keys]):
        out.stacks.append({"class": cls, "old": sorted(a.keys.get(cls, ())), "new": sorted(b.keys.get(cls, ()))})
        if cls not in a.keys or cls not in b.keys:
            out.notes.append(f"`{cls}` is only in the {'new' if cls in b.keys else 'old'} reports: not compared")
    shared = {cls for cls in a.keys if cls in b.keys}
    _tests(a, b, shared, out)
    for slot in dict.fromkeys([*a.results, *b.results]):
        if slot[0] in shared:
            _results(slot, a.results.get(slot, []), b.results.get(slot, []), out)
    return out


def _tests(a: Side, b: Side, shared: set[str], out: Comparison) -> None:
    for key in dict.fromkeys([*a.tests, *b.tests]):
        cls, nodeid = key
        if cls not in shared:
            continue
        was = str(a.tests.get(key, {}).get("outcome", "absent"))
        now = str(b.tests.get(key, {}).get("outcome", "absent"))
        technique, dtype = b.cases.get(key) or a.cases.get(key) or ("", "")
        entry = {"class": cls, "nodeid": nodeid, "technique": technique, "dtype": dtype, "old": was, "new": now}
        if now in FAILED and was not in FAILED:
            out.regressions.append({**entry, "what": "test", "text": f"{nodeid}: {was} -> {now}"})
        elif was in FAILED and now == "passed":
            out.newly_passing.append(entry)
        elif now == "skipped" and was not in ("skipped", "absent"):
            out.newly_skipped.append({**entry, "reason": b.tests[key].get("reason", "")})


def _by_check(results: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(str(r.get("check", r.get("kind"))), str(r.get("variant", ""))): r for r in results}


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _results(
    slot: tuple[str, str, str], old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], out: Comparison
) -> None:
    cls, technique, dtype = slot
    before, after = _by_check(old), _by_check(new)
    for check, variant in after.keys() & before.keys():
        r0, r1 = before[check, variant], after[check, variant]
        m0, m1 = r0.get("metrics") or {}, r1.get("metrics") or {}
        where = {"class": cls, "technique": technique, "dtype": dtype, "check": check, "variant": variant}
        for metric in dict.fromkeys([*m0, *m1]):
            x, y = _number(m0.get(metric)), _number(m1.get(metric))
            if x is None or y is None or x == y:
                continue
            rel = (y - x) / abs(x) if x else math.inf
            out.metrics.append({**where, "metric": metric, "old": x, "new": y, "delta": y - x, "relative": rel})
        if check == "speed":
            _speed(where, m0, m1, out)


def _speed(where: dict[str, Any], m0: Mapping[str, Any], m1: Mapping[str, Any], out: Comparison) -> None:
    """A speed result's change, decided on its intervals; memory ratios against the threshold."""
    t = out.threshold
    row: dict[str, Any] = {**where}
    s0, s1 = _number(m0.get("speedup")), _number(m1.get("speedup"))
    if s0 and s1:
        lo0, hi0 = _number(m0.get("speedup_low")) or s0, _number(m0.get("speedup_high")) or s0
        lo1, hi1 = _number(m1.get("speedup_low")) or s1, _number(m1.get("speedup_high")) or s1
        low, high = lo1 / hi0, hi1 / lo0  # the change's interval: the two intervals' extremes
        verdict = "slower" if high < 1 - t else "faster" if low > 1 + t else "within noise"
        if verdict == "within noise" and abs(s1 / s0 - 1) > t:
            verdict = "inconclusive"
        row.update(old=[s0, lo0, hi0], new=[s1, lo1, hi1], change=[s1 / s0, low, high], verdict=verdict)
        text = (
            f"{where['variant']}: speedup {s0:.3g}x [{lo0:.3g}, {hi0:.3g}] -> {s1:.3g}x [{lo1:.3g}, {hi1:.3g}] "
            f"(x{s1 / s0:.3f} [{low:.3f}, {high:.3f}])"
        )
        if verdict == "slower":
            out.regressions.append({**where, "what": "speed", "text": f"{text}, slower beyond {t:.0%}"})
        elif verdict == "faster":
            out.improvements.append({**where, "what": "speed", "text": text})
    memory = {}
    for metric in MEMORY_METRICS:
        x, y = _number(m0.get(metric)), _number(m1.get(metric))
        if x and y:
            memory[metric] = [x, y]
            if y > x * (1 + t):
                text = f"{where['variant']}: {metric} {x:.3g} -> {y:.3g} (+{y / x - 1:.1%}, beyond {t:.0%})"
                out.regressions.append({**where, "what": "memory", "text": text})
    if memory:
        row["memory"] = memory
    if len(row) > len(where):
        out.perf.append(row)


# --- Markdown ---------------------------------------------------------------------------------------------------
def _md(text: Any) -> str:
    """A table cell: ``paged|sdpa`` would end the cell at its ``|``."""
    return str(text).replace("|", "\\|")


def _case(e: Mapping[str, Any]) -> str:
    what = f"{e['technique']} ({e['dtype']})" if e.get("technique") else ""
    return f"`{e['class']}` {what}".rstrip()


def _v(x: float) -> str:
    return f"{x:.4g}"


def comparison_markdown(c: Comparison) -> str:
    """The comparison for a CI job summary: the verdict, what regressed, what passes or is skipped anew, speed and
    memory, then every metric that moved (folded)."""
    out = ["## pytest-infer compare", "", f"{', '.join(c.old)} → {', '.join(c.new)}", ""]
    out += ["| stack class | old stack | new stack |", "|---|---|---|"]
    out += [f"| `{s['class']}` | {', '.join(s['old']) or '–'} | {', '.join(s['new']) or '–'} |" for s in c.stacks]
    out.append("")
    n = len(c.regressions)
    out.append(
        f"**{n} regression{'s' * (n != 1)}** (tests newly failing, speed or memory beyond {c.threshold:.0%})"
        if n
        else f"**No regression** (no test newly failing, no speed or memory change beyond {c.threshold:.0%})"
    )
    out.append("")
    out += [f"- {note}" for note in c.notes]
    sections = (
        ("Regressions", c.regressions, lambda e: f"- {_case(e)}: {e['text']}"),
        ("Improvements", c.improvements, lambda e: f"- {_case(e)}: {e['text']}"),
        ("Newly passing", c.newly_passing, lambda e: f"- {_case(e)}: `{e['nodeid']}` ({e['old']} -> passed)"),
        ("Newly skipped", c.newly_skipped, lambda e: f"- {_case(e)}: `{e['nodeid']}`: {e['reason']}"),
    )
    for title, entries, line in sections:
        if entries:
            out += ["", f"### {title}", "", *(line(e) for e in entries)]
    speeds = [p for p in c.perf if "change" in p]
    if speeds:
        out += ["", "### Speed (paired ratio vs the baseline, 95 % intervals)", ""]
        out += ["| stack class | technique | dtype | scenario | old | new | change | verdict |", "|---" * 8 + "|"]
        for p in speeds:
            (s0, lo0, hi0), (s1, lo1, hi1), (r, lo, hi) = p["old"], p["new"], p["change"]
            out.append(
                f"| `{p['class']}` | {_md(p['technique'])} | {p['dtype']} | {_md(p['variant'])} | {s0:.3g}x [{lo0:.3g}, {hi0:.3g}] "
                f"| {s1:.3g}x [{lo1:.3g}, {hi1:.3g}] | x{r:.3f} [{lo:.3f}, {hi:.3f}] | {p['verdict']} |"
            )
    memory = [p for p in c.perf if "memory" in p]
    if memory:
        out += ["", "### Memory ratios", "", "| stack class | technique | dtype | scenario | metric | old | new |"]
        out.append("|---" * 7 + "|")
        for p in memory:
            for metric, (x, y) in p["memory"].items():
                out.append(
                    f"| `{p['class']}` | {_md(p['technique'])} | {p['dtype']} | {_md(p['variant'])} | {metric} | {x:.3g} | {y:.3g} |"
                )
    if c.metrics:
        out += ["", f"<details><summary>{len(c.metrics)} metric values that moved</summary>", ""]
        out += ["| stack class | technique | dtype | check | variant | metric | old | new | delta |", "|---" * 9 + "|"]
        for m in c.metrics:
            out.append(
                f"| `{m['class']}` | {_md(m['technique'])} | {m['dtype']} | {m['check']} | {_md(m['variant'])} | {m['metric']} "
                f"| {_v(m['old'])} | {_v(m['new'])} | {m['delta']:+.3g} |"
            )
        out += ["", "</details>"]
    return "\n".join(out) + "\n"


def parse_threshold(text: str) -> float:
    """``5%`` or ``5`` -> 0.05; a ValueError says what is accepted."""
    value = text.strip().removesuffix("%")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"threshold {text!r}: expected a percentage such as 5% or 10") from None
    if not 0 <= number < 100:
        raise ValueError(f"threshold {text!r}: must be between 0% and 100%")
    return number / 100

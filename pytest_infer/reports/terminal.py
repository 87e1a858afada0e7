"""Reports built from result dictionaries: the terminal summary (technique x check per device/dtype)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pytest_infer.core.model_facts import ModelFacts
from pytest_infer.perf.result import perf_headline
from pytest_infer.techniques.applicability import model_reason

CHECK_COLUMNS = (
    "logits",
    "padding",
    "generation",
    "kernel",
    "quality",
    "golden",
    "ranks",
    "batching",
    "storage",
    "inference_mode",
    "cache",
    "speed",
    "invariance",
    "sampling",
    "memory_stability",
)
HEADERS = {"inference_mode": "inf-mode", "memory_stability": "memory"}  # column titles where the check name is long


def _cell(results: list[Mapping[str, Any]]) -> str:
    if not results:
        return "-"
    passed = sum(bool(r.get("passed")) for r in results)
    verdict = "pass" if passed == len(results) else "FAIL"
    if verdict == "pass" and all(r.get("same_as_reference") for r in results):
        return "= ref"  # the reference compared with itself: nothing was tested
    if results[0].get("check") == "speed":
        # every perf scenario of the technique: the worst verdict, and the decode speedup (else the first one)
        verdicts = {r.get("verdict", "") for r in results}
        verdict = "FAIL" if "fail" in verdicts else "?" if verdicts - {"pass"} else "pass"
        timed = [r for r in results if "speedup" in r.get("metrics", {})]
        shown = next((r for r in timed if r.get("scenario_key", "decode") == "decode"), timed[0] if timed else None)
        return f"{verdict} {shown['metrics']['speedup']:.2f}x" if shown else verdict
    if results[0].get("check") == "recompile":
        return ""
    if results[0].get("check") == "golden":
        return _golden_cell(results, verdict)
    if results[0].get("check") == "kernel":
        # a lossy technique against its own format: the worst relative error, as a share of its bound
        worst = max(r.get("metrics", {}).get("max_relative_error", float("nan")) for r in results)
        return f"{verdict} {worst:.2g}"
    if results[0].get("check") == "quality":
        return _quality_cell(results)
    if results[0].get("check") == "sampling":
        if any(r.get("inconclusive") for r in results) and verdict == "pass":
            return "? greedy"  # every draw took the top token: the random stream was never tested
        m = results[0].get("metrics", {})
        compared = results[0].get("versus_reference") is not None
        return f"{verdict} {int(m.get('departures', 0))}/{int(m.get('draws', 0))}" + ("" if compared else " self")
    if results[0].get("check") == "memory_stability":
        # the larger growth per call of host RSS and device memory (KiB)
        keys = ("host_growth_per_call", "device_growth_per_call")
        slopes = [float(r["metrics"][k]) for r in results for k in keys if r["metrics"].get(k) is not None]
        return f"{verdict} {max(slopes, default=0.0) / 1024:+.0f}K/call"
    if results[0].get("check") == "ranks":
        return f"{verdict} {int(sum(r['metrics']['disagreements'] for r in results))} diff"
    if results[0].get("check") == "cache":
        ratio = next(
            (r["metrics"]["kv_memory_ratio"] for r in results if "kv_memory_ratio" in r.get("metrics", {})), None
        )
        return f"{verdict} {len(results)}/3" + (f" kv {ratio:.2f}x" if ratio is not None else "")
    if results[0].get("check") == "storage":
        return f"{verdict} {results[-1].get('metrics', {}).get('weight_memory_ratio', float('nan')):.3f}x"
    if results[0].get("check") == "generation" and any(r.get("min_greedy") is not None for r in results):
        agreement = min(r.get("metrics", {}).get("greedy_agreement", float("nan")) for r in results)
        return f"{verdict} agree {agreement:.2f}"  # lossy technique: share of greedy tokens agreeing
    if results[0].get("check") in ("generation", "batching"):
        matched = sum(r.get("metrics", {}).get("matched_tokens", 0) for r in results)
        total = sum(r.get("new_tokens", 0) * len(r.get("rows", [])) for r in results)
        return f"{verdict} {int(matched)}/{total} tok"
    worst = max(r.get("metrics", {}).get("max_abs", float("nan")) for r in results)
    suffix = f" {passed}/{len(results)}" if len(results) > 1 else ""
    return f"{verdict} {worst:.2g}{suffix}"


def _quality_cell(results: list[Mapping[str, Any]]) -> str:
    """The worst verdict and perplexity ratio (with its interval's upper end) of a lossy technique's quality runs."""
    verdicts = {str(r.get("verdict", "pass" if r.get("passed") else "fail")) for r in results}
    verdict = "FAIL" if "fail" in verdicts else "?" if verdicts - {"pass"} else "pass"
    ratios = [r["metrics"] for r in results if "perplexity_ratio" in r.get("metrics", {})]
    if not ratios:
        return verdict
    worst = max(ratios, key=lambda m: m["perplexity_ratio"])
    high = worst.get("perplexity_ratio_high")
    return f"{verdict} ppl {worst['perplexity_ratio']:.3f}x" + (f" (<{high:.3f})" if high is not None else "")


def _golden_cell(results: list[Mapping[str, Any]], verdict: str) -> str:
    """fail/pass with the worst log-probability move, or what was written (rec, rewrote, kept)."""
    statuses = [str(r.get("status")) for r in results]
    moves = [r["metrics"]["max_abs"] for r in results if "max_abs" in r.get("metrics", {})]
    worst = f" {max(moves):.2g}" if moves else ""
    if verdict == "FAIL":
        return f"FAIL{' stale' if 'stale' in statuses else worst}"
    for status, word in (("rewritten", "rewrote"), ("recorded", "rec"), ("kept", "kept")):
        if status in statuses:
            return word
    return f"pass{worst}"


def golden_summary_lines(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """What regeneration or recording wrote: one line per golden written (with what changed), the count kept."""
    golden = [r for r in results if r.get("kind") == "golden"]
    lines, kept, total = [], 0, 0
    for r in golden:
        who = f"{'reference ' if r.get('is_reference') else ''}{r.get('technique')} {r.get('variant')} ({r.get('dtype')}, {r.get('device')})"
        status = r.get("status")
        total += int(r.get("written_bytes") or 0)
        if status == "recorded":
            lines.append(f"recorded {who}: {r.get('path')} ({r.get('written_bytes')} bytes)")
        elif status == "rewritten":
            before: dict[Any, str] = {True: "it had moved: ", False: "within the bound: "}
            was = before.get(r.get("drifted"), "") + str(r.get("detail") or "")
            what = "; ".join(r.get("changes") or []) or "no recorded version or file changed"
            lines.append(f"REWROTE  {who}: {r.get('path')}\n         before: {was}\n         since: {what}")
        elif status == "kept":
            kept += 1
    if kept:
        lines.append(f"kept {kept} golden(s) unchanged (same values and record)")
    if total:
        lines.append(f"{total / 1024:.1f} KiB written")
    return [part for line in lines for part in line.split("\n")]


def terminal_summary(results: Sequence[Mapping[str, Any]], verbose: bool = False) -> tuple[str, list[str]]:
    """The terminal's section title and matrix. A run of one device and one dtype names them in the title
    and leaves their columns out (so the default parity suite fits 100 columns); ``-v`` keeps every column."""
    title = "pytest-infer: technique x check"
    combos = {(r.get("device", "?"), r.get("dtype", "?")) for r in results}
    if verbose or len(combos) != 1:
        return title, summary_lines(results)
    (device, dtype), cut = next(iter(combos)), len(f"{'device':<7} {'dtype':<9} ")
    return f"{title} ({device}, {dtype})", [line[cut:] for line in summary_lines(results)]


def summary_lines(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """One row per (device, dtype, technique), one column per check: verdict and key figure
    (logits/padding: worst max_abs; generation: tokens matched before any accepted near-tie, or for lossy
    techniques the lowest greedy agreement; storage: weight bytes vs the reference)."""
    groups: dict[tuple[str, str, str], dict[str, list[Mapping[str, Any]]]] = {}
    for r in results:
        key = (r.get("device", "?"), r.get("dtype", "?"), r.get("technique", "?"))
        groups.setdefault(key, {}).setdefault(r.get("check", r.get("kind", "?")), []).append(r)
    if not groups:
        return []
    width = max(len("technique"), *(len(k[2]) for k in groups)) + 2
    columns = [c for c in CHECK_COLUMNS if any(c in checks for checks in groups.values())]
    cells = {key: [_cell(checks.get(c, [])) for c in columns] for key, checks in groups.items()}
    widths = [max(len(HEADERS.get(c, c)), *(len(row[i]) for row in cells.values())) + 2 for i, c in enumerate(columns)]
    lines = [
        (
            f"{'device':<7} {'dtype':<9} {'technique':<{width}}"
            + "".join(f"{HEADERS.get(c, c):<{w}}" for c, w in zip(columns, widths, strict=True))
        ).rstrip()
    ]
    for (device, dtype, technique), row in cells.items():
        text = "".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True))
        lines.append(f"{device:<7} {dtype:<9} {technique:<{width}}{text}".rstrip())
    return lines


def catalogue_lines(
    techniques: Iterable[Any], stack: Any, dtype: str, *, strict: bool = False, facts: ModelFacts | None = None
) -> list[str]:
    """Every technique with, for ``stack``, ``dtype`` and the model ``facts`` describe, "runnable" or the reason it
    would be skipped."""
    lines = []
    for t in techniques:
        reason = t.skip_reason(stack, dtype, strict=strict) or model_reason(t, facts, stack)
        lines.append(f"  {t.name:<32} {t.family:<12} {'runnable' if reason is None else 'skip: ' + reason}")
    return lines


# --- terminal --------------------------------------------------------------------------------------
def perf_summary_lines(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per perf result (verdict, technique, scenario, figures), then each distinct note once."""
    perf = [r for r in results if r.get("kind") == "performance"]
    lines = []
    for r in perf:
        verdict = {"pass": "pass", "fail": "FAIL", "inconclusive": "?"}.get(str(r.get("verdict")), "?")
        headline = perf_headline(
            str(r.get("scenario_key", "decode")),
            r.get("metrics", {}),
            str(r.get("baseline")),
            int(r.get("rounds", 0)),
            int(r.get("calls", 1)),
        )
        lines.append(
            f"{verdict:<4} {r.get('technique')} | {r.get('scenario')} ({r.get('dtype')}, {r.get('device')}): {headline}"
        )
    notes = dict.fromkeys(str(n) for r in perf for n in r.get("notes", []) or [])
    lines.extend(f"NOTE: {n}" for n in notes)
    return lines

"""Proof that the perf suite's regression gates catch a planted regression and stay quiet on unchanged reruns.

    python scripts/perf_regression_proof.py                 # baseline, 5 unchanged reruns, slower, heavier
    python scripts/perf_regression_proof.py --reruns 20     # more unchanged reruns: the false-positive rate
    python scripts/perf_regression_proof.py --wall          # the same gates on wall time (noisier)
    python scripts/perf_regression_proof.py --json out.json # the observations as JSON too

Every run is a fresh ``pytest -p pytest_infer --infer-suite perf`` session on the embedded model, in one temporary
folder whose ``conftest.py`` registers the technique ``planted`` (sdpa attention, measured against ``sdpa``):

1. a baseline is stored with ``--benchmark-save=baseline`` (pytest-benchmark storage in the temporary folder);
2. the unchanged suite reruns ``--reruns`` times against it with ``--benchmark-compare=0001``,
   ``--benchmark-compare-fail=median:M%`` and ``--infer-compare-fail=cpu_speedup:S%,load.cpu_speedup:L%,
   weight_bytes:W%``: none may flag anything;
3. ``PLANTED_SLOWDOWN=0.15`` makes every call of the technique cost 15 % more CPU time: the decode test must be
   flagged, by name;
4. ``PLANTED_EXTRA_MEMORY=0.20`` gives the model a buffer of 20 % of its weight bytes: the tests reporting weight
   bytes (decode, memory) must be flagged, by name.

The timing rule that decides is ours, on ``cpu_speedup``: the candidate against the baseline measured in the same
session, in paired rounds, on process CPU time, which does not grow while the process waits for a core. pytest-
benchmark's ``median`` rule compares one session's absolute times with another's (here on
``--benchmark-timer=time.process_time``), so on a shared machine its threshold must be wide. For every run the
script prints, per test, how far the median, the speedup and the CPU-time speedup moved from the stored run
(positive: worse); the unchanged reruns are the observed noise. Exit status 0 when every expectation holds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLANTED_CONFTEST = '''
"""The technique ``planted``: sdpa attention whose cost the environment sets, so that one conftest runs as
"before" and "after" a regression. PLANTED_SLOWDOWN=0.15: every call under the technique's context then spins
until the process has used 15 % more CPU time than the call took (a busy wait on the CPU clock: exactly 15 % more
work whatever else the machine runs, where a sleep or a wall-clock wait would not be); PLANTED_EXTRA_MEMORY=0.20:
the loaded model gets a buffer of 20 % of its weight bytes."""
import contextlib
import os
import time

import torch

from pytest_infer import Technique
from pytest_infer.runtime.memory import weight_bytes


@contextlib.contextmanager
def slower():
    fraction = float(os.environ.get("PLANTED_SLOWDOWN", "0"))
    start = time.process_time()
    yield
    if fraction:
        now = time.process_time()
        until = now + fraction * (now - start)
        while time.process_time() < until:
            pass


def heavier(model):
    fraction = float(os.environ.get("PLANTED_EXTRA_MEMORY", "0"))
    if fraction:
        device = next(model.parameters()).device
        model.register_buffer("planted_ballast", torch.zeros(int(fraction * weight_bytes(model)) // 4, device=device))
    return model


def pytest_infer_register_techniques(registry):
    registry.add(
        Technique(
            name="planted",
            family="custom",
            load_kwargs={"attn_implementation": "sdpa"},
            context=slower,
            prepare=heavier,
        )
    )
'''

SUITE = ("--infer-suite", "perf", "--infer-technique", "planted", "--infer-baseline", "sdpa")
# pytest-benchmark's own report of a failed --benchmark-compare-fail check
BENCH_REGRESSION = re.compile(
    r"^\s*(?P<name>test_\S+) \((?P<source>[^)]*)\) - Field '(?P<field>\w+)' has failed (?P<text>.+)$"
)


@dataclass
class Run:
    label: str
    returncode: int
    seconds: float
    ours: list[tuple[str, str]] = field(default_factory=list)  # (test, our regression text)
    theirs: list[tuple[str, str]] = field(default_factory=list)  # (test, pytest-benchmark's failed check)
    moved: dict[str, dict[str, float]] = field(default_factory=dict)  # test -> {median %, speedup %} vs stored
    tail: str = ""

    @property
    def flagged(self) -> list[str]:
        return sorted({t for t, _ in self.ours} | {t for t, _ in self.theirs})

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "returncode": self.returncode,
            "seconds": round(self.seconds, 1),
            "ours": self.ours,
            "theirs": self.theirs,
            "flagged": self.flagged,
            "moved": self.moved,
        }


def pytest_command(folder: Path, storage: Path, rounds: int, report: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "pytest_infer",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rf",
        f"--rootdir={folder}",
        *SUITE,
        f"--infer-perf-rounds={rounds}",
        f"--benchmark-storage=file://{storage}",
        f"--benchmark-json={report}",
        *extra,
    ]


def run_session(label: str, cmd: list[str], folder: Path, env: dict[str, str], report: Path) -> Run:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    return read_run(label, proc.returncode, time.perf_counter() - started, proc.stdout + proc.stderr, report)


def read_run(label: str, returncode: int, seconds: float, out: str, report: Path) -> Run:
    """What a session flagged: our regression verdicts (from pytest-benchmark's JSON, by test name) and
    pytest-benchmark's own failed checks (from its output)."""
    run = Run(label, returncode, seconds, tail="\n".join(out.splitlines()[-40:]))
    for line in out.splitlines():
        m = BENCH_REGRESSION.match(line)
        if m:
            run.theirs.append((m["name"], f"{m['field']}: {m['text'].strip()}"))
    if report.is_file():
        for bench in json.loads(report.read_text()).get("benchmarks", []):
            for claim in (bench.get("extra_info") or {}).get("infer_claims", []):
                if claim.get("op") == "regression" and claim.get("verdict") == "fail":
                    run.ours.append((bench["name"], claim["text"]))
    return run


def movement(stored: dict[str, Any], report: Path) -> dict[str, dict[str, float]]:
    """Per test, how much worse (+) or better (-) the median and the speedup are than in the stored run, in %."""
    if not report.is_file():
        return {}
    before = {b["name"]: b for b in stored.get("benchmarks", [])}
    out: dict[str, dict[str, float]] = {}
    for bench in json.loads(report.read_text()).get("benchmarks", []):
        old = before.get(bench["name"])
        if old is None:
            continue
        moved = {"median %": 100 * (bench["stats"]["median"] / old["stats"]["median"] - 1)}
        for metric in ("speedup", "cpu_speedup"):
            now_s = (bench.get("extra_info") or {}).get("infer_metrics", {}).get(metric)
            old_s = (old.get("extra_info") or {}).get("infer_metrics", {}).get(metric)
            if now_s and old_s:
                moved[f"{metric} %"] = 100 * (1 - now_s / old_s)
        out[bench["name"]] = {k: round(v, 1) for k, v in moved.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reruns", type=int, default=5, help="unchanged reruns compared with the stored baseline")
    p.add_argument("--rounds", type=int, default=10, help="--infer-perf-rounds of every run")
    p.add_argument("--median-fail", type=int, default=50, help="pytest-benchmark --benchmark-compare-fail=median:N%%")
    p.add_argument("--speedup-fail", type=int, default=8, help="our --infer-compare-fail (cpu_)speedup:N%%")
    p.add_argument("--load-speedup-fail", type=int, default=30, help="the same rule for the model-load test")
    p.add_argument(
        "--wall",
        action="store_true",
        help="gate on wall time (speedup, pytest-benchmark's default timer) instead of process CPU time "
        "(cpu_speedup, --benchmark-timer=time.process_time)",
    )
    p.add_argument("--weight-fail", type=int, default=5, help="our --infer-compare-fail weight_bytes:N%%")
    p.add_argument("--slowdown", type=float, default=0.15, help="the planted slowdown (fraction of each call)")
    p.add_argument("--extra-memory", type=float, default=0.20, help="the planted extra weight bytes (fraction)")
    p.add_argument("--json", type=Path, help="write the observations here")
    p.add_argument("extra", nargs="*", help="more pytest arguments (after --), e.g. -k decode")
    args = p.parse_args(argv)

    speed = "speedup" if args.wall else "cpu_speedup"
    timer = () if args.wall else ("--benchmark-timer=time.process_time",)
    gate = (
        "--benchmark-compare=0001",
        f"--benchmark-compare-fail=median:{args.median_fail}%",
        f"--infer-compare-fail={speed}:{args.speedup_fail}%,load.{speed}:{args.load_speedup_fail}%,"
        f"weight_bytes:{args.weight_fail}%",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTED_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="perf-proof-") as tmp:
        folder = Path(tmp)
        (folder / "conftest.py").write_text(PLANTED_CONFTEST)
        storage = folder / "storage"

        def session(label: str, *extra: str, **planted: str) -> Run:
            report = folder / f"{label}.json"
            cmd = pytest_command(folder, storage, args.rounds, report, *extra, *args.extra)
            run = run_session(label, cmd, folder, {**env, **planted}, report)
            if runs and runs[0].label == "baseline" and stored_doc:
                run.moved = movement(stored_doc[0], report)
            runs.append(run)
            flags = "; ".join(f"{t}: {x}" for t, x in run.ours + run.theirs) or "nothing flagged"
            print(f"{label}: exit {run.returncode} in {run.seconds:.0f} s: {flags}", flush=True)
            for test, moved in sorted(run.moved.items()):
                print(f"    {test:<52} " + ", ".join(f"{k} {v:+.1f}" for k, v in moved.items()), flush=True)
            return run

        stored_doc: list[dict[str, Any]] = []
        base = session("baseline", "--benchmark-save=baseline", *timer)
        saved = sorted(storage.glob("*/0001_baseline.json"))
        if base.returncode != 0 or not saved:
            print(f"the baseline run failed or stored nothing (exit {base.returncode}):\n{base.tail}")
            return 1
        stored_doc.append(json.loads(saved[0].read_text()))
        print(f"stored: {saved[0]}")
        unchanged = [session(f"unchanged-{i + 1}", *timer, *gate) for i in range(args.reruns)]
        slower = session("slower", *timer, *gate, PLANTED_SLOWDOWN=str(args.slowdown))
        heavier = session("heavier", *timer, *gate, PLANTED_EXTRA_MEMORY=str(args.extra_memory))

    problems = []
    for run in unchanged:
        if run.returncode != 0 or run.flagged:
            problems.append(f"{run.label}: false positive (exit {run.returncode}): {run.flagged}\n{run.tail}")
    if not any(t.startswith("test_decode_speed[") for t in slower.flagged):
        problems.append(f"slower: the {args.slowdown:.0%} slowdown was not flagged on test_decode_speed\n{slower.tail}")
    heavy_tests = {t.split("[")[0] for t, text in heavier.ours if text.startswith("weight_bytes regressed")}
    if heavy_tests != {"test_decode_speed", "test_memory"}:
        problems.append(f"heavier: weight_bytes flagged on {sorted(heavy_tests)}, expected decode and memory")
    for run in (slower, heavier):
        if run.returncode == 0:
            problems.append(f"{run.label}: the session passed")

    noise: dict[str, dict[str, float]] = {}  # test -> metric -> worst drift (worse direction) over unchanged reruns
    for run in unchanged:
        for test, moved in run.moved.items():
            for metric, value in moved.items():
                noise.setdefault(test, {})[metric] = max(value, noise.get(test, {}).get(metric, value))
    summary = {
        "timing": "wall" if args.wall else "cpu",
        "thresholds": {
            "median": args.median_fail,
            speed: args.speedup_fail,
            f"load.{speed}": args.load_speedup_fail,
            "weight_bytes": args.weight_fail,
        },
        "planted": {"slowdown": args.slowdown, "extra_memory": args.extra_memory},
        "rounds": args.rounds,
        "unchanged_reruns": len(unchanged),
        "unchanged_flagged": sum(bool(r.flagged or r.returncode) for r in unchanged),
        "unchanged_worst_drift": noise,
        "runs": [r.to_dict() for r in runs],
        "problems": problems,
    }
    print(
        f"\nunchanged reruns: {summary['unchanged_flagged']} of {len(unchanged)} flagged; worst drift from the stored run:"
    )
    for test, worst in sorted(noise.items()):
        print(f"    {test:<52} " + ", ".join(f"{k} {v:+.1f}" for k, v in worst.items()))
    print(f"slower ({args.slowdown:.0%}): flagged {slower.flagged}")
    print(f"heavier (+{args.extra_memory:.0%} weights): flagged {heavier.flagged}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the default suites N times and report every outcome that changed between runs (flakiness).

    python scripts/repeat_runs.py                  # 10 runs of --infer-suite parity,generation
    python scripts/repeat_runs.py -n 3 -- --infer-dtype bfloat16

Each run is a fresh pytest process writing its JSON report; a test whose outcome differs in any run is a
flip. Also reports the spread of each check's headline metric across runs. Exit status 1 on any flip.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--runs", type=int, default=10)
    p.add_argument("--suite", default="parity,generation")
    p.add_argument("extra", nargs="*", help="more pytest arguments (after --)")
    args = p.parse_args(argv)
    outcomes: dict[str, list[str]] = defaultdict(list)
    metrics: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            report = Path(tmp) / f"run{i}.json"
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "pytest_infer",
                "-p",
                "no:cacheprovider",
                "-q",
                "--infer-suite",
                args.suite,
                f"--infer-report={report}",
                *args.extra,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
            last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
            print(f"run {i + 1}/{args.runs}: exit {proc.returncode}: {last}", flush=True)
            if not report.is_file():
                print("  no report written:", proc.stderr[-2000:])
                return 2
            doc = json.loads(report.read_text())
            for t in doc["tests"]:
                outcomes[t["nodeid"]].append(t["outcome"])
            for r in doc["results"]:
                key = f"{r['device']}-{r['dtype']}-{r['technique']} {r.get('check')} {r.get('variant', '')}".strip()
                value = next(
                    (
                        r["metrics"][m]
                        for m in ("max_abs", "matched_tokens", "recompiles", "speedup")
                        if r["metrics"].get(m) is not None
                    ),
                    None,
                )
                if value is not None:
                    metrics[key].append(value)
    flips = {k: v for k, v in outcomes.items() if len(set(v)) > 1 or len(v) != args.runs}
    drift = {k: (min(v), max(v)) for k, v in metrics.items() if min(v) != max(v)}
    print(f"\n{len(outcomes)} tests x {args.runs} runs: {len(flips)} flipped outcome(s)")
    for k, v in flips.items():
        print(f"  FLIP {k}: {v}")
    print(f"{len(metrics)} checks: {len(drift)} with a headline figure that moved between runs")
    for k, (lo, hi) in sorted(drift.items()):
        print(f"  {k}: {lo:.4g} .. {hi:.4g}")
    return 1 if flips else 0


if __name__ == "__main__":
    raise SystemExit(main())

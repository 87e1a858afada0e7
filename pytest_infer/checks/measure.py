"""How a perf scenario is measured (:class:`Measurement`): first calls timed alone, a second call of each side under
the memory probes that sizes the samples, then paired rounds (baseline and candidate alternating, see
:func:`pytest_infer.perf.timing.paired_rounds`) whose candidate samples pytest-benchmark drives in pedantic mode;
the claims decided by :mod:`pytest_infer.perf.claims`; pytest-benchmark's record (its rounds, ``extra_info``) and our
regression gate (``--infer-compare-fail``) against its stored run. Without pytest-benchmark (``-p no:benchmark``,
``--benchmark-disable``, xdist) the scenario still measures and decides, and says that nothing is stored.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from pytest_infer.checks.context import CheckContext
from pytest_infer.core.case import Case
from pytest_infer.core.expectation import Expectation
from pytest_infer.perf.calls import Scenario
from pytest_infer.perf.claims import decide_claims, expectations_for
from pytest_infer.perf.gate import parse_compare_fail, regressions
from pytest_infer.perf.result import PerfResult
from pytest_infer.perf.timing import Driver, Timer, gc_paused, loop_driver, memory_round, paired_rounds, sample_calls
from pytest_infer.runtime.memory import weight_bytes


class Measurement:
    """The measuring half of the perf checks of one test (its context: session, markers, pytest-benchmark)."""

    def __init__(self, ctx: CheckContext) -> None:
        self.ctx = ctx

    def expectations(self, case: Case, scenario: str = "decode") -> list[tuple[Expectation, str]]:
        """The technique's expectations for this stack and dtype, then the test's markers (closest wins)."""
        ctx = self.ctx
        return expectations_for(
            case.technique.expectations, ctx.stack_for(case.device), case.dtype, scenario, ctx.markers
        )

    def benchmark_off(self, benchmark: Any | None, compare_fail: str = "") -> str | None:
        """Why pytest-benchmark will neither store nor compare this run (None: it will); ``compare_fail``: the
        ``--infer-compare-fail`` rules asked for (they need a stored run)."""
        if benchmark is None and not self.ctx.benchmark_loaded:
            why = "pytest-benchmark is not loaded (-p no:benchmark)"
        elif benchmark is None:
            why = "no benchmark fixture was passed to the check"
        elif getattr(benchmark, "disabled", False):
            if self.ctx.xdist_worker:
                why = "pytest-benchmark disables itself under xdist"
            else:
                why = "pytest-benchmark is disabled (--benchmark-disable)"
        else:
            return None
        gate = f"; --infer-compare-fail {compare_fail} is not applied" if compare_fail else ""
        return f"{why}: figures measured and claims decided by pytest-infer, nothing stored or compared{gate}"

    def measure(
        self,
        case: Case,
        base_case: Case,
        sc: Scenario,
        benchmark: Any | None,
        *,
        weights: tuple[Any, Any] | None = None,
        before_rounds: Callable[[], None] | None = None,
        on_rounds: Callable[[], None] | None = None,
        timed: bool = True,
        complete: Callable[[PerfResult], None] | None = None,
    ) -> PerfResult:
        """First calls timed alone; one call of each side that sizes the samples and measures memory; paired
        rounds (the candidate's driven by pytest-benchmark where it is on); claims; pytest-benchmark's record."""
        cfg = self.ctx.config
        timer = Timer(case.device)
        first_b: list[float] = []
        first_c: list[float] = []
        step = self.ctx.step
        what = f"({case.dtype}, {case.device}): {sc.label}"
        # the baseline's first call of this scenario, once per resident model: later tests of the session find it
        # warm (their first call would be a warm call; the first one's time is reported)
        seen = self.ctx.first_calls.get(sc.baseline_model) if sc.baseline_model is not None else None
        if seen is not None and sc.label in seen:
            first_b.append(seen[sc.label])
        else:
            with step(f"first call of {base_case.technique.name} {what}"), timer.region(first_b):
                sc.run_baseline()
            if sc.baseline_model is not None:
                self.ctx.first_calls.setdefault(sc.baseline_model, {})[sc.label] = first_b[0]
        compiling = "compiling and running" if case.technique.compiled else "first call of"
        with step(f"{compiling} {case.technique.name} {what}"), timer.region(first_c):
            sc.run_candidate()
        # the second call of each side: timed alone (how many calls make a sample) and under the memory probes
        mem_b, took_b = memory_round(sc.run_baseline, case.device, timer)
        mem_c, took_c = memory_round(sc.run_candidate, case.device, timer)
        base_s: list[float] = []
        cand_s: list[float] = []
        cpu_b: list[float] = []
        cpu_c: list[float] = []
        drive = self.driver(benchmark, timer, self.group(sc.label, case.dtype, case.device)) if timed else None
        if timed:
            # short calls are repeated within a sample (see calls_for); times are per call
            sc.calls = sample_calls(took_b, took_c)
            if before_rounds is not None:
                before_rounds()
            with step(f"timing {case.technique.name} vs {base_case.technique.name} {what}"):
                base_s, cand_s = paired_rounds(
                    sc.run_baseline,
                    sc.run_candidate,
                    timer,
                    cfg.perf_rounds,
                    cfg.perf_warmup,
                    cpu=(cpu_b, cpu_c),
                    calls=sc.calls,
                    drive=drive or loop_driver,
                )
            base_s, cpu_b[:] = [t / sc.calls[0] for t in base_s], [t / sc.calls[0] for t in cpu_b]
            cand_s, cpu_c[:] = [t / sc.calls[1] for t in cand_s], [t / sc.calls[1] for t in cpu_c]
            if on_rounds is not None:
                on_rounds()
        extra = dict(sc.extra)
        if sc.alias and cand_s:
            extra[sc.alias] = statistics.median(cand_s)
        result = PerfResult(
            technique=case.technique.name,
            baseline=base_case.technique.name,
            device=case.device,
            dtype=case.dtype,
            scenario=sc.label,
            new_tokens=sc.new_tokens,
            batch=sc.batch,
            rounds=cfg.perf_rounds,
            warmup=cfg.perf_warmup,
            first_call_s=first_c[0] if timed else 0.0,
            baseline_first_call_s=first_b[0] if timed else 0.0,
            candidate_s=cand_s,
            baseline_s=base_s,
            weight_bytes=weight_bytes(weights[0]) if weights else 0,
            baseline_weight_bytes=weight_bytes(weights[1]) if weights else 0,
            memory=mem_c,
            baseline_memory=mem_b,
            scenario_key=sc.key,
            tokens=sc.tokens,
            extra=extra,
            calls=sc.calls[1],
            baseline_calls=sc.calls[0],
            cpu_candidate_s=cpu_c,
            cpu_baseline_s=cpu_b,
        )
        if complete is not None:
            complete(result)
        decide_claims(result, self.expectations(case, result.scenario_key))
        self.record_benchmark(benchmark, sc.run_candidate, timer, result, driven=drive is not None)
        return result

    def group(self, scenario: str, dtype: str, device: str) -> str:
        return f"{self.ctx.source.label}: {scenario} ({dtype}, {device})"

    def driver(self, benchmark: Any | None, timer: Timer, group: str) -> Driver | None:
        """pytest-benchmark's pedantic mode as the driver of the candidate's timed rounds (None where it is off):
        ``iterations`` = the calls of a sample, so it records the time per call; its per-round ``teardown``
        runs the baseline's samples between the rounds, outside its timing. Each call of either side
        synchronises the device at its end (:func:`~pytest_infer.perf.timing.paired_rounds`)."""
        if benchmark is None or self.benchmark_off(benchmark) is not None:
            return None
        benchmark.group = group  # pytest-benchmark reads it when its rounds start

        def drive(call: Callable[[], object], calls: int, after_round: Callable[[int], None], rounds: int) -> None:
            ended = [0]

            def teardown() -> None:
                # with iterations > 1 it makes one more call after the rounds (for a result), then tears down again
                ended[0] += 1
                if ended[0] <= rounds:
                    after_round(ended[0])

            with gc_paused():  # as in our rounds (pytest-benchmark leaves the collector on unless told otherwise)
                benchmark.pedantic(
                    call,
                    teardown=teardown,
                    rounds=rounds,
                    warmup_rounds=0,  # warmed up already
                    iterations=calls,
                )

        return drive

    def record_benchmark(
        self, benchmark: Any | None, run: Callable[[], object], timer: Timer, result: PerfResult, *, driven: bool
    ) -> None:
        """pytest-benchmark's record of the result: its rounds are the candidate's paired rounds where it drove them
        (``driven``), otherwise rounds of one synchronised call (a scenario not timed in pairs: memory); the figures as
        ``extra_info``; and our regression gate against the stored run."""
        cfg = self.ctx.config
        off = self.benchmark_off(benchmark, cfg.compare_fail)
        if off is not None or benchmark is None:
            result.notes.append(off or "pytest-benchmark is not loaded")
            if benchmark is not None:  # disabled, it runs the call once, untimed (and does not warn "not used")
                benchmark.pedantic(run, rounds=1, warmup_rounds=0, iterations=1)
            return
        benchmark.group = self.group(result.scenario, result.dtype, result.device)
        benchmark.extra_info["infer_scenario"] = result.scenario_key
        benchmark.extra_info["infer_metrics"] = result.metrics
        benchmark.extra_info["infer_claims"] = result.claims  # the same list: regression verdicts join it below
        benchmark.extra_info["infer_baseline"] = result.baseline
        benchmark.extra_info["infer_notes"] = result.notes
        if not driven:

            def synchronised() -> None:
                run()
                timer.sync()

            with gc_paused():
                benchmark.pedantic(
                    synchronised, setup=timer.sync, rounds=cfg.perf_rounds, warmup_rounds=0, iterations=1
                )
        hooks = self.ctx.stored_runs
        if hooks is None or not cfg.compare_fail:
            return

        stored = hooks.stored_metrics(benchmark.fullname)
        if stored is None:
            result.notes.append(
                f"--infer-compare-fail: no stored run of {benchmark.fullname} to compare with "
                f"{hooks.stored_source or '(store one with --benchmark-autosave)'}"
            )
            return
        for failure in regressions(result.metrics, stored, parse_compare_fail(cfg.compare_fail), result.scenario_key):
            result.claims.append(
                {
                    "metric": failure.split()[0],
                    "op": "regression",
                    "value": 0.0,
                    "measured": 0.0,
                    "verdict": "fail",
                    "text": failure,
                    "source": f" vs {hooks.stored_source}",
                }
            )

"""The performance checks of a case, one per scenario, each against a baseline technique measured in the same
session: model load, decode (end-to-end generate, tokens/s, latency per token after the first), prefill at a
prompt length, time to first token, memory (weights, KV cache, peak device memory, peak host RSS) and
continuous-batching throughput.

Every timed scenario runs the same way: a first call of each side timed alone (compilation; the baseline's once
per resident model and session), a second call of each side timed alone under the memory probes (it sizes the
samples), then paired rounds (baseline and candidate alternating, see :func:`pytest_infer.measure.paired_rounds`)
whose candidate samples pytest-benchmark drives in pedantic mode. Claims are decided on the interval of the
paired ratios. The figures go to the result (JSON report, terminal) and to pytest-benchmark (its rounds;
``extra_info``), whose storage our regression gate (``--infer-compare-fail``) compares with. Without pytest-benchmark
(``-p no:benchmark``, ``--benchmark-disable``, xdist) the scenarios still measure and decide, and say that
storage and comparison are off.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pytest_infer.checks import ParityChecks, _assert
from pytest_infer.measure import (
    Driver,
    Paired,
    PerfResult,
    Timer,
    decide,
    gc_paused,
    loop_driver,
    memory_round,
    paired_rounds,
    perf_headline,
    sample_calls,
    weight_bytes,
)
from pytest_infer.models import encode
from pytest_infer.session import Case, InferSession
from pytest_infer.technique import Expectation, Technique, select_expectations

if TYPE_CHECKING:
    from pytest_infer.bench import BenchmarkHooks

# the prompt lengths of the bundled prefill scenario (tests select one with -k prompt256)
PREFILL_LENGTHS = (32, 256)
# a perf run of continuous batching wants more tokens per forward than the parity tests' budget (still explicit)
BATCHING_OVERRIDES: dict[str, Any] = {"max_batch_tokens": 256}
# marker -> (metric, op); "{scenario}" is the scenario of the test the marker is on (decode, prefill...)
MARKER_METRICS = {"infer_speedup": ("{scenario}_speedup", ">="), "infer_memory": ("weight_memory_ratio", "<=")}
SUMMARY_PLUGIN = "infer_perf_summary"


@dataclass
class Scenario:
    """What one scenario times: a call of the baseline and one of the candidate."""

    key: str
    label: str
    run_baseline: Callable[[], object]
    run_candidate: Callable[[], object]
    new_tokens: int = 0
    batch: int = 0
    tokens: int = 0  # tokens one call processes (tokens/s); 0: none
    alias: str = ""  # the median under its own name too (ttft_s, load_s)
    extra: dict[str, float] = field(default_factory=dict)
    calls: tuple[int, int] = (1, 1)  # (baseline, candidate) calls per timed sample, set when measuring
    baseline_model: Any = None  # the resident model run_baseline calls (None: each call makes its own)


def unsupported(technique: Technique, scenario: str) -> str | None:
    """Why ``scenario`` cannot be measured for ``technique`` in this process (None: it can)."""
    name, runner = technique.name, technique.runner
    if runner == "multiprocess":
        return f"{name} runs in its ranks: the perf suite times one process"
    if scenario == "batching" and runner != "generate_batch":
        return f"{name} runs under {runner}, not generate_batch: no continuous-batching throughput to measure"
    if scenario in ("prefill", "ttft") and runner == "generate_batch":
        return (
            f"{name} runs under continuous batching (generate_batch), which schedules prefill inside its own loop: "
            "see test_batching_throughput"
        )
    return None


def benchmark_off(config: pytest.Config, benchmark: Any | None, compare_fail: str = "") -> str | None:
    """Why pytest-benchmark will neither store nor compare this run (None: it will); ``compare_fail``: the
    ``--infer-compare-fail`` rules asked for (they need a stored run)."""
    if benchmark is None and not config.pluginmanager.hasplugin("benchmark"):
        why = "pytest-benchmark is not loaded (-p no:benchmark)"
    elif benchmark is None:
        why = "no benchmark fixture was passed to the check"
    elif getattr(benchmark, "disabled", False):
        if hasattr(config, "workerinput"):
            why = "pytest-benchmark disables itself under xdist"
        else:
            why = "pytest-benchmark is disabled (--benchmark-disable)"
    else:
        return None
    gate = f"; --infer-compare-fail {compare_fail} is not applied" if compare_fail else ""
    return f"{why}: figures measured and claims decided by pytest-infer, nothing stored or compared{gate}"


class PerfChecks:
    def __init__(self, session: InferSession, node: pytest.Item | None, parity: ParityChecks) -> None:
        self.session = session
        self.node = node
        self.parity = parity
        ensure_summary(session)

    def baseline_case(self, case: Case) -> Case:
        name = self.session.config.baseline or self.session.config.reference
        return Case(self.session.registry.get(name), case.device, case.dtype)

    def expectations(self, case: Case, scenario: str = "decode") -> list[tuple[Expectation, str]]:
        """The technique's expectations for this stack and dtype, then the test's markers (closest wins)."""
        stack = self.session.stack_for(case.device)
        chosen = [
            (e, " (technique, this stack)") for e in select_expectations(case.technique.expectations, stack, case.dtype)
        ]
        if self.node is not None:
            for marker_name, (metric, op) in MARKER_METRICS.items():
                for marker in self.node.iter_markers(marker_name):
                    kwargs = dict(marker.kwargs)
                    stacks = tuple(s for s in [kwargs.pop("stack", None)] if s)
                    bound = kwargs.pop("min" if op == ">=" else "max", None)
                    metric_name = kwargs.pop("metric", metric.format(scenario=scenario))
                    if bound is None or kwargs:
                        raise pytest.UsageError(
                            f"@pytest.mark.{marker_name}: expected ({'min' if op == '>=' else 'max'}=NUMBER"
                            f"[, stack='cuda:9.0'][, metric=...]), got {dict(marker.kwargs)}"
                        )
                    e = Expectation(metric_name, op, float(bound), stacks=stacks)
                    if e.specificity(stack) >= 0:
                        chosen = [c for c in chosen if c[0].metric != e.metric] + [(e, f" (@{marker_name})")]
        return chosen

    # --- scenarios ------------------------------------------------------------------------------
    def decode(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        """Greedy generate of ``--infer-perf-new-tokens`` tokens (forced length) on the prompt batch: end-to-end
        time, tokens/s, and the latency per token after the first (host time of each streamed token)."""
        from pytest_infer.generation import greedy_generate

        base_case = self.baseline_case(case)
        tok, n = self.parity.tokenizer, self.session.config.perf_new_tokens
        batch = encode(tok, self.parity.prompts, case.device)
        rows = int(batch.input_ids.shape[0])
        base_model, cand_model = self.parity.model(base_case), self.parity.model(case)
        steps_b: list[float] = []
        steps_c: list[float] = []
        base_t, cand_t = _streaming(base_case.technique, steps_b), _streaming(case.technique, steps_c)
        sc = Scenario(
            "decode",
            f"decode {n} tokens x {rows} prompts",
            lambda: greedy_generate(base_model, tok, batch, base_t, n, scores=False),
            lambda: greedy_generate(cand_model, tok, batch, cand_t, n, scores=False),
            new_tokens=n,
            batch=rows,
            tokens=rows * n,
            baseline_model=base_model,
        )
        rounds, warmup = self.session.config.perf_rounds, self.session.config.perf_warmup
        start: dict[str, int] = {}

        def before_rounds() -> None:  # where the timed calls' steps will start (after the warm-up calls')
            start.update(b=len(steps_b) + warmup, c=len(steps_c) + warmup)

        def per_token() -> None:  # the streamed steps of the calls in the timed rounds (not of a call after them)
            timed_b, timed_c = rounds * sc.calls[0], rounds * sc.calls[1]
            cand_steps = steps_c[start["c"] : start["c"] + timed_c]
            base_steps = steps_b[start["b"] : start["b"] + timed_b]
            if len(cand_steps) == timed_c and n > 1:
                cand = statistics.median(cand_steps)
                sc.extra["decode_ms_per_token"] = 1000 * cand
                if len(base_steps) == timed_b:
                    sc.extra["decode_step_speedup"] = statistics.median(base_steps) / cand

        return self._measure(
            case,
            base_case,
            sc,
            benchmark,
            weights=(cand_model, base_model),
            before_rounds=before_rounds,
            on_rounds=per_token,
        )

    def prefill(self, case: Case, prompt_len: int, benchmark: Any | None = None) -> PerfResult:
        """One forward over a batch of prompts of exactly ``prompt_len`` tokens, building the KV cache and the
        last position's logits, as ``generate``'s prefill does."""
        base_case = self.baseline_case(case)
        ids = prefill_ids(self.parity.tokenizer, self.parity.prompts, prompt_len, case.device)
        rows = int(ids.shape[0])
        base_model, cand_model = self.parity.model(base_case), self.parity.model(case)
        sc = Scenario(
            "prefill",
            f"prefill {prompt_len} tokens x {rows} prompts",
            lambda: _prefill(base_model, base_case.technique, ids),
            lambda: _prefill(cand_model, case.technique, ids),
            batch=rows,
            tokens=rows * prompt_len,
            extra={"prompt_len": float(prompt_len)},
            baseline_model=base_model,
        )
        return self._measure(case, base_case, sc, benchmark)

    def ttft(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        """Time to first token: ``generate`` of one token on the prompt batch (prefill, the first token's
        selection and generate's own set-up: what a caller waits before anything streams)."""
        from pytest_infer.generation import greedy_generate

        base_case = self.baseline_case(case)
        tok = self.parity.tokenizer
        batch = encode(tok, self.parity.prompts, case.device)
        rows = int(batch.input_ids.shape[0])
        base_model, cand_model = self.parity.model(base_case), self.parity.model(case)
        sc = Scenario(
            "ttft",
            f"time to first token x {rows} prompts",
            lambda: greedy_generate(base_model, tok, batch, base_case.technique, 1, scores=False),
            lambda: greedy_generate(cand_model, tok, batch, case.technique, 1, scores=False),
            new_tokens=1,
            batch=rows,
            alias="ttft_s",
            baseline_model=base_model,
        )
        return self._measure(case, base_case, sc, benchmark)

    def load(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        """``from_pretrained`` with the technique applied (and its ``prepare``), a fresh model every call: the
        session's model cache is not used. The memory round gives the peak RSS of a load."""
        from pytest_infer.models import load_model

        s = self.session
        base_case = self.baseline_case(case)

        def loader(c: Case) -> Callable[[], None]:
            def run() -> None:
                model = load_model(s.source, c.technique, c.dtype, c.device)
                del model

            return run

        sc = Scenario("load", "model load", loader(base_case), loader(case), alias="load_s")
        try:
            return self._measure(case, base_case, sc, benchmark)
        finally:
            _release(case.device)

    def memory(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        """Weights, KV cache, peak device memory and peak host RSS of a forced-length ``generate`` on the prompt
        batch, after a warm-up call of each side; no paired timing (pytest-benchmark still times the call)."""
        from pytest_infer.cache_checks import describe_cache, generate_with_cache
        from pytest_infer.generation import greedy_generate

        base_case = self.baseline_case(case)
        tok, n = self.parity.tokenizer, self.session.config.perf_new_tokens
        batch = encode(tok, self.parity.prompts, case.device)
        # kernels without mask support run each prompt alone: both sides then do, so the KV bytes compare
        parts = [batch] if case.technique.padded_batches else batch.rows()
        base_model, cand_model = self.parity.model(base_case), self.parity.model(case)
        kv_b: dict[str, Any] = {}
        kv_c: dict[str, Any] = {}

        def runner(model: Any, technique: Technique, into: dict[str, Any]) -> Callable[[], None]:
            def run() -> None:
                if technique.runner == "generate_batch":  # a paged cache sized by the explicit budget
                    greedy_generate(model, tok, batch, technique, n, scores=False)
                    return
                total = {"kv_bytes": 0, "kv_device_bytes": 0}
                for part in parts:
                    _, cache = generate_with_cache(model, tok, part, technique, n)
                    seen = describe_cache(cache, case.device.split(":")[0])
                    total = {k: total[k] + int(seen[k]) for k in total}
                into.update(total)

            return run

        run_b, run_c = runner(base_model, base_case.technique, kv_b), runner(cand_model, case.technique, kv_c)
        rows = int(batch.input_ids.shape[0])
        label = f"memory of generate {n} tokens x {rows} prompts"
        sc = Scenario("memory", label, run_b, run_c, n, rows, baseline_model=base_model)

        def kv_figures(result: PerfResult) -> None:
            if "kv_bytes" in kv_c:
                result.extra.update(kv_bytes=float(kv_c["kv_bytes"]), kv_device_bytes=float(kv_c["kv_device_bytes"]))
                if kv_b.get("kv_device_bytes"):
                    result.extra["kv_memory_ratio"] = kv_c["kv_device_bytes"] / kv_b["kv_device_bytes"]
            else:
                result.notes.append(
                    f"KV bytes not measured: {case.technique.name} runs under continuous batching, whose paged cache "
                    "is sized by the explicit budget (pytest_infer.batching.CB_BUDGET, perf.BATCHING_OVERRIDES)"
                )

        return self._measure(
            case, base_case, sc, benchmark, weights=(cand_model, base_model), timed=False, complete=kv_figures
        )

    def batching(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        """Continuous batching (``generate_batch`` on every prompt) against sequential per-prompt ``generate`` on
        the same model, in paired rounds (:func:`pytest_infer.batching.measure_throughput`)."""
        from pytest_infer.batching import measure_throughput, run_generate_batch

        cfg = self.session.config
        tok, prompts, n = self.parity.tokenizer, list(self.parity.prompts), cfg.perf_new_tokens
        model = self.parity.model(case)
        timer = Timer(case.device)
        label = f"continuous batching {len(prompts)} requests x {n} tokens"
        drive = self._driver(benchmark, timer, self._group(label, case.dtype, case.device))
        memory: dict[str, int] = {}
        tp = measure_throughput(
            model, tok, prompts, case.technique, n, rounds=cfg.perf_rounds, warmup=cfg.perf_warmup,
            overrides=BATCHING_OVERRIDES, memory=memory, drive=drive or loop_driver,
        )  # fmt: skip
        inputs = [list(tok(p)["input_ids"]) for p in prompts]

        def run() -> None:
            run_generate_batch(model, tok, inputs, case.technique, n, overrides=BATCHING_OVERRIDES).raise_for_problems()

        result = PerfResult(
            technique=case.technique.name,
            baseline="sequential generate",
            device=case.device,
            dtype=case.dtype,
            scenario=label,
            new_tokens=n,
            batch=len(prompts),
            rounds=cfg.perf_rounds,
            warmup=cfg.perf_warmup,
            first_call_s=0.0,
            baseline_first_call_s=0.0,
            candidate_s=list(tp.batch_s),
            baseline_s=list(tp.sequential_s),
            memory=memory,
            scenario_key="batching",
            tokens=tp.batch_tokens,
            extra={
                "sequential_tokens_per_s": tp.sequential_tokens_per_s,
                "throughput_ratio": tp.ratio,
                "max_batch_tokens": float(tp.budget["max_batch_tokens"]),
            },
        )
        self._claims(case, result)
        self._benchmark(benchmark, run, timer, result, driven=drive is not None)
        return result

    # --- measuring ------------------------------------------------------------------------------
    def _measure(
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
        cfg = self.session.config
        timer = Timer(case.device)
        first_b: list[float] = []
        first_c: list[float] = []
        progress = self.session.progress
        what = f"({case.dtype}, {case.device}): {sc.label}"
        # the baseline's first call of this scenario, once per resident model: later tests of the session find it
        # warm (their first call would be a warm call; the first one's time is reported)
        seen = self.session.first_calls.get(sc.baseline_model) if sc.baseline_model is not None else None
        if seen is not None and sc.label in seen:
            first_b.append(seen[sc.label])
        else:
            with progress.step(f"first call of {base_case.technique.name} {what}"), timer.region(first_b):
                sc.run_baseline()
            if sc.baseline_model is not None:
                self.session.first_calls.setdefault(sc.baseline_model, {})[sc.label] = first_b[0]
        compiling = "compiling and running" if case.technique.compiled else "first call of"
        with progress.step(f"{compiling} {case.technique.name} {what}"), timer.region(first_c):
            sc.run_candidate()
        # the second call of each side: timed alone (how many calls make a sample) and under the memory probes
        mem_b, took_b = memory_round(sc.run_baseline, case.device, timer)
        mem_c, took_c = memory_round(sc.run_candidate, case.device, timer)
        base_s: list[float] = []
        cand_s: list[float] = []
        cpu_b: list[float] = []
        cpu_c: list[float] = []
        drive = self._driver(benchmark, timer, self._group(sc.label, case.dtype, case.device)) if timed else None
        if timed:
            # short calls are repeated within a sample (see calls_for); times are per call
            sc.calls = sample_calls(took_b, took_c)
            if before_rounds is not None:
                before_rounds()
            with progress.step(f"timing {case.technique.name} vs {base_case.technique.name} {what}"):
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
        self._claims(case, result)
        self._benchmark(benchmark, sc.run_candidate, timer, result, driven=drive is not None)
        return result

    def _group(self, scenario: str, dtype: str, device: str) -> str:
        return f"{self.session.source.label}: {scenario} ({dtype}, {device})"

    def _driver(self, benchmark: Any | None, timer: Timer, group: str) -> Driver | None:
        """pytest-benchmark's pedantic mode as the driver of the candidate's timed rounds (None where it is off):
        ``iterations`` = the calls of a sample, so it records the time per call; its per-round ``teardown``
        runs the baseline's samples between the rounds, outside its timing. Each call of either side
        synchronises the device at its end (:func:`~pytest_infer.measure.paired_rounds`)."""
        if benchmark is None or benchmark_off(self.session.pytest_config, benchmark) is not None:
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

    def _claims(self, case: Case, result: PerfResult) -> None:
        """Decide the claims on ``result``: the scenario's speedup on its paired interval, anything else
        (bytes, ratios) on its single value."""
        m = result.metrics
        speed_metric = f"{result.scenario_key}_speedup"
        for e, source in self.expectations(case, result.scenario_key):
            interval = e.metric == speed_metric and "speedup" in m
            if interval:
                low, high = Paired(result.baseline_s, result.candidate_s).interval()
                measured = m["speedup"]
            elif e.metric in m:
                measured = m[e.metric]
                low = high = measured  # deterministic (bytes) or single-valued
            else:
                continue
            result.claims.append(
                {
                    "metric": e.metric,
                    "op": e.op,
                    "value": e.value,
                    "measured": measured,
                    "low": low if interval else None,
                    "high": high if interval else None,
                    "verdict": decide(low, high, e.value, e.op),
                    "source": source,
                }
            )

    def _benchmark(
        self, benchmark: Any | None, run: Callable[[], object], timer: Timer, result: PerfResult, *, driven: bool
    ) -> None:
        """pytest-benchmark's record of the result: its rounds are the candidate's paired rounds where it drove them
        (``driven``), otherwise rounds of one synchronised call (a scenario not timed in pairs: memory); the figures as
        ``extra_info``; and our regression gate against the stored run."""
        cfg = self.session.config
        off = benchmark_off(self.session.pytest_config, benchmark, cfg.compare_fail)
        if off is not None or benchmark is None:
            result.notes.append(off or "pytest-benchmark is not loaded")
            if benchmark is not None:  # disabled, it runs the call once, untimed (and does not warn "not used")
                benchmark.pedantic(run, rounds=1, warmup_rounds=0, iterations=1)
            return
        benchmark.group = self._group(result.scenario, result.dtype, result.device)
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
        hooks: BenchmarkHooks | None = self.session.benchmark_hooks
        if hooks is None or not cfg.compare_fail:
            return
        from pytest_infer.bench import parse_compare_fail, regressions

        stored = hooks.stored_metrics(benchmark.fullname)
        if stored is None:
            result.notes.append(
                f"--infer-compare-fail: no stored run of {benchmark.fullname} to compare with "
                f"{hooks.stored_source or '(run with --benchmark-compare and a stored run)'}"
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

    # --- assertions (what the suite calls) -------------------------------------------------------
    def _check(self, case: Case, scenario: str, compute: Callable[[], PerfResult]) -> PerfResult:
        reason = unsupported(case.technique, scenario)
        if reason is not None:
            pytest.skip(reason)
        with self.parity._guard(case):
            result = self.parity._record(compute())
        if result.verdict == "inconclusive":
            pytest.skip(f"INCONCLUSIVE (noise too large to decide): {result.message()}")
        return _assert([result])[0]

    def assert_decode(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        return self._check(case, "decode", lambda: self.decode(case, benchmark))

    def assert_prefill(self, case: Case, prompt_len: int, benchmark: Any | None = None) -> PerfResult:
        return self._check(case, "prefill", lambda: self.prefill(case, prompt_len, benchmark))

    def assert_ttft(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        return self._check(case, "ttft", lambda: self.ttft(case, benchmark))

    def assert_load(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        return self._check(case, "load", lambda: self.load(case, benchmark))

    def assert_memory(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        return self._check(case, "memory", lambda: self.memory(case, benchmark))

    def assert_batching(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        return self._check(case, "batching", lambda: self.batching(case, benchmark))


# --- helpers ------------------------------------------------------------------------------------------
def _release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _streaming(technique: Technique, into: list[float]) -> Technique:
    """``technique`` with a streamer that appends, per ``generate`` call, the seconds per token after the first;
    unchanged where ``generate`` cannot stream (continuous batching) or runs prompts one at a time."""
    if technique.runner == "generate_batch" or not technique.padded_batches:
        return technique
    return dataclasses.replace(technique, generate_kwargs={**technique.generate_kwargs, "streamer": _step_clock(into)})


def _step_clock(into: list[float]) -> Any:
    from transformers.generation.streamers import BaseStreamer

    class StepClock(BaseStreamer):  # type: ignore[misc]
        """Host time at which ``generate`` hands over each token (after the copy to the host: synchronised)."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            steps = self.times[1:]  # times[0]: the prompt, handed over before the prefill
            if len(steps) >= 2:
                into.append((steps[-1] - steps[0]) / (len(steps) - 1))
            self.times = []

    return StepClock()


def prefill_ids(tokenizer: Any, prompts: Iterable[str], length: int, device: str) -> Any:
    """One row per prompt, each exactly ``length`` tokens of the prompt set's text (windows at different
    offsets, the BOS token first where the tokenizer has one), no padding: a clean prefill shape."""
    import torch

    texts = list(prompts)
    ids = list(tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError("the prompt set has no tokens to build prefill prompts from")
    rows = len(texts)
    while len(ids) < length + 7 * rows:
        ids = ids + ids
    bos = getattr(tokenizer, "bos_token_id", None)
    out = []
    for r in range(rows):
        window = ids[7 * r : 7 * r + length]
        out.append([bos, *window[: length - 1]] if bos is not None else window)
    return torch.tensor(out, dtype=torch.long, device=device)


def _prefill(model: Any, technique: Technique, ids: Any) -> None:
    import inspect

    kwargs: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in inspect.signature(type(model).forward).parameters:
        kwargs["logits_to_keep"] = 1  # as generate: only the last position's logits
    with technique.no_grad(), technique.active():
        model(input_ids=ids, **kwargs)


# --- terminal --------------------------------------------------------------------------------------
def summary_lines(results: Iterable[Mapping[str, Any]]) -> list[str]:
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


class PerfSummary:
    """The ``pytest-infer: performance`` section of the terminal summary: every figure of every perf result."""

    def __init__(self, session: InferSession) -> None:
        self.session = session

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines = summary_lines(self.session.results)
        if lines:
            terminalreporter.section("pytest-infer: performance")
            for line in lines:
                terminalreporter.write_line(line)


def ensure_summary(session: InferSession) -> None:
    manager = session.pytest_config.pluginmanager
    if manager.get_plugin(SUMMARY_PLUGIN) is None:
        manager.register(PerfSummary(session), SUMMARY_PLUGIN)

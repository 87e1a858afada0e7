"""The performance check of a case: decode speed and memory against a baseline technique measured in the
same session, paired rounds, claims decided with a confidence interval, results through pytest-benchmark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pytest_infer.checks import ParityChecks, _assert
from pytest_infer.measure import Paired, PerfResult, Timer, decide, paired_rounds, peak_memory, weight_bytes
from pytest_infer.models import encode
from pytest_infer.session import Case, InferSession
from pytest_infer.technique import Expectation, select_expectations

if TYPE_CHECKING:
    from pytest_infer.bench import BenchmarkHooks

MARKER_METRICS = {"infer_speedup": ("decode_speedup", ">="), "infer_memory": ("weight_memory_ratio", "<=")}


class PerfChecks:
    def __init__(self, session: InferSession, node: pytest.Item | None, parity: ParityChecks) -> None:
        self.session = session
        self.node = node
        self.parity = parity

    def baseline_case(self, case: Case) -> Case:
        name = self.session.config.baseline or self.session.config.reference
        return Case(self.session.registry.get(name), case.device, case.dtype)

    def expectations(self, case: Case) -> list[tuple[Expectation, str]]:
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
                    metric_name = kwargs.pop("metric", metric)
                    if bound is None or kwargs:
                        raise pytest.UsageError(
                            f"@pytest.mark.{marker_name}: expected ({'min' if op == '>=' else 'max'}=NUMBER"
                            f"[, stack='cuda:9.0'][, metric=...]), got {dict(marker.kwargs)}"
                        )
                    e = Expectation(metric_name, op, float(bound), stacks=stacks)
                    if e.specificity(stack) >= 0:
                        chosen = [c for c in chosen if c[0].metric != e.metric] + [(e, f" (@{marker_name})")]
        return chosen

    def decode(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        s = self.session
        cfg = s.config
        base_case = self.baseline_case(case)
        tok, device = self.parity.tokenizer, case.device
        batch = encode(tok, self.parity.prompts, device)
        n = cfg.perf_new_tokens
        from pytest_infer.generation import greedy_generate

        base_model = self.parity.model(base_case)
        cand_model = self.parity.model(case)

        def run_base() -> None:
            greedy_generate(base_model, tok, batch, base_case.technique, n, scores=False)

        def run_cand() -> None:
            greedy_generate(cand_model, tok, batch, case.technique, n, scores=False)

        timer = Timer(device)
        first_b: list[float] = []
        first_c: list[float] = []
        mem_b: dict[str, int] = {}
        mem_c: dict[str, int] = {}
        with timer.region(first_b), peak_memory(device, mem_b):
            run_base()
        with timer.region(first_c), peak_memory(device, mem_c):
            run_cand()
        base_s, cand_s = paired_rounds(run_base, run_cand, timer, cfg.perf_rounds, cfg.perf_warmup)
        result = PerfResult(
            technique=case.technique.name,
            baseline=base_case.technique.name,
            device=device,
            dtype=case.dtype,
            scenario=f"decode {n} tokens x {batch.input_ids.shape[0]} prompts",
            new_tokens=n,
            batch=int(batch.input_ids.shape[0]),
            rounds=cfg.perf_rounds,
            warmup=cfg.perf_warmup,
            first_call_s=first_c[0],
            baseline_first_call_s=first_b[0],
            candidate_s=cand_s,
            baseline_s=base_s,
            weight_bytes=weight_bytes(cand_model),
            baseline_weight_bytes=weight_bytes(base_model),
            memory=mem_c,
            baseline_memory=mem_b,
        )
        self._claims(case, result)
        if benchmark is not None:
            self._benchmark(benchmark, run_cand, timer, result)
        return result

    def _claims(self, case: Case, result: PerfResult) -> None:
        m = result.metrics
        paired = Paired(result.baseline_s, result.candidate_s)
        for e, source in self.expectations(case):
            if e.metric == "decode_speedup":
                low, high = paired.interval()
                measured = paired.speedup
            elif e.metric in m:
                measured = m[e.metric]
                low = high = measured  # deterministic (bytes) or single-valued
            else:
                continue
            verdict = decide(low, high, e.value, e.op)
            result.claims.append(
                {
                    "metric": e.metric,
                    "op": e.op,
                    "value": e.value,
                    "measured": measured,
                    "low": low if e.metric == "decode_speedup" else None,
                    "high": high if e.metric == "decode_speedup" else None,
                    "verdict": verdict,
                    "source": source,
                }
            )

    def _benchmark(self, benchmark: Any, run: Any, timer: Timer, result: PerfResult) -> None:
        cfg = self.session.config
        benchmark.group = f"{self.session.source.label}: {result.scenario} ({result.dtype}, {result.device})"
        benchmark.extra_info["infer_metrics"] = result.metrics
        benchmark.extra_info["infer_claims"] = result.claims
        benchmark.extra_info["infer_baseline"] = result.baseline
        # pedantic: explicit rounds, no calibration loops, the device synchronised before every round
        benchmark.pedantic(run, setup=timer.sync, rounds=cfg.perf_rounds, warmup_rounds=0, iterations=1)
        hooks: BenchmarkHooks | None = self.session.benchmark_hooks
        if hooks is not None and cfg.compare_fail:
            from pytest_infer.bench import parse_compare_fail, regressions

            stored = hooks.stored_metrics(benchmark.fullname)
            if stored is not None:
                for failure in regressions(result.metrics, stored, parse_compare_fail(cfg.compare_fail)):
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

    def assert_decode(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        with self.parity._guard(case):
            result = self.parity._record(self.decode(case, benchmark))
        if result.verdict == "inconclusive":
            pytest.skip(f"INCONCLUSIVE (noise too large to decide): {result.message()}")
        return _assert([result])[0]

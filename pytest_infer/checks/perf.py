"""The performance checks of a case (``infer_perf``), one per scenario, each against a baseline technique measured
in the same session: model load, decode (end-to-end generate, tokens/s, latency per token after the first),
prefill at a prompt length, time to first token, memory (weights, KV cache, peak device memory, peak host RSS) and
continuous-batching throughput. How each is measured and decided: :mod:`pytest_infer.checks.measure`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from pytest_infer.checks import verdict
from pytest_infer.checks.measure import Measurement
from pytest_infer.checks.parity import ParityChecks
from pytest_infer.core.case import Case
from pytest_infer.core.expectation import Expectation
from pytest_infer.core.technique import Technique
from pytest_infer.perf.calls import BATCHING_OVERRIDES, Scenario, prefill_ids, run_prefill, streaming
from pytest_infer.perf.claims import decide_claims
from pytest_infer.perf.result import PerfResult
from pytest_infer.perf.scenarios import unsupported
from pytest_infer.perf.throughput import measure_throughput
from pytest_infer.perf.timing import Timer, loop_driver
from pytest_infer.runtime.batch import encode
from pytest_infer.runtime.continuous_batching import run_generate_batch
from pytest_infer.runtime.generation import greedy_generate
from pytest_infer.runtime.kv_cache import describe_cache, generate_with_cache
from pytest_infer.runtime.loading import load_model
from pytest_infer.runtime.model_cache import release_memory


class PerfChecks:
    """The perf scenarios of one test (``infer_perf``): each builds the calls of both sides and hands them to the
    :class:`~pytest_infer.checks.measure.Measurement`."""

    def __init__(self, parity: ParityChecks) -> None:
        self.parity = parity
        self.ctx = parity.ctx
        self.models = parity.models
        self.measurement = Measurement(parity.ctx)

    def baseline_case(self, case: Case) -> Case:
        return self.ctx.baseline_case(case)

    def expectations(self, case: Case, scenario: str = "decode") -> list[tuple[Expectation, str]]:
        return self.measurement.expectations(case, scenario)

    # --- scenarios ------------------------------------------------------------------------------
    def decode(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        """Greedy generate of ``--infer-perf-new-tokens`` tokens (forced length) on the prompt batch: end-to-end
        time, tokens/s, and the latency per token after the first (host time of each streamed token)."""

        base_case = self.baseline_case(case)
        tok, n = self.parity.tokenizer, self.ctx.config.perf_new_tokens
        batch = encode(tok, self.parity.prompts, case.device)
        rows = int(batch.input_ids.shape[0])
        base_model, cand_model = self.models.model(base_case), self.models.model(case)
        steps_b: list[float] = []
        steps_c: list[float] = []
        base_t, cand_t = streaming(base_case.technique, steps_b), streaming(case.technique, steps_c)
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
        rounds, warmup = self.ctx.config.perf_rounds, self.ctx.config.perf_warmup
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

        return self.measurement.measure(
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
        base_model, cand_model = self.models.model(base_case), self.models.model(case)
        sc = Scenario(
            "prefill",
            f"prefill {prompt_len} tokens x {rows} prompts",
            lambda: run_prefill(base_model, base_case.technique, ids),
            lambda: run_prefill(cand_model, case.technique, ids),
            batch=rows,
            tokens=rows * prompt_len,
            extra={"prompt_len": float(prompt_len)},
            baseline_model=base_model,
        )
        return self.measurement.measure(case, base_case, sc, benchmark)

    def ttft(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        """Time to first token: ``generate`` of one token on the prompt batch (prefill, the first token's
        selection and generate's own set-up: what a caller waits before anything streams)."""

        base_case = self.baseline_case(case)
        tok = self.parity.tokenizer
        batch = encode(tok, self.parity.prompts, case.device)
        rows = int(batch.input_ids.shape[0])
        base_model, cand_model = self.models.model(base_case), self.models.model(case)
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
        return self.measurement.measure(case, base_case, sc, benchmark)

    def load(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        """``from_pretrained`` with the technique applied (and its ``prepare``), a fresh model every call: the
        session's model cache is not used. The memory round gives the peak RSS of a load."""

        s = self.ctx
        base_case = self.baseline_case(case)

        def loader(c: Case) -> Callable[[], None]:
            def run() -> None:
                model = load_model(s.source, c.technique, c.dtype, c.device)
                del model

            return run

        sc = Scenario("load", "model load", loader(base_case), loader(case), alias="load_s")
        try:
            return self.measurement.measure(case, base_case, sc, benchmark)
        finally:
            release_memory()

    def memory(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        """Weights, KV cache, peak device memory and peak host RSS of a forced-length ``generate`` on the prompt
        batch, after a warm-up call of each side; no paired timing (pytest-benchmark still times the call)."""

        base_case = self.baseline_case(case)
        tok, n = self.parity.tokenizer, self.ctx.config.perf_new_tokens
        batch = encode(tok, self.parity.prompts, case.device)
        # kernels without mask support run each prompt alone: both sides then do, so the KV bytes compare
        parts = [batch] if case.technique.padded_batches else batch.rows()
        base_model, cand_model = self.models.model(base_case), self.models.model(case)
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

        return self.measurement.measure(
            case, base_case, sc, benchmark, weights=(cand_model, base_model), timed=False, complete=kv_figures
        )

    def batching(self, case: Case, benchmark: Any | None = None) -> PerfResult:
        """Continuous batching (``generate_batch`` on every prompt) against sequential per-prompt ``generate`` on
        the same model, in paired rounds (:func:`pytest_infer.batching.measure_throughput`)."""

        cfg = self.ctx.config
        tok, prompts, n = self.parity.tokenizer, list(self.parity.prompts), cfg.perf_new_tokens
        model = self.models.model(case)
        timer = Timer(case.device)
        label = f"continuous batching {len(prompts)} requests x {n} tokens"
        drive = self.measurement.driver(benchmark, timer, self.measurement.group(label, case.dtype, case.device))
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
        decide_claims(result, self.expectations(case, result.scenario_key))
        self.measurement.record_benchmark(benchmark, run, timer, result, driven=drive is not None)
        return result

    # --- assertions (what the suite calls) -------------------------------------------------------
    def _check(self, case: Case, scenario: str, compute: Callable[[], PerfResult]) -> PerfResult:
        reason = unsupported(case.technique, scenario)
        if reason is not None:
            verdict.skip(reason)
        with self.models.guard(case):
            result = self.models.record(compute())
        if result.verdict == "inconclusive":
            verdict.inconclusive(result.message())
        return verdict.passed([result])[0]

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

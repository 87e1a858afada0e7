"""Continuous-batching throughput: ``generate_batch`` against sequential per-prompt ``generate``, tokens/s in
paired rounds."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_infer.core.technique import Technique
from pytest_infer.perf.timing import Driver, Timer, loop_driver, memory_round, paired_rounds
from pytest_infer.runtime.batch import encode
from pytest_infer.runtime.continuous_batching import batching_config, plain_attention, run_generate_batch
from pytest_infer.runtime.generation import greedy_generate


@dataclass
class ThroughputResult:
    """Generated tokens per second of ``generate_batch`` and of sequential per-prompt ``generate``."""

    technique: str
    device: str
    requests: int
    new_tokens: int
    rounds: int
    batch_tokens: int
    sequential_tokens: int
    batch_s: list[float]
    sequential_s: list[float]
    budget: dict[str, int]
    kind: str = "batching_throughput"

    @property
    def batch_seconds(self) -> float:
        return statistics.median(self.batch_s)

    @property
    def sequential_seconds(self) -> float:
        return statistics.median(self.sequential_s)

    @property
    def batch_tokens_per_s(self) -> float:
        return self.batch_tokens / self.batch_seconds

    @property
    def sequential_tokens_per_s(self) -> float:
        return self.sequential_tokens / self.sequential_seconds

    @property
    def ratio(self) -> float:
        """Throughput of continuous batching over sequential generation (> 1: batching pays)."""
        return self.batch_tokens_per_s / self.sequential_tokens_per_s

    def message(self) -> str:
        return (
            f"throughput of {self.technique} on {self.device}: generate_batch {self.batch_tokens_per_s:.4g} tokens/s "
            f"vs sequential generate {self.sequential_tokens_per_s:.4g} tokens/s = {self.ratio:.3g}x "
            f"({self.requests} requests x {self.new_tokens} tokens, median of {self.rounds} paired rounds)"
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(
            batch_seconds=self.batch_seconds,
            sequential_seconds=self.sequential_seconds,
            batch_tokens_per_s=self.batch_tokens_per_s,
            sequential_tokens_per_s=self.sequential_tokens_per_s,
            ratio=self.ratio,
        )
        return d


def measure_throughput(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    technique: Technique,
    new_tokens: int,
    *,
    baseline_model: Any = None,
    rounds: int = 3,
    warmup: int = 0,
    overrides: Mapping[str, Any] | None = None,
    memory: dict[str, int] | None = None,
    drive: Driver | None = None,
) -> ThroughputResult:
    """Time ``generate_batch`` on ``prompts`` against ``generate`` on each prompt alone (``baseline_model``, default
    the same model, run with :func:`plain_attention`) in alternating rounds (:func:`pytest_infer.measure.paired_rounds`,
    its ``drive``), after one untimed call of each side (the batching one under the memory probes when ``memory``
    is given: its peak device memory and host RSS go there) and ``warmup`` more. ``overrides`` change the
    ContinuousBatchingConfig (a perf run wants a budget larger than the tests' :data:`CB_BUDGET`; it stays
    explicit). Tokens are counted from what each side returned; a batching run with problems (missing request,
    wrong attention) raises :class:`BatchingError`."""
    import torch

    if rounds < 1:
        raise ValueError("measure_throughput needs at least one round")
    device = str(model.device)
    _, budget = batching_config(technique, device, overrides)  # refuse an implicit budget before any timing
    baseline = model if baseline_model is None else baseline_model
    inputs = [list(tokenizer(p)["input_ids"]) for p in prompts]
    rows = [encode(tokenizer, [p], str(baseline.device)) for p in prompts]
    # the same context, without the batching runner and its ContinuousBatchingConfig overrides
    sequential_technique = Technique(
        name=f"{technique.name}-sequential", family="custom", context=technique.context, probes=technique.probes
    )
    counts = {"batch": 0, "sequential": 0}

    def batch() -> None:
        run = run_generate_batch(model, tokenizer, inputs, technique, new_tokens, overrides=overrides)
        run.raise_for_problems()
        counts["batch"] = sum(len(t or []) for t in run.tokens)

    def sequential() -> None:
        with torch.no_grad(), plain_attention(baseline):
            outs = [
                greedy_generate(baseline, tokenizer, row, sequential_technique, new_tokens, scores=False)
                for row in rows
            ]
        counts["sequential"] = sum(len(o.tokens[0]) for o in outs)

    timer = Timer(device)
    sequential()
    probed, _ = memory_round(batch, device, timer)
    if memory is not None:
        memory.update(probed)
    seq_s, batch_s = paired_rounds(sequential, batch, timer, rounds, warmup, drive=drive or loop_driver)
    return ThroughputResult(
        technique=technique.name,
        device=device,
        requests=len(prompts),
        new_tokens=new_tokens,
        rounds=rounds,
        batch_tokens=counts["batch"],
        sequential_tokens=counts["sequential"],
        batch_s=batch_s,
        sequential_s=seq_s,
        budget=budget,
    )

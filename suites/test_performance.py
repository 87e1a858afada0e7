"""Speed and memory of every selected technique against the baseline, in the same session
(``--infer-suite perf``), one test per scenario so that ``-k`` selects them (``-k "prefill and prompt256"``,
``-k ttft``), through pytest-benchmark: ``--benchmark-autosave``, ``--benchmark-compare``,
``--benchmark-compare-fail=median:50%``, and our gate on what it does not compare,
``--infer-compare-fail=cpu_speedup:8%,load.cpu_speedup:30%,weight_bytes:5%``.

Each scenario times a first call alone (compilation), then a second call that sizes the samples under the
memory probes, then ``--infer-perf-rounds`` paired rounds against the baseline (short calls repeated within a
sample), the candidate's driven by pytest-benchmark in pedantic mode, so they are its rounds too
(docs/performance.md). Without pytest-benchmark (``-p no:benchmark``: the plugin then provides a
``benchmark`` fixture that is None; or xdist, where it disables itself) the tests still measure and decide, and say
that storage and comparison are off.
"""

from __future__ import annotations

import pytest

from pytest_infer.perf.scenarios import PREFILL_LENGTHS


def test_model_load(infer_case, infer_perf, benchmark):
    """``from_pretrained`` with the technique applied, a fresh model per call; peak host RSS of a load."""
    infer_perf.assert_load(infer_case, benchmark)


def test_decode_speed(infer_case, infer_perf, benchmark):
    """End-to-end greedy generate (forced length): ms/token, tokens/s, latency per token after the first, the
    first (compiling) call apart, weights and peak device memory."""
    infer_perf.assert_decode(infer_case, benchmark)


@pytest.mark.parametrize("prompt_len", PREFILL_LENGTHS, ids=[f"prompt{n}" for n in PREFILL_LENGTHS])
def test_prefill_latency(infer_case, infer_perf, benchmark, prompt_len):
    """One forward over prompts of exactly ``prompt_len`` tokens (KV cache built, last logits), prompt tokens/s."""
    infer_perf.assert_prefill(infer_case, prompt_len, benchmark)


def test_time_to_first_token(infer_case, infer_perf, benchmark):
    """``generate`` of one token on the prompt batch: what a caller waits before the first token."""
    infer_perf.assert_ttft(infer_case, benchmark)


def test_memory(infer_case, infer_perf, benchmark):
    """Weight bytes, KV-cache bytes, peak device memory and peak host RSS of a forced-length generate."""
    infer_perf.assert_memory(infer_case, benchmark)


def test_batching_throughput(batching_technique, infer_perf, benchmark):
    """Continuous batching: generate_batch on every prompt against sequential generate, tokens/s."""
    infer_perf.assert_batching(batching_technique, benchmark)

"""Continuous batching: the explicit KV budget, the watched runs, the checks' messages, the throughput measurement
(in this process, on the tiny model), and real sessions: the built-in paged techniques pass the generation suite,
planted faults (swapped, dropped, corrupted requests, attention left switched) fail with the request named."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_infer.checks.batching import budget_prompts
from pytest_infer.core.resources import default_prompts_file, embedded_model_path
from pytest_infer.core.stack import Stack
from pytest_infer.core.technique import Technique
from pytest_infer.parity.requests import BatchingResult, compare_requests
from pytest_infer.perf.throughput import measure_throughput
from pytest_infer.runtime.batch import encode
from pytest_infer.runtime.continuous_batching import (
    CB_BUDGET,
    BatchingError,
    BatchRun,
    Forward,
    cb_config,
    dispatched_attention,
    plain_attention,
    require_explicit_budget,
    run_generate_batch,
)
from pytest_infer.runtime.generated import Generated
from pytest_infer.runtime.generation import greedy_generate
from pytest_infer.runtime.loading import ModelSource, load_model, load_tokenizer
from pytest_infer.techniques.batching import paged_technique

PAGED_EAGER = paged_technique("paged|eager", "test")
PAGED_SDPA = paged_technique("paged|sdpa", "test")
PLAIN = Technique(name="plain", family="custom")  # per-prompt generate, as the model is loaded
PROMPTS = [line.strip() for line in default_prompts_file().read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(ModelSource(str(embedded_model_path())))


@pytest.fixture(scope="module")
def model() -> Iterator[Any]:
    model = load_model(ModelSource(str(embedded_model_path())), PAGED_EAGER, "float32", "cpu")
    # Speed only: the batching manager runs gc.collect() twice per call (0.5 s each in this process); what is alive
    # now stays out of those scans until the module is done.
    gc.freeze()
    yield model
    gc.unfreeze()


def _ids(tokenizer: Any, prompts: list[str]) -> list[list[int]]:
    return [list(tokenizer(p)["input_ids"]) for p in prompts]


# --- the explicit budget ----------------------------------------------------------------------------------------
def test_cb_config_sets_the_kv_budget_explicitly() -> None:
    config = cb_config()
    assert require_explicit_budget(config) == CB_BUDGET
    assert config.auto_switch_to_flash is False  # no silent switch to flash behind the technique
    with pytest.raises(BatchingError, match=r"leaves num_blocks unset: .* \(system RAM on CPU\)"):
        require_explicit_budget(cb_config(num_blocks=None))
    with pytest.raises(TypeError, match="not ContinuousBatchingConfig fields: max_batch_tokenz"):
        cb_config(max_batch_tokenz=8)


def test_generate_batch_receives_the_budget_and_the_cache_is_built_from_it(model: Any, tokenizer: Any) -> None:
    passed: list[Any] = []
    original = model.generate_batch

    def spy(*args: Any, **kwargs: Any) -> Any:
        passed.append(kwargs["continuous_batching_config"])
        return original(*args, **kwargs)

    model.generate_batch = spy
    try:
        run = run_generate_batch(model, tokenizer, _ids(tokenizer, PROMPTS[:3]), PAGED_EAGER, 4)
    finally:
        del model.generate_batch
    assert [require_explicit_budget(c) for c in passed] == [CB_BUDGET]
    # the paged cache the forwards saw was sized from the budget, not from the machine's memory
    assert run.cache["num_blocks"] == CB_BUDGET["num_blocks"]
    assert run.cache["max_batch_tokens"] == CB_BUDGET["max_batch_tokens"]
    assert run.cache["page_size"] == CB_BUDGET["page_size"]
    assert run.problems() == []


def test_budget_prompts_outgrow_one_batch(tokenizer: Any) -> None:
    limit = CB_BUDGET["max_batch_tokens"]
    prompts = budget_prompts(PROMPTS, tokenizer, limit)
    lengths = [len(x) for x in _ids(tokenizer, prompts)]
    assert prompts[: len(PROMPTS)] == PROMPTS
    assert sum(n > limit for n in lengths) >= 2 and sum(lengths) > 3 * limit
    assert len(set(lengths)) > len(lengths) // 2  # varied lengths
    one = budget_prompts(["Each instance is parametrized"], tokenizer, limit)  # a single short prompt still grows
    assert sum(len(x) for x in _ids(tokenizer, one)) > 3 * limit


# --- watched runs -----------------------------------------------------------------------------------------------
def test_run_over_the_budget_matches_per_prompt_generate(model: Any, tokenizer: Any) -> None:
    prompts = budget_prompts(PROMPTS, tokenizer, CB_BUDGET["max_batch_tokens"])
    run = run_generate_batch(model, tokenizer, _ids(tokenizer, prompts), PAGED_EAGER, 8)
    assert run.problems() == []
    assert run.requested_attention == "paged|eager" and {f.attention for f in run.forwards} == {"paged|eager"}
    assert len(run.forwards) > 1 and run.max_forward_tokens <= CB_BUDGET["max_batch_tokens"]
    with plain_attention(model):  # paged|eager has no causal mask outside the batching loop
        solo = Generated(
            [greedy_generate(model, tokenizer, encode(tokenizer, [p], "cpu"), PLAIN, 8).tokens[0] for p in prompts],
            None,
        )
    assert model.config._attn_implementation == "paged|eager"
    rows = compare_requests(solo, run, tokenizer, prompts, 0.0, 8)
    assert [r.status for r in rows] == ["match"] * len(prompts)


def test_attention_other_than_requested_fails_the_run(model: Any, tokenizer: Any) -> None:
    # paged|sdpa asks for SDPA (Transformers 5.x runs it as "sdpa"); this model runs paged|eager
    run = run_generate_batch(model, tokenizer, _ids(tokenizer, PROMPTS[:2]), PAGED_SDPA, 2)
    assert run.problems() == [
        "generate_batch call 1 ran attention 'paged|eager', requested 'sdpa': Transformers switched the "
        "implementation (auto_switch_to_flash, or an eager/sdpa fallback)"
    ]
    with pytest.raises(BatchingError, match=r"ran attention 'paged\|eager', requested 'sdpa'"):
        run.raise_for_problems()


def test_dispatched_attention_follows_the_installed_transformers() -> None:
    assert dispatched_attention("paged|eager") == "paged|eager"
    assert dispatched_attention("eager") == "paged|eager"  # switch_to_cb_friendly_attn
    assert dispatched_attention("paged|sdpa") == "sdpa"  # the paged| alias is gone on 5.x
    assert dispatched_attention("paged|flash_attention_2") == "flash_attention_2"


def test_flash_variants_are_gated_with_precise_reasons() -> None:
    from pytest_infer.techniques.batching import builtin

    flash = {t.name: t for t in builtin() if "flash" in t.name}
    cpu = Stack(device_kind="cpu", device_name="cpu")
    a10 = Stack(device_kind="cuda", device_name="A10", compute_capability=(8, 6), packages={"flash-attn": None})
    h100 = Stack(device_kind="cuda", device_name="H100", compute_capability=(9, 0), packages={"flash-attn": "2.8.3"})
    fa2, fa3 = flash["paged|flash_attention_2"], flash["paged|flash_attention_3"]
    assert fa2.runner == fa3.runner == "generate_batch" and fa2.family == "batching"
    assert fa2.skip_reason(cpu, "bfloat16") == "needs a cuda device, running on cpu"
    assert fa2.skip_reason(a10, "bfloat16") == "flash-attn not installed (pip install 'flash-attn>=2.3.3')"
    assert fa2.skip_reason(h100, "float32") == "paged|flash_attention_2 runs float16/bfloat16 only, not float32"
    assert fa2.skip_reason(h100, "bfloat16") is None
    assert fa3.skip_reason(a10, "bfloat16") == "needs compute capability >= 9.0, found 8.6"


# --- result messages --------------------------------------------------------------------------------------------
class Tok:
    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


def _run(tokens: list[list[int] | None], call: int = 1) -> BatchRun:
    return BatchRun(
        api="generate_batch",
        call=call,
        inputs=[[1] * 70, [1] * 12, [1] * 30],
        tokens=tokens,
        request_ids=[f"req_{i}" if t is not None else None for i, t in enumerate(tokens)],
        errors={},
        out_of_order=[],
        unmatched=[],
        forwards=[Forward("sdpa", True, 64, 2), Forward("sdpa", True, 40, 3)],
        cache={"num_blocks": 64, "max_batch_tokens": 64, "num_sectors": 64, "blocks_per_sector": 1},
        budget=dict(CB_BUDGET),
        requested_attention="sdpa",
        attention_before="sdpa",
        attention_after="sdpa",
        seconds=0.1,
    )


def _result(run: BatchRun, reference: Generated) -> BatchingResult:
    return BatchingResult(
        check="repeat_calls",
        technique="t",
        reference="eager",
        device="cpu",
        dtype="float32",
        reference_dtype="float32",
        new_tokens=4,
        near_tie=0.5,
        budget=run.budget,
        rows=compare_requests(reference, run, Tok(), ["a: ", "b: ", "c: "], 0.5, 4),
        problems=run.problems(),
        evidence=[run.evidence()],
    )


REFERENCE = Generated([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]], [[3.0] * 4, [3.0, 3.0, 0.1, 3.0], [3.0] * 4])


def test_divergence_names_the_request_the_step_and_the_tokens() -> None:
    result = _result(_run([[1, 2, 3, 4], [5, 6, 7, 8], [9, 7, 9, 9]]), REFERENCE)
    assert not result.passed
    assert result.failures == [
        "request 2 (req_2, 30 prompt tokens) in generate_batch call 1 diverged at step 1: reference 9 '<9>' "
        "(margin 3) vs candidate 7 '<7>'; near-tie threshold 0.5; text so far: 'c: <9>'"
    ]
    assert "batching repeat calls FAILED: t (float32) vs reference eager" in result.message()
    assert "1 longer than max_batch_tokens 64: prefilled in chunks" in result.message()
    data = result.to_dict()
    assert data["check"] == "batching" and data["variant"] == "repeat_calls" and data["passed"] is False
    assert data["budget"] == CB_BUDGET and data["rows"][2]["status"] == "diverged"


def test_divergence_at_a_reference_near_tie_is_accepted() -> None:
    result = _result(_run([[1, 2, 3, 4], [5, 6, 1, 1], [9, 9, 9, 9]]), REFERENCE)
    assert result.passed, result.message()
    assert "request 1 (req_1, 12 prompt tokens) in generate_batch call 1: near-tie at step 2" in result.message()


def test_missing_request_and_switched_attention_are_named() -> None:
    run = _run([[1, 2, 3, 4], [5, 6, 7, 8], None], call=2)
    run.attention_after = "paged|eager"
    result = _result(run, REFERENCE)
    assert result.failures == [
        "request 2 (30 prompt tokens) missing from generate_batch call 2: 2 of 3 requests came back",
        "generate_batch call 2 left the model's attention implementation switched: 'sdpa' before, 'paged|eager' after",
    ]
    assert result.metrics["missing"] == 1.0


def test_budget_not_applied_is_named() -> None:
    run = _run([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]])
    run.forwards.append(Forward("sdpa", True, 112, 3))
    run.cache["num_blocks"] = 93000
    assert run.problems() == [
        "generate_batch call 1: a forward processed 112 tokens > max_batch_tokens 64: the configured budget was not "
        "applied",
        "generate_batch call 1: the paged cache holds 93000 blocks, 64 configured: it was not sized from the explicit "
        "budget",
    ]


# --- throughput -------------------------------------------------------------------------------------------------
@pytest.mark.timing
def test_throughput_measurement_counts_both_sides(model: Any, tokenizer: Any) -> None:
    # a perf run may change the budget; it stays explicit
    with pytest.raises(BatchingError, match="leaves max_batch_tokens unset"):
        measure_throughput(model, tokenizer, PROMPTS[:2], PAGED_EAGER, 4, overrides={"max_batch_tokens": None})
    result = measure_throughput(
        model, tokenizer, PROMPTS[:2], PAGED_EAGER, 4, rounds=2, warmup=1, overrides={"max_batch_tokens": 32}
    )
    data = result.to_dict()
    assert data["batch_tokens"] == data["sequential_tokens"] == 8
    assert len(data["batch_s"]) == len(data["sequential_s"]) == 2
    assert data["batch_tokens_per_s"] > 0 and data["sequential_tokens_per_s"] > 0
    assert data["ratio"] == pytest.approx(data["batch_tokens_per_s"] / data["sequential_tokens_per_s"])
    assert data["budget"] == {**CB_BUDGET, "max_batch_tokens": 32}
    assert re.search(r"generate_batch [\d.e+]+ tokens/s vs sequential generate [\d.e+]+ tokens/s", result.message())


# --- real sessions ----------------------------------------------------------------------------------------------
PLANTED = """
import gc

import transformers.generation.continuous_batching  # noqa: F401  (with torch: imported now, frozen below)
from transformers import AutoModelForCausalLM  # noqa: F401

from pytest_infer import Technique

# Speed only: Transformers' batching manager runs gc.collect() twice per generate_batch (0.5 s each in a process
# holding torch); the objects of the imports above are left out of those scans. Nothing under test depends on it.
gc.freeze()


def wrap_generate_batch(edit):
    def prepare(model):
        original, calls = model.generate_batch, []

        def generate_batch(*args, **kwargs):
            out = original(*args, **kwargs)
            calls.append(1)
            return edit(model, out, len(calls), kwargs)

        model.generate_batch = generate_batch
        return model

    return prepare


def swap_requests_1_and_2(model, out, call, kwargs):
    one, two = list(out.values())[1:3]
    one.generated_tokens, two.generated_tokens = two.generated_tokens, one.generated_tokens
    return out


def drop_last_after_first_call(model, out, call, kwargs):
    if call >= 2:
        out.pop(list(out)[-1])
    return out


def leave_attention_switched(model, out, call, kwargs):
    model.set_attn_implementation("eager")
    return out


def corrupt_chunked_prefill(model, out, call, kwargs):
    # wrong only for prompts longer than one batch (prefilled in chunks), from their 4th token on
    limit = kwargs["continuous_batching_config"].max_batch_tokens
    for result in out.values():
        if len(result.prompt_ids) > limit:
            result.generated_tokens = result.generated_tokens[:3] + [(t + 1) % 2048 for t in result.generated_tokens[3:]]
    return out


def lossy_results(model):
    original = model.init_continuous_batching

    def init_continuous_batching(*args, **kwargs):
        manager = original(*args, **kwargs)
        get_result = manager.get_result

        def lossy(*a, **k):
            result = get_result(*a, **k)
            if result is not None and result.request_id == "request_1":
                result.generated_tokens = result.generated_tokens[:-1]
            return result

        manager.get_result = lossy
        return manager

    model.init_continuous_batching = init_continuous_batching
    return model


def pytest_infer_register_techniques(registry):
    def add(name, prepare, attention="paged|eager"):
        registry.add(Technique(name=name, family="batching", load_kwargs={"attn_implementation": attention},
                               runner="generate_batch", prepare=prepare))

    add("cb_swapped", wrap_generate_batch(swap_requests_1_and_2))
    add("cb_drops_second", wrap_generate_batch(drop_last_after_first_call))
    add("cb_left_switched", wrap_generate_batch(leave_attention_switched), attention="sdpa")
    add("cb_chunk_corrupt", wrap_generate_batch(corrupt_chunked_prefill))
    add("cb_lossy_results", lossy_results)
"""

# the real techniques everywhere; each planted fault only where it is meant to show (and, for the corrupted chunked
# prefill, in generation parity too: it passes there, since the bundled prompts fit one batch)
SELECTION = (
    "not cb_ "
    "or (cb_swapped and (test_generation_parity or test_budget_exceeding_parity)) "
    "or ((cb_drops_second or cb_left_switched) and test_repeated_generate_batch) "
    "or (cb_chunk_corrupt and (test_budget_exceeding_parity or test_generation_parity)) "
    "or (cb_lossy_results and test_manager_api)"
)


def _outcomes(stdout: str) -> dict[str, str]:
    """node id (after the file name) -> PASSED/FAILED/ERROR, from the -rA short summary."""
    found = re.findall(r"^(PASSED|FAILED|ERROR) \S+?\.py::(\S+)", stdout, re.M)
    return {node: outcome for outcome, node in found}


def test_generation_suite_passes_paged_techniques_and_fails_planted_faults(
    pytester: pytest.Pytester, run_infer
) -> None:
    """One inner session (``--infer-technique batching`` selects the built-ins and the planted ones alike)."""
    pytester.makeconftest(PLANTED)
    result = run_infer(
        "--infer-suite",
        "generation",
        "--infer-technique",
        "batching",
        "--infer-new-tokens",
        "16",
        "-k",
        SELECTION,
        "-rA",
    )
    out = result.stdout.str()
    expected = {
        f"{test}[cpu-float32-{name}]": "PASSED"
        for name in ("paged|sdpa", "paged|eager")
        for test in (
            "test_budget_exceeding_parity",
            "test_repeated_generate_batch",
            "test_manager_api",
            "test_generation_parity",
        )
    }
    expected.update(
        {
            "test_budget_exceeding_parity[cpu-float32-cb_swapped]": "FAILED",
            "test_budget_exceeding_parity[cpu-float32-cb_chunk_corrupt]": "FAILED",
            "test_repeated_generate_batch[cpu-float32-cb_drops_second]": "FAILED",
            "test_repeated_generate_batch[cpu-float32-cb_left_switched]": "FAILED",
            "test_manager_api[cpu-float32-cb_lossy_results]": "FAILED",
            "test_generation_parity[cpu-float32-cb_swapped]": "FAILED",
            "test_generation_parity[cpu-float32-cb_chunk_corrupt]": "PASSED",
        }
    )
    assert _outcomes(out) == expected, out
    # flash variants: skipped with the reason
    for line in (
        "*SKIPPED ?3? *test_batching.py: paged|flash_attention_2: needs a cuda device, running on cpu",
        "*SKIPPED ?3? *test_batching.py: paged|flash_attention_3: needs a cuda device, running on cpu",
        # the real runs: the requested attention ran, over a prompt set larger than one batch
        "*generate_batch call 2: 10 requests, prompts *, 2 longer than max_batch_tokens 64: prefilled in chunks), "
        "* forwards of at most 64 tokens, attention 'sdpa', paged cache of 64 blocks, *",
        "*manager call 1: 10 requests, * attention 'paged|eager', paged cache of 64 blocks, *",
        # generation parity: the two swapped requests (rows in input order) diverge
        "*generation parity FAILED: cb_swapped (float32)*",
        "*- row 1 diverged at step 0: reference * vs candidate *",
        "*- row 2 diverged at step 0: reference * vs candidate *",
        # the batching checks name the request, the call, the step and the tokens
        "*batching budget parity FAILED: cb_swapped*",
        "*- request 1 (req_1, * prompt tokens) in generate_batch call 1 diverged at step 0: reference * vs candidate *",
        "*- request 2 (req_2, * prompt tokens) in generate_batch call 1 diverged at step 0: reference * vs candidate *",
        "*batching budget parity FAILED: cb_chunk_corrupt*",
        "*- request 8 (req_8, * prompt tokens) in generate_batch call 1 diverged at step 3: reference *",
        "*batching repeat calls FAILED: cb_drops_second*",
        "*- request 9 (* prompt tokens) missing from generate_batch call 2: 9 of 10 requests came back",
        "*- generate_batch call 1 left the model's attention implementation switched: 'sdpa' before, 'eager' after",
        "*- request 1 (request_1, * prompt tokens) in manager call 1: candidate produced 15 of 16 tokens",
    ):
        result.stdout.fnmatch_lines([line])
    assert "missing from generate_batch call 1" not in out  # the first call of cb_drops_second is whole

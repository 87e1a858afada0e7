"""Issue 19's checks of what stays put: sampling reproducibility, memory stability and long context. Unit tests of
their verdicts, then each check run once against its planted fault (and passing on a built-in technique) in
pytester sessions."""

from __future__ import annotations

import json

import pytest

from pytest_infer.parity.growth import HOST_FLOOR, Growth, least_squares, memory_stability
from pytest_infer.parity.sampling import NOISE_L1, SampledRow, SamplingResult, departures, first_parting
from pytest_infer.runtime.checkpoint import length_problems

MiB = 2**20


# --- memory stability: the slope test ------------------------------------------------------------------------
def test_least_squares_slope_and_its_error() -> None:
    assert least_squares([0, 2, 4, 6]) == (2.0, 0.0)
    slope, err = least_squares([0, 3, 4, 7])
    assert slope == pytest.approx(2.2) and err > 0
    assert least_squares([5]) == (0.0, 0.0)


def test_a_steady_leak_grows_noise_and_a_single_step_do_not() -> None:
    base = 500 * MiB
    leak = [base + 4 * MiB * i for i in range(10)]
    assert Growth("host RSS", leak, 3, HOST_FLOOR).growing
    # trimmed RSS moving by a few pages either way (measured: -16..+32 KiB per call)
    noise = [base + (8192 if i % 2 else -4096) * (i % 3) for i in range(10)]
    assert not Growth("host RSS", noise, 3, HOST_FLOOR).growing
    # one arena mapped once after warm-up: a step, not a growth per call
    step = [base] * 6 + [base + 8 * MiB] * 4
    assert not Growth("host RSS", step, 3, HOST_FLOOR).growing
    # below the floor: 64 KiB per call is not resolved on the host, but is on the device (exact count)
    small = [base + 64 * 1024 * i for i in range(10)]
    assert not Growth("host RSS", small, 3, HOST_FLOOR).growing
    assert Growth("device allocated", small, 3, 4096).growing


def test_memory_result_message_and_metrics() -> None:
    host = [100 * MiB + 4 * MiB * i for i in range(10)]
    result = memory_stability(host, None, technique="t", device="cpu", dtype="float32", call="generate 16 tokens")
    assert not result.passed
    assert result.failures[0].startswith("host RSS +4 MiB per call (± 0 MiB, 6 of 6 later calls grew it, 24 MiB in all")
    assert "identical calls of generate 16 tokens" in result.failures[0]
    metrics = result.to_dict()["metrics"]
    assert metrics["host_growth_per_call"] == 4 * MiB and metrics["device_growth_per_call"] is None
    flat = memory_stability([100 * MiB] * 10, [10] * 10, technique="t", device="cuda", dtype="float16", call="x")
    assert flat.passed and [m.memory for m in flat.memories] == ["host RSS", "device allocated"]


# --- sampling: the L1 rule ------------------------------------------------------------------------------------
class _Tok:
    def decode(self, ids: list[int]) -> str:
        return f"<{ids[0]}>"


def _sampled(tokens: list[list[int]], probs: list[list[list[float]]]):
    import torch

    from pytest_infer.runtime.sampling import Sampled

    return Sampled(tokens, torch.tensor(probs))


def test_a_parting_is_explained_only_where_the_distributions_differ() -> None:
    same = [[0.5, 0.3, 0.2], [0.6, 0.2, 0.2]]
    ref = _sampled([[0, 1]], [same])
    reseeded = _sampled([[1, 1]], [same])  # another token where the distributions are equal
    (row,) = first_parting(ref, reseeded, _Tok())
    assert (row.step, row.expected, row.drawn, row.l1, row.explained) == (0, 0, 1, 0.0, False)
    moved = _sampled([[0, 2]], [[same[0], [0.5, 0.25, 0.25]]])  # step 1 differs by L1 0.2
    (row,) = first_parting(ref, moved, _Tok())
    assert row.step == 1 and row.l1 == pytest.approx(0.2) and row.explained
    assert first_parting(ref, ref, _Tok()) == []
    assert departures(ref) == (2, 1)  # step 1 drew token 1 where token 0 was the most likely


def test_sampling_verdicts() -> None:
    def result(**kw) -> SamplingResult:
        return SamplingResult("t", "eager", "cpu", "float32", 7, 1.0, 16, 8, draws=128, departures=40, **kw)

    assert result(versus_reference=[]).passed
    bad = result(versus_reference=[SampledRow(3, 0, 5, 9, 1e-7, "a", "b")])
    assert bad.failures == [
        "in 1 of 8 prompts the technique drew other tokens than the reference eager with the same seed where their "
        f"distributions differ by L1 < {NOISE_L1:g} (float noise explains such a parting with a chance under that L1): "
        "the technique's random stream differs from the reference's (a reseeded generator, extra or missing draws): "
        "row 3 step 0: 9 'b' vs eager's 5 'a' (L1 1e-07)"
    ]
    assert result(versus_reference=[SampledRow(3, 4, 5, 9, 0.01)]).passed
    again = result(repeat=[SampledRow(1, 2, 5, 9, 0.0)])
    assert not again.passed and "the random stream was not reproduced" in again.failures[0]
    nondeterministic = result(repeat=[SampledRow(1, 2, 5, 9, 0.3)])
    assert "not deterministic" in nondeterministic.failures[0]
    peaked = SamplingResult("t", "eager", "cpu", "float32", 7, 1.0, 16, 8, draws=128, departures=0)
    assert peaked.inconclusive and "nothing was proven" in peaked.message()


# --- long context: the lengths ------------------------------------------------------------------------------
def test_context_lengths_are_checked_against_the_model_and_the_new_tokens() -> None:
    config = {"max_position_embeddings": 512}
    assert length_problems(config, (16, 64), 32, 7, 512) == []
    (problem,) = length_problems(config, (16, 64), 32, 7, 600)
    assert problem == ("context", "600 positions are more than the model takes 512 positions "
                       "(max_position_embeddings in config.json); give at most 512")  # fmt: skip
    (problem,) = length_problems(config, (16, 64), 32, 7, 64)
    assert problem[0] == "context" and "leave no prompt before 64 new tokens" in problem[1]


def test_long_batch_has_exact_lengths_and_reads_a_short_text_again() -> None:
    from transformers import AutoTokenizer

    from pytest_infer.core.resources import embedded_model_path
    from pytest_infer.runtime.long_context import long_batch

    tok = AutoTokenizer.from_pretrained(embedded_model_path(), padding_side="left")
    batch = long_batch(tok, "A journal records every change made to the store.", 448, "cpu")
    assert batch.input_ids.shape == (2, 448)
    assert batch.attention_mask.sum(-1).tolist() == [448, 336]
    assert batch.input_ids[0, 0].item() == tok.bos_token_id and batch.input_ids[1, 112].item() == tok.bos_token_id


# --- each check against its planted fault ---------------------------------------------------------------------
PLANTED = """
import os

import torch
from transformers import DynamicCache

from pytest_infer import Technique


def reseeding(model):
    # re-seeds torch's generator before every forward: reproducible, but not the stream generate() was seeded with
    def hook(module, args):
        torch.manual_seed(0)

    model.register_forward_pre_hook(hook)
    return model


def urandom_seeded(model):
    # seeds from the OS before every forward: no two runs draw alike
    def hook(module, args):
        torch.manual_seed(int.from_bytes(os.urandom(4), "little"))

    model.register_forward_pre_hook(hook)
    return model


KEPT = []


def leaking(model):
    # keeps 1 MiB from every forward (a debugging list nobody empties)
    def hook(module, args, output):
        KEPT.append(torch.ones(256 * 1024))

    model.register_forward_hook(hook)
    return model


class WrongPast300(DynamicCache):
    # a KV cache that is right until it holds 300 positions, then returns keys past 300 scaled down
    LIMIT = 300

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if keys.shape[-2] > self.LIMIT:
            keys = keys.clone()
            keys[..., self.LIMIT :, :] *= 0.5
        return keys, values


def wrong_past_300(model):
    original = model.generate

    def generate(*args, **kwargs):
        if "past_key_values" not in kwargs and "cache" not in kwargs:
            kwargs["cache"] = WrongPast300()
        return original(*args, **kwargs)

    model.generate = generate
    return model


def pytest_infer_register_techniques(registry):
    sdpa = {"attn_implementation": "sdpa"}
    registry.add(Technique(name="reseeding", family="custom", load_kwargs=sdpa, prepare=reseeding))
    registry.add(Technique(name="urandom_seeded", family="custom", load_kwargs=sdpa, prepare=urandom_seeded))
    registry.add(Technique(name="leaking", family="custom", load_kwargs=sdpa, prepare=leaking))
    registry.add(Technique(name="wrong_past_300", family="caching", load_kwargs=sdpa, prepare=wrong_past_300,
                           runner="generate"))
"""


@pytest.fixture
def planted(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(PLANTED)
    return pytester


def test_reseeded_and_unseeded_generators_fail_sampling_and_sdpa_passes(planted: pytest.Pytester, run_infer) -> None:
    result = run_infer(
        "--infer-suite", "stability", "--infer-technique", "reseeding,urandom_seeded,sdpa", "-k", "sampling",
        "--infer-report", "r.json",
    )  # fmt: skip
    result.assert_outcomes(failed=2, passed=1, deselected=6)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*sampling reproducibility FAILED: reseeding (float32) on cpu, seed 1234, temperature 1, 8 prompts x 16 "
            "sampled tokens, twice; * of 128 draws did not take the top token",
            "*- in * of 8 prompts the technique drew other tokens than the reference eager with the same seed where "
            "their distributions differ by L1 < 0.0001 (*): the technique's random stream differs from the "
            "reference's (a reseeded generator, extra or missing draws): row * step *: * vs eager's * (L1 *)*",
        ]
    )
    result.stdout.fnmatch_lines(["*- not reproducible with seed 1234: in * of 8 prompts run 2 drew other tokens than "
                                 "run 1 where their distributions were identical (L1 0): the random stream was not "
                                 "reproduced (*): row * step *: * vs run 1's * (L1 0)*"])  # fmt: skip
    assert "sampling reproducibility FAILED: sdpa" not in out
    result.stdout.fnmatch_lines(
        ["technique  *sampling", "reseeding  *FAIL *", "urandom_seeded  *FAIL *", "sdpa  *pass */128"]
    )
    report = json.loads((planted.path / "r.json").read_text())
    sdpa = next(r for r in report["results"] if r["technique"] == "sdpa")
    assert sdpa["check"] == "sampling" and sdpa["passed"] and sdpa["metrics"]["departures"] > 10
    assert all(r["l1"] >= NOISE_L1 for r in sdpa["versus_reference"])  # any parting of sdpa's is explained


def test_a_tensor_kept_per_call_fails_memory_stability_and_sdpa_passes(planted: pytest.Pytester, run_infer) -> None:
    result = run_infer(
        "--infer-suite", "stability", "--infer-technique", "leaking,sdpa", "-k", "memory", "--infer-report", "r.json"
    )  # fmt: skip
    result.assert_outcomes(failed=1, passed=1, deselected=4)
    result.stdout.fnmatch_lines(
        [
            "*memory stability FAILED: leaking (float32) on cpu, 10 identical calls of generate 16 tokens x 8 prompts, "
            "the first 3 left out",
            "*- host RSS +16 MiB per call (± * MiB, 6 of 6 later calls grew it, 9* MiB in all; decided at > 0.25 MiB and "
            "> 3 standard errors): it keeps growing over 10 identical calls of generate 16 tokens x 8 prompts*",
        ]
    )
    result.stdout.fnmatch_lines(["technique  *memory", "leaking  *FAIL +16*K/call", "sdpa  *pass *K/call"])
    report = json.loads((planted.path / "r.json").read_text())
    sdpa = next(r for r in report["results"] if r["technique"] == "sdpa")
    assert sdpa["passed"] and abs(sdpa["metrics"]["host_growth_per_call"]) < HOST_FLOOR


def test_a_cache_wrong_past_300_tokens_fails_only_with_a_long_context(planted: pytest.Pytester, run_infer) -> None:
    args = ("--infer-suite", "generation", "--infer-technique", "wrong_past_300,sdpa", "-k", "generation_parity")
    args += ("--infer-new-tokens", "16,32")
    short = run_infer(*args)
    short.assert_outcomes(passed=2, deselected=short.parseoutcomes()["deselected"])  # 52 positions at most: right
    long = run_infer(*args, "--infer-context", "512", "--infer-report", "r.json")
    long.assert_outcomes(failed=1, passed=1, deselected=long.parseoutcomes()["deselected"])
    long.stdout.fnmatch_lines(
        [
            "*generation parity FAILED: wrong_past_300 (float32) vs reference eager (float32) on cpu, 2 prompts x 32 "
            "greedy tokens, long prompts generated up to 512 positions (--infer-context)",
            "*- row 0 diverged at step *: reference * (margin *) vs candidate * (margin *)*text so far: '…*",
        ]
    )
    report = json.loads((planted.path / "r.json").read_text())
    runs = {(r["technique"], r["variant"]): r["passed"] for r in report["results"] if r["check"] == "generation"}
    assert runs == {
        ("wrong_past_300", "16 tokens"): True,
        ("wrong_past_300", "32 tokens"): True,
        ("wrong_past_300", "context 512"): False,
        ("sdpa", "16 tokens"): True,
        ("sdpa", "32 tokens"): True,
        ("sdpa", "context 512"): True,  # the untouched backend agrees over the long context
    }


def test_a_context_the_model_cannot_take_is_a_usage_error(pytester: pytest.Pytester, run_infer) -> None:
    result = run_infer("--infer-suite", "generation", "--infer-context", "600")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--infer-context: 600 positions are more than the model takes 512 positions*"])

"""Proof that the parity engine catches the faults users meet: each planted fault is registered as a
technique from a test's conftest, and each must FAIL with a message that points at it."""

from __future__ import annotations

import json

import pytest

PLANTED = """
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from pytest_infer import Technique
from pytest_infer.techniques.attention import attention_function_technique


def maskless(module, query, key, value, attention_mask, **kwargs):
    # ignores the padding mask, keeps causality: right on unpadded prompts, wrong on padded rows
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, None, is_causal=query.shape[2] > 1, **kwargs)


def nan_on_masked_rows(module, query, key, value, attention_mask, **kwargs):
    out, weights = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None:
        keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask > torch.finfo(attention_mask.dtype).min / 2
        dead = ~keep.any(dim=-1)[:, 0]  # [batch, query]: rows with no key to attend to
        out = out.masked_fill(dead[:, :, None, None], float("nan"))
    return out, weights


def perturb_layer(index, scale):
    def prepare(model):
        layer = model.model.layers[index]

        def hook(module, inputs, output):
            if isinstance(output, tuple):
                return (output[0] * scale,) + tuple(output[1:])
            return output * scale

        layer.register_forward_hook(hook)
        return model

    return prepare


class ForgetfulCache(DynamicCache):
    # a KV cache that is right until it holds LIMIT positions, then loses its oldest entries
    LIMIT = 72

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if keys.shape[-2] > self.LIMIT:
            keys = keys.clone()
            keys[..., : keys.shape[-2] - self.LIMIT, :] = 0.0
        return keys, values


def forgetful(model):
    original = model.generate

    def generate(*args, **kwargs):
        kwargs.setdefault("past_key_values", ForgetfulCache())
        return original(*args, **kwargs)

    model.generate = generate
    return model


def my_kernel(module, query, key, value, attention_mask, **kwargs):
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def no_kernel_here(model):
    # a library that finds no kernel for this device and quietly registers sdpa under the kernel's name:
    # same name, bit-identical to sdpa
    AttentionInterface.register("fallback_attn", sdpa_attention_forward)
    return model


def pytest_infer_register_techniques(registry):
    registry.add(attention_function_technique("maskless", maskless))
    registry.add(attention_function_technique("fallback_attn", my_kernel, prepare=no_kernel_here))
    registry.add(attention_function_technique("nan_masked_rows", nan_on_masked_rows))
    registry.add(Technique(name="layer2_off", family="custom", load_kwargs={"attn_implementation": "sdpa"},
                           prepare=perturb_layer(2, 1.05)))
    registry.add(Technique(name="forgetful_cache", family="caching", load_kwargs={"attn_implementation": "sdpa"},
                           prepare=forgetful, runner="generate"))
"""


@pytest.fixture
def planted(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(PLANTED)
    return pytester


def test_mask_ignoring_attention_passes_unpadded_and_fails_padded(planted: pytest.Pytester, run_infer) -> None:
    (planted.path / "one.txt").write_text("Return the result of shifting the digits of the first operand\n")
    result = run_infer(
        "--infer-suite", "parity", "--infer-technique", "maskless", "--infer-prompts", "one.txt", "-k", "logit_parity"
    )
    result.assert_outcomes(passed=1)  # one prompt: nothing to mask

    result = run_infer("--infer-suite", "parity", "--infer-technique", "maskless")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["*logit parity FAILED: maskless (float32)*", "*logit parity FAILED: maskless ?left+? padding? (float32)*"]
    )


def test_nan_on_fully_masked_rows_is_found_with_row_and_position(planted: pytest.Pytester, run_infer) -> None:
    result = run_infer("--infer-suite", "parity", "--infer-technique", "nan_masked_rows", "-k", "padded")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*candidate logits contain NaN/Inf at * position(s) in row(s) *; first at row *, position * (* position)*"]
    )


def test_attention_that_falls_back_to_sdpa_fails_its_probe(planted: pytest.Pytester, run_infer) -> None:
    result = run_infer("--infer-suite", "parity", "--infer-technique", "fallback_attn,sdpa", "-k", "logit_parity")
    result.assert_outcomes(failed=1, passed=1)  # the planted fallback fails, the built-in passes
    assert "FAILED test_parity.py::test_logit_parity[cpu-float32-fallback_attn]" in result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*fallback_attn: attention function 'my_kernel' ran 0 times in * forward(s) of the model: the requested*"]
    )


def test_perturbed_layer_is_named(planted: pytest.Pytester, run_infer) -> None:
    result = run_infer("--infer-suite", "parity", "--infer-technique", "layer2_off", "-k", "logit_parity")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*first diverging layer: model.layers.2 (its own output: none of its parts parted first): relative error *"]
    )


def test_cache_wrong_past_a_length_fails_only_the_long_generation(planted: pytest.Pytester, run_infer) -> None:
    result = run_infer(
        "--infer-suite",
        "generation",
        "--infer-technique",
        "forgetful_cache",
        "--infer-new-tokens",
        "16,64",
        "-k",
        "generation_parity",  # (the cache checks also catch it: class ForgetfulCache, not the DynamicCache asked for)
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert (
        "generation parity FAILED: forgetful_cache (float32) vs reference eager (float32) on cpu, 8 prompts x 64" in out
    )
    # the short run stays within the cache's limit and passes
    assert (
        "generation parity FAILED: forgetful_cache (float32) vs reference eager (float32) on cpu, 8 prompts x 16"
        not in out
    )
    result.stdout.fnmatch_lines(
        [
            "*row * diverged at step *: reference * (margin *) vs candidate * (margin *); near-tie threshold *; text so far: *"
        ]
    )


def test_untouched_backends_pass_padding_and_generation(run_infer) -> None:
    result = run_infer("--infer-suite", "parity,generation", "--infer-technique", "sdpa,sdpa_math,paged|eager")
    # paged|eager has no plain forward: logits/padding skip (2); it runs generation parity and 3 batching checks
    result.assert_outcomes(passed=10, skipped=2)


SLOW = """
import time
from pytest_infer import Technique


def slowed(model):
    forward = model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.05)  # a regression: 50 ms more per forward call
        return forward(*args, **kwargs)

    model.forward = slow_forward
    return model


def pytest_infer_register_techniques(registry):
    registry.add(Technique(name="sdpa_slowed", family="custom", load_kwargs={"attn_implementation": "sdpa"},
                           prepare=slowed))
"""


@pytest.mark.timing
def test_slowed_technique_fails_the_speed_gate(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(SLOW)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.infer_speedup(min=0.5)
        def test_speed(infer_case, infer_perf, benchmark):
            infer_perf.assert_decode(infer_case, benchmark)
        """
    )
    result = run_infer(
        "--infer-technique", "sdpa,sdpa_slowed", "--infer-perf-rounds", "6", "--infer-perf-new-tokens", "8"
    )
    outcomes = result.parseoutcomes()
    # the slowed technique fails; plain sdpa passes, or is INCONCLUSIVE (skipped) when the shared machine
    # is too noisy to decide - never failed
    assert outcomes.get("failed") == 1 and outcomes.get("passed", 0) + outcomes.get("skipped", 0) == 1, (
        result.stdout.str()
    )
    assert (
        "FAILED test_slowed_technique_fails_the_speed_gate.py::test_speed[cpu-float32-sdpa_slowed]"
        in result.stdout.str()
    )
    result.stdout.fnmatch_lines(["*FAIL: decode_speedup * ?95 %: *, *? >= 0.5 expected (@infer_speedup)*"])
    assert "test_speed[cpu-float32-sdpa_slowed]" in result.stdout.str()


RECOMPILING = """
import torch

from pytest_infer import Technique
from pytest_infer.techniques.compilation import max_cache_len
from pytest_infer.core.technique import Lazy


def compile_static_shapes(model):
    # a compiled path specialised on every shape: a new prompt length compiles again
    model.forward = torch.compile(model.forward, dynamic=False)
    return model


CALLS = {"n": 0}


def recompile_every_call(model):
    # the transformers #37908 family: a Python counter read in a compiled region is guarded on its value, so every
    # call compiles again until torch's recompile limit (8), after which the frame silently runs uncompiled
    head = model.lm_head
    original = head.forward

    def forward(hidden_states):
        CALLS["n"] += 1
        return original(hidden_states) * (CALLS["n"] > 0)  # the counter is read in the graph: guarded on its value

    head.forward = torch.compile(forward, backend="eager")  # a cheap backend: the fault, not inductor, is tested
    return model


def pytest_infer_register_techniques(registry):
    registry.add(Technique(name="every_call", family="compilation", load_kwargs={"attn_implementation": "sdpa"},
                           prepare=recompile_every_call, compiled=True))
    registry.add(Technique(
        name="recompiling", family="compilation", load_kwargs={"attn_implementation": "sdpa"},
        generate_kwargs={"cache_implementation": "static", "max_cache_len": Lazy(max_cache_len), "disable_compile": True},
        prepare=compile_static_shapes, runner="generate", compiled=True,
    ))
"""


def test_compiled_path_that_recompiles_fails_the_guard(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(RECOMPILING)
    result = run_infer(
        "--infer-suite",
        "generation",
        "--infer-technique",
        "recompiling,every_call,static_compile",
        "-k",
        "recompiles",
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*recompile guard FAILED: every_call (float32) on cpu: warm-up compiled 8 graph(s)*; 0 recompile(s) in an "
            "identical call; 0 recompile(s) in 3 further calls*",
            "*torch.compile hit its recompile limit: recompile_limit (8) for 'forward' (*conftest.py:*), last failed "
            "guard: */7: G?'CALLS'??'n'? == 7 *; from then on this frame runs uncompiled*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*recompile guard FAILED: recompiling (float32) on cpu: warm-up compiled * graph(s)*; * recompile(s) in 3 further calls*",
            "*recompilation(s) after warm-up over 3 calls: shorter prompts, max_new_tokens 24, max_new_tokens 8*",
            "*recompiled '*' (*): guard failed: *size mismatch*",
        ]
    )


BATCH_DEPENDENT = """
import torch

from pytest_infer import Technique


def leaky_norm(model):
    # a final norm whose statistics are reduced over the batch's rows too: right for a prompt alone, wrong in a batch
    norm = model.model.norm

    def forward(hidden_states):
        h = hidden_states.float()
        variance = h.pow(2).mean(-1, keepdim=True).mean(0, keepdim=True)
        return norm.weight * (h * torch.rsqrt(variance + norm.variance_epsilon)).to(hidden_states.dtype)

    norm.forward = forward
    return model


def pytest_infer_register_techniques(registry):
    registry.add(Technique(name="batch_leak", family="custom", load_kwargs={"attn_implementation": "sdpa"},
                           prepare=leaky_norm))
    # promises bitwise invariance, which CPU float32 GEMMs do not give across batch sizes
    registry.add(Technique(name="sdpa_bitwise", family="custom", load_kwargs={"attn_implementation": "sdpa"},
                           batch_invariant=True))
"""


def test_batch_dependent_reduction_fails_batch_invariance(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(BATCH_DEPENDENT)
    result = run_infer(
        "--infer-suite",
        "stability",
        "--infer-technique",
        "batch_leak,sdpa,sdpa_bitwise",
        "--infer-report",
        "r.json",
        "-k",
        "invariance",
    )  # (run_infer validates r.json against the shipped JSON Schema)
    result.assert_outcomes(failed=2, passed=1, deselected=6)  # the planted reduction and the broken promise fail
    result.stdout.fnmatch_lines(
        [
            "*batch invariance FAILED: batch_leak (float32) on cpu: one prompt (* positions) alone vs 7 batch "
            "placements (sizes 2-8, first/middle/last), max_abs <= 0.0001; worst batch *",
            "*- batch 2, first: max_abs * against the prompt alone > 0.0001 (10 x the reference's padded-batch noise *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*- batch 8, row 4: * of * positions differ from the prompt alone (max_abs *); the technique promises bitwise*"
        ]
    )
    result.stdout.fnmatch_lines(["technique  *invariance", "batch_leak  *FAIL *", "sdpa  *pass *"])  # the matrix
    report = json.loads((pytester.path / "r.json").read_text())
    leak = next(r for r in report["results"] if r["technique"] == "batch_leak")
    assert leak["check"] == "invariance" and not leak["passed"] and leak["metrics"]["max_abs"] > 0.1
    assert [(p["size"], p["row"]) for p in leak["placements"]] == [
        (2, 0),
        (2, 1),
        (3, 1),
        (4, 3),
        (8, 0),
        (8, 4),
        (8, 7),
    ]

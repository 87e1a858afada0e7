"""KV-cache techniques as users meet them: every CPU-capable cache passes generation parity and the
cache checks, also on a sliding-window architecture; planted faults (a silent fallback to another cache,
a generate that consumes its cache_config, a cache that holds too much) fail with the reason."""

from __future__ import annotations

import pytest

from pytest_infer.checks.caching import cache_problems
from pytest_infer.runtime import architectures
from pytest_infer.runtime.kv_cache import CacheSpec, expected_cache


def test_requested_cache_from_generate_arguments() -> None:
    spec = expected_cache({"cache_implementation": "quantized", "cache_config": {"backend": "HQQ", "nbits": 4}})
    hqq = frozenset({"HQQQuantizedLayer"})
    assert spec == CacheSpec("quantized", "QuantizedCache", hqq, False, 4, None, required=hqq)
    assert expected_cache({}).cache_class == "DynamicCache"
    seen = {
        "class": "DynamicCache",
        "layers": ["DynamicLayer"],
        "offloading": False,
        "nbits": [],
        "residual_length": [],
    }
    problems = cache_problems(spec, seen, sliding_model=False)
    assert "cache class DynamicCache, expected QuantizedCache" in problems
    # caches by kind: a state-space model's dynamic cache holds recurrent state only, which is what dynamic means
    state = seen | {"layers": ["LinearAttentionLayer"]}
    assert cache_problems(expected_cache({"cache_implementation": "dynamic"}), state, sliding_model=False) == []
    # a static cache that holds no static key/value layer is not the cache asked for
    static = state | {"class": "StaticCache"}
    [missing] = cache_problems(expected_cache({"cache_implementation": "static"}), static, sliding_model=False)
    assert missing.startswith("no ") and "StaticLayer" in missing and "the static cache asked for is not" in missing
    assert any("DynamicLayer" in p for p in problems) and any("expected 4" in p for p in problems)
    full = cache_problems(
        expected_cache({"cache_implementation": "static"}),
        seen | {"class": "StaticCache", "layers": ["StaticLayer"]},
        sliding_model=True,
    )
    assert full == ["the model has a sliding window but no cache layer slides: it keeps every position"]


def test_cpu_caches_pass_and_report_kv_bytes(run_infer) -> None:
    result = run_infer("--infer-suite", "generation", "--infer-technique", "caching", "--infer-new-tokens", "48", "-rs")
    out = result.stdout.str()
    # dynamic, static, quanto 4/2, hqq 4, fp8: generation + 3 cache checks (+ no recompile test: none compiled)
    result.assert_outcomes(passed=6 * 4, skipped=2 * 4)
    assert "offloaded_cache: needs a cuda device, running on cpu" in out
    assert "pass agree" in out and "kv 0.2" in out  # lossy caches: greedy agreement; quantized KV ~0.25x


def test_caches_on_a_sliding_window_model(tmp_path_factory: pytest.TempPathFactory, run_infer) -> None:
    model = architectures.build("mistral-sliding-tiny", tmp_path_factory.getbasetemp() / "models")
    result = run_infer(
        f"--infer-model={model}",
        "--infer-suite",
        "generation",
        "--infer-technique",
        "dynamic_cache,static_cache",
        "--infer-new-tokens",
        "40",  # prompts of up to 48 tokens + 40: well past the window of 16
    )
    result.assert_outcomes(passed=2 * 4)


PLANTED = """
import copy

from pytest_infer import Expectation, Technique


def silently_dynamic(model):
    # a stack that drops the cache request on its way to generate (what a silent fallback looks like)
    original = model.generate

    def generate(*args, **kwargs):
        kwargs.pop("cache_implementation", None)
        kwargs.pop("cache_config", None)
        return original(*args, **kwargs)

    model.generate = generate
    return model


def consuming(model):
    # a generate that consumes keys of the cache_config it is given (Transformers once did)
    original = model.generate

    def generate(*args, **kwargs):
        config = kwargs.get("cache_config")
        if config is not None:
            config.pop("nbits", None)
        return original(*args, **kwargs)

    model.generate = generate
    return model


def pytest_infer_register_techniques(registry):
    q4 = registry.get("quantized_cache_quanto_4bit")
    registry.add(Technique(name="planted_fallback", family="caching", generate_kwargs=dict(q4.generate_kwargs),
                           tolerances=q4.tolerances, prepare=silently_dynamic, runner="generate"))
    registry.add(Technique(name="planted_consuming", family="caching",
                           generate_kwargs={"cache_implementation": "quantized",
                                            "cache_config": {"backend": "quanto", "nbits": 4, "residual_length": 16}},
                           tolerances=q4.tolerances, prepare=consuming, runner="generate"))
    registry.add(Technique(name="planted_hungry", family="caching", generate_kwargs={"cache_implementation": "dynamic"},
                           expectations=(Expectation("kv_memory_ratio", "<=", 0.5),), runner="generate"))
"""


def test_planted_cache_faults_fail_with_the_reason(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(PLANTED)
    result = run_infer(
        "--infer-suite",
        "generation",
        "--infer-technique",
        "planted_fallback,planted_consuming,planted_hungry",
        "--infer-new-tokens",
        "24",
        "-k",
        "cache",
    )
    out = result.stdout.str()
    result.assert_outcomes(passed=6, failed=3)
    assert "FAILED" in out
    result.stdout.fnmatch_lines(
        [
            "*test_cache_is_the_one_requested?cpu-float32-planted_fallback?*",
            "*cache class DynamicCache, expected QuantizedCache*",
            "*test_cache_arguments_not_mutated?cpu-float32-planted_consuming?*",
            "*generate changed its argument cache_config*",
            "*test_kv_cache_memory?cpu-float32-planted_hungry?*",
            "*1.000x, expected <= 0.5*",
        ]
    )


def test_kv_memory_that_measured_nothing_fails(tmp_path_factory: pytest.TempPathFactory, run_infer) -> None:
    """On a state-space model (Mamba: recurrent state, no keys or values) a KV-memory check has nothing to measure:
    an error naming what the cache holds, never a pass; static and quantized caches are skipped before loading."""
    model = architectures.build("mamba-tiny", tmp_path_factory.getbasetemp() / "models")
    result = run_infer(
        f"--infer-model={model}", "--infer-suite", "generation", "--infer-technique", "dynamic_cache,static_cache",
        "--infer-new-tokens", "8", "-k", "cache", "-rs",
    )  # fmt: skip
    result.assert_outcomes(passed=3, failed=1, skipped=4)
    result.stdout.fnmatch_lines(
        [
            "*measured no key/value bytes: the dynamic cache holds layers LinearAttentionLayer (* bytes of recurrent state)*",
            "*static_cache: MambaForCausalLM keeps no key/value cache (layer_types: linear_attention x2)*",
        ]
    )

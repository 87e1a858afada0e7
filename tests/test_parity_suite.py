"""The bundled parity suite as users run it, and proof that it catches a broken technique."""

from __future__ import annotations

import pytest

CPU_BACKENDS = ("eager", "sdpa", "sdpa_math", "sdpa_flash", "flex_attention")

BROKEN_ATTENTION_CONFTEST = """
from pytest_infer.techniques.attention import attention_function_technique
from transformers.integrations.sdpa_attention import sdpa_attention_forward


def scaled_attention(module, query, key, value, attention_mask, **kwargs):
    # A plausible kernel bug: softmax scale off by 10%.
    kwargs["scaling"] = module.scaling * 1.1
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def maskless_attention(module, query, key, value, attention_mask, **kwargs):
    # Ignores the padding mask (keeps causality): wrong only on padded rows.
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)


def pytest_infer_register_techniques(registry):
    registry.add(attention_function_technique("scaled_attention", scaled_attention))
    registry.add(attention_function_technique("maskless_attention", maskless_attention))
"""


def test_parity_suite_passes_for_every_cpu_backend(run_infer) -> None:
    result = run_infer("--infer-suite", "parity", "-rs", "-v")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    for name in CPU_BACKENDS:
        result.stdout.fnmatch_lines([f"*test_logit_parity?cpu-float32-{name}? PASSED*"])
    # what cannot run here is skipped with a reason a person can act on
    result.stdout.fnmatch_lines(
        [
            "*SKIPPED*sdpa_efficient: needs a cuda device, running on cpu*",
            "*SKIPPED*flash_attention_2: needs a cuda device, running on cpu*",
        ]
    )
    # one line of stack in the header; a results section at the end
    result.stdout.fnmatch_lines(
        [
            "infer stack: cpu *torch 2.*transformers *",
            "*pytest-infer: technique x check*",
            "cpu *float32 *sdpa_math *pass *",
        ]
    )


def test_half_precision_on_cpu(run_infer) -> None:
    result = run_infer(
        "--infer-suite", "parity", "--infer-dtype", "bfloat16,float16", "--infer-technique", "sdpa,sdpa_math"
    )
    result.assert_outcomes(passed=8)  # logits and padded batches, 2 techniques x 2 dtypes


def test_broken_attention_fails_with_a_message_naming_it(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(BROKEN_ATTENTION_CONFTEST)
    result = run_infer("--infer-suite", "parity", "--infer-technique", "scaled_attention,sdpa")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*logit parity FAILED: scaled_attention (float32) vs reference eager (float32) on cpu*",
            "*max_abs*FAIL*",
            "*max_abs * > * at row *, position *",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_mask_ignoring_attention_fails_on_padded_rows(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(BROKEN_ATTENTION_CONFTEST)
    result = run_infer("--infer-suite", "parity", "--infer-technique", "maskless_attention")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*logit parity FAILED: maskless_attention*"])


def test_unmet_requirement_is_skipped_and_strict_fails_it(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(
        """
        from pytest_infer import Technique, Requirements

        def pytest_infer_register_techniques(registry):
            registry.add(Technique(
                name="needs_magic", family="custom",
                load_kwargs={"attn_implementation": "sdpa"},
                requirements=Requirements(packages=(("magic-kernels", ">=1.0"),)),
            ))
        """
    )
    result = run_infer("--infer-suite", "parity", "--infer-technique", "needs_magic", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*needs_magic: magic-kernels not installed (pip install 'magic-kernels>=1.0')*"])

    result = run_infer("--infer-suite", "parity", "--infer-technique", "needs_magic", "--infer-strict")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*--infer-strict: needs_magic: magic-kernels not installed*"])


def test_tolerance_marker_and_fixtures_used_directly(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(BROKEN_ATTENTION_CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.infer_techniques("scaled_attention")
        @pytest.mark.infer_tolerance(max_abs=None, mean_abs=None, max_kl=None, min_cosine=None, min_top1=None)
        def test_loose(attention_technique, infer_parity):
            result = infer_parity.assert_parity(attention_technique)
            assert result.metrics["max_abs"] > 1e-3  # it is wrong, but nothing is bounded here

        def test_family_fixture_ids(attention_technique, infer_stack):
            assert attention_technique.technique.family == "attention"
            assert infer_stack.device_kind == "cpu"
        """
    )
    result = run_infer("-v", "--infer-technique", "attention")
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] >= 6 and outcomes.get("failed", 0) == 0, result.stdout.str()
    result.stdout.fnmatch_lines(
        ["*test_loose?cpu-float32-scaled_attention? PASSED*", "*test_family_fixture_ids?cpu-float32-sdpa? PASSED*"]
    )

"""Cost that scales with the model: every forward a session needs is computed once and shared by the checks that
need it (the reference's padded batch is an eager candidate's too; the logit check's batch is the padding sweep's
first point; each prompt "alone" is one right-padded forward, not one forward per prompt), the padding sweep is
chosen by the model's size and said in the header, and the metrics need no float64 copy of the vocabulary."""

from __future__ import annotations

import re

import pytest

from pytest_infer.core.tolerance import Tolerance
from pytest_infer.parity.logits import compare_logits, position_metrics
from pytest_infer.parity.padding import LARGE_MODEL_SWEEP, choose_sweep

COUNT_FORWARDS = """
import collections

import torch

COUNTS = collections.Counter()


def _count(module, args, kwargs, output):
    ids = kwargs.get("input_ids", args[0] if args else None)
    if type(module).__name__.endswith("ForCausalLM") and ids is not None and ids.device.type != "meta":
        COUNTS[(module.config._attn_implementation, tuple(ids.shape))] += 1


torch.nn.modules.module.register_module_forward_hook(_count, with_kwargs=True)


def pytest_terminal_summary(terminalreporter):
    for (impl, shape), n in sorted(COUNTS.items(), key=str):
        terminalreporter.write_line(f"FORWARDS {impl} {'x'.join(map(str, shape))} {n}")
"""


def test_each_forward_is_computed_once_per_model_technique_and_batch(pytester: pytest.Pytester, run_infer) -> None:
    pytester.makeconftest(COUNT_FORWARDS)
    result = run_infer("--infer-suite", "parity", "--infer-technique", "eager,sdpa")
    result.assert_outcomes(passed=4)
    counts = {
        (m.group(1), m.group(2)): int(m.group(3))
        for m in re.finditer(r"^FORWARDS (\S+) (\S+) (\d+)$", result.stdout.str(), re.M)
    }
    # the padded batch [8, 49]: eager's is the reference's own forward, and the prompts right-padded (each as if
    # alone) are the eager sweep's right+0 point; sdpa: its batch (also its sweep's left+0) and right+0
    assert counts[("eager", "8x49")] == 2 and counts[("sdpa", "8x49")] == 2, counts
    assert not [shape for _, shape in counts if shape.startswith("1x")], f"prompts run one by one: {counts}"
    assert sum(counts.values()) == 12, counts  # 23 before: 8 solo runs, the padded batch [8, 49] 7 times
    result.stdout.fnmatch_lines(["*padding sweep left:0,1,7,32;right:0,7 (auto)*"])


def test_the_sweep_is_chosen_by_the_model_size() -> None:
    assert choose_sweep("auto", 10_000_000) == ("left:0,1,7,32;right:0,7", "auto")
    assert choose_sweep("auto", 596_049_920) == (LARGE_MODEL_SWEEP, "auto for a 596M-parameter model")
    assert choose_sweep("left:0", 596_049_920) == ("left:0", "as configured")


@pytest.mark.parametrize("noise", [1e-5, 1e-3, 0.3, 3.0, 40.0])
def test_metrics_without_a_float64_vocabulary_agree_with_float64(noise: float) -> None:
    """KL and cosine from the logit difference (float32, the small parts in float64) against a float64 oracle."""
    import torch

    torch.manual_seed(0)
    r = torch.randn(6, 4096) * 4
    c = r + torch.randn_like(r) * noise
    per_pos_max, mean_abs, kl, cos = position_metrics(r, c)
    r64, c64 = r.double(), c.double()
    lr, lc = torch.log_softmax(r64, -1), torch.log_softmax(c64, -1)
    oracle_kl = (lr.exp() * (lr - lc)).sum(-1)
    oracle_cos = torch.nn.functional.cosine_similarity(r64, c64, dim=-1)
    assert torch.allclose(kl, oracle_kl, rtol=2e-2, atol=1e-12)
    assert torch.allclose(1 - cos, 1 - oracle_cos, rtol=2e-2, atol=1e-12)
    assert torch.allclose(per_pos_max.double(), (r64 - c64).abs().amax(-1), rtol=1e-6, atol=0)
    assert mean_abs == pytest.approx(float((r64 - c64).abs().mean()), rel=1e-6)


def test_a_nan_still_fails_and_the_metrics_stay_defined() -> None:
    import torch

    ref = torch.randn(2, 5, 64)
    cand = ref.clone()
    cand[1, 3, 7] = float("nan")
    result = compare_logits(
        ref, cand, torch.ones(2, 5), Tolerance(max_abs=1e-3), technique="t", reference_name="r", device="cpu",
        dtype="float32", reference_dtype="float32",
    )  # fmt: skip
    assert not result.passed and result.nonfinite == [(1, 3, "real")]
    assert all(m == m for m in result.metrics.values())  # no NaN metric

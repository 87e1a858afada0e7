"""Unit tests of the recompile guard's pieces (checks/compilation.py): reading dynamo's recompile-limit warning,
and the verdict of a RecompileResult. The guard itself runs in tests/test_planted_faults.py."""

from __future__ import annotations

from pytest_infer.checks.compilation import RecompileResult, limit_hit, watching_recompile_limit

WARNING = (
    "torch._dynamo hit config.recompile_limit (8)\n"
    "   function: 'forward' (/repo/model.py:12)\n"
    "   last reason: 0/7: G['state']['calls'] == 7                  # state['calls'] += 1  # model.py:13 in forward\n"
    'To log all recompilation reasons, use TORCH_LOGS="recompiles".\n'
)

STATE = {"calls": 0}  # a global: dynamo guards on its value where it is read (a closure's dict is not guarded so)


def test_limit_warning_is_read_with_frame_and_failed_guard() -> None:
    assert limit_hit(WARNING) == (
        "recompile_limit (8) for 'forward' (/repo/model.py:12), last failed guard: "
        "0/7: G['state']['calls'] == 7 # state['calls'] += 1 # model.py:13 in forward"
    )
    older = WARNING.replace("recompile_limit", "cache_size_limit")  # torch < 2.6 names it so
    assert (limit_hit(older) or "").startswith("cache_size_limit (8) for 'forward'")
    assert limit_hit("torch._dynamo: some other warning") is None


def test_a_frame_at_the_limit_is_caught_even_though_nothing_compiles_after_it() -> None:
    import torch

    torch._dynamo.reset()
    layer = torch.nn.Linear(2, 2)
    original = layer.forward

    def forward(x):  # a counter read in the compiled region: guarded on its value, a new graph every call
        STATE["calls"] += 1
        return original(x) * (STATE["calls"] > 0)

    compiled = torch.compile(forward, backend="eager")
    with watching_recompile_limit() as hits:
        for _ in range(10):
            compiled(torch.ones(1, 2))
    torch._dynamo.reset()
    assert len(hits) == 1 and hits[0].startswith("recompile_limit (8) for 'forward' (")
    assert "last failed guard: 0/7: " in hits[0] and "G['STATE']['calls'] == " in hits[0]


def test_result_verdicts() -> None:
    ok = RecompileResult("compile", "cpu", "float32", warmup_graphs=1, warmup_s=1.0, recompiles=0, calls=["a"])
    assert ok.passed and ok.failures == [] and ok.to_dict()["metrics"]["limit_hits"] == 0
    hit = RecompileResult(
        "every_call", "cpu", "float32", 8, 1.0, 0, ["a", "b", "c"], limit_hits=["recompile_limit (8) for 'f' (x:1)"]
    )
    assert not hit.passed  # 8 graphs in warm-up, then nothing: the limit was hit, the frame runs uncompiled
    assert hit.failures == [
        "torch.compile hit its recompile limit: recompile_limit (8) for 'f' (x:1); from then on this frame runs "
        "uncompiled (its compiled code is no longer used)"
    ]
    again = RecompileResult(
        "c", "cpu", "float32", 2, 1.0, 0, ["a"], identical_recompiles=1, reasons=["'f' (x:1): guard failed: g"]
    )
    assert again.failures == [
        "a call identical to the warm-up's compiled 1 new graph(s): a guard fails on every call",
        "recompiled 'f' (x:1): guard failed: g",
    ]
    assert "1 recompile(s) in an identical call" in again.message() and again.to_dict()["passed"] is False
    nothing = RecompileResult("c", "cpu", "float32", 0, 1.0, 0)
    assert nothing.failures == ["nothing was compiled during warm-up: the technique did not compile (silent fallback?)"]

"""Unit tests of Technique, Tolerance, Expectation, the registry and stacking."""

from __future__ import annotations

import pytest

from pytest_infer.core.errors import TechniqueError
from pytest_infer.core.expectation import Expectation, select_expectations
from pytest_infer.core.registry import Registry, compose
from pytest_infer.core.requirements import Requirements
from pytest_infer.core.stack import Stack
from pytest_infer.core.technique import Technique
from pytest_infer.core.tolerance import Tolerance, parse_tolerance_spec
from pytest_infer.techniques import builtin_techniques


def _t(name: str, **kw) -> Technique:
    kw.setdefault("family", "custom")
    return Technique(name=name, **kw)


def test_builtins_have_unique_names_and_known_families() -> None:
    reg = Registry(builtin_techniques())
    assert {"eager", "sdpa", "sdpa_math", "flex_attention", "paged|sdpa", "flash_attention_2"} <= set(reg.names())
    assert reg.families() == [
        "attention",
        "compilation",
        "kernels",
        "quantization",
        "caching",
        "parallelism",
        "batching",
    ]


def test_select_by_name_family_stack_and_all() -> None:
    reg = Registry(
        [_t("a", load_kwargs={"x": 1}), _t("b", family="caching", generate_kwargs={"cache_implementation": "static"})]
    )
    assert [t.name for t in reg.select(["all"])] == ["a", "b"]
    assert [t.name for t in reg.select(["caching"])] == ["b"]
    stacked = reg.select(["a+b"])[0]
    assert stacked.name == "a+b" and stacked.family == "stack"
    assert stacked.load_kwargs == {"x": 1} and stacked.generate_kwargs == {"cache_implementation": "static"}


def test_unknown_name_suggests_close_matches() -> None:
    reg = Registry(builtin_techniques())
    with pytest.raises(TechniqueError, match=r"unknown technique 'sdpa_mat' \(did you mean sdpa_math"):
        reg.get("sdpa_mat")


def test_contradictory_stacks_are_rejected() -> None:
    reg = Registry(builtin_techniques())
    with pytest.raises(TechniqueError, match="both set from_pretrained attn_implementation"):
        reg.get("eager+sdpa")
    cpu = _t("cpu_only", requirements=Requirements(device_kinds=frozenset({"cpu"})))
    cuda = _t("cuda_only", requirements=Requirements(device_kinds=frozenset({"cuda"})))
    with pytest.raises(TechniqueError, match="contradictory stack cpu_only\\+cuda_only"):
        compose(cpu, cuda)
    with pytest.raises(TechniqueError, match="names a twice"):
        compose(_t("a"), _t("a"))


def test_stack_composes_requirements_contexts_and_tolerances() -> None:
    entered: list[str] = []

    class Ctx:
        def __init__(self, name: str) -> None:
            self.name = name

        def __enter__(self) -> None:
            entered.append(self.name)

        def __exit__(self, *exc: object) -> None:
            entered.append("/" + self.name)

    a = _t(
        "a",
        context=lambda: Ctx("a"),
        tolerances={"float32": Tolerance(max_abs=1e-3)},
        requirements=Requirements(packages=(("torch", ">=2.0"),)),
    )
    b = _t(
        "b", context=lambda: Ctx("b"), tolerances={"float32": Tolerance(max_abs=1e-2, max_kl=1e-4)}, runner="generate"
    )
    ab = compose(a, b)
    with ab.active():
        pass
    assert entered == ["a", "b", "/b", "/a"]
    assert ab.tolerances["float32"].max_abs == 1e-2  # the looser bound
    assert ab.tolerances["float32"].max_kl is None  # a does not bound KL, so neither does the stack
    assert ab.runner == "generate"
    assert ab.components == ("a", "b")
    assert ab.requirements.packages == (("torch", ">=2.0"),)


def test_invalid_technique_definitions() -> None:
    with pytest.raises(TechniqueError, match="unknown family"):
        Technique(name="x", family="magic")
    with pytest.raises(TechniqueError, match="use letters"):
        Technique(name="bad name", family="custom")
    with pytest.raises(TechniqueError, match="unknown runner"):
        Technique(name="x", family="custom", runner="thread")
    reg = Registry()
    with pytest.raises(TechniqueError, match=r"expects a pytest_infer\.Technique, got dict"):
        reg.add({"name": "x"})  # type: ignore[arg-type]
    reg.add(_t("x"))
    with pytest.raises(TechniqueError, match="already registered"):
        reg.add(_t("x"))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("max_abs=0.5", (None, None, {"max_abs": 0.5})),
        ("sdpa:max_kl=1e-3,min_top1=0.99", ("sdpa", None, {"max_kl": 1e-3, "min_top1": 0.99})),
        ("sdpa:bf16:max_abs=none", ("sdpa", "bfloat16", {"max_abs": None})),
        ("float16:mean_abs=0.1", (None, "float16", {"mean_abs": 0.1})),
    ],
)
def test_parse_tolerance_spec(spec: str, expected: tuple) -> None:
    assert parse_tolerance_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sdpa:", "no metric=value"),
        ("max_abs=-1", "non-negative"),
        ("a:b:c:max_abs=1", "expected [TECHNIQUE:]"),
        ("foo=1", "not metric=value"),
        ("max_abs=x", "not a number"),
    ],
)
def test_parse_tolerance_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(TechniqueError, match=message.replace("[", r"\[")):
        parse_tolerance_spec(spec)


def test_tolerance_replace_rejects_unknown_metrics() -> None:
    with pytest.raises(TechniqueError, match="unknown tolerance metric"):
        Tolerance().replace(atol=1.0)


def test_expectations_pick_the_most_specific_stack() -> None:
    h100 = Stack(device_kind="cuda", device_name="H100", compute_capability=(9, 0))
    a10 = Stack(device_kind="cuda", device_name="A10", compute_capability=(8, 6))
    cpu = Stack(device_kind="cpu", device_name="cpu")
    exps = [
        Expectation("decode_speedup", ">=", 1.2, stacks=("cuda",)),
        Expectation("decode_speedup", ">=", 1.5, stacks=("cuda:9.0",)),
        Expectation("weight_memory_ratio", "<=", 0.5),
    ]
    by_metric = {e.metric: e.value for e in select_expectations(exps, h100)}
    assert by_metric == {"decode_speedup": 1.5, "weight_memory_ratio": 0.5}
    assert {e.metric: e.value for e in select_expectations(exps, a10)}["decode_speedup"] == 1.2
    assert [e.metric for e in select_expectations(exps, cpu)] == ["weight_memory_ratio"]
    assert Expectation("x", "<=", 1.0).holds(0.9) and not Expectation("x", ">=", 1.0).holds(0.9)


def test_skip_reason_includes_dtype_checks() -> None:
    reg = Registry(builtin_techniques())
    h100 = Stack(device_kind="cuda", device_name="H100", compute_capability=(9, 0), packages={"torch": "2.11.0"})
    assert (
        reg.get("sdpa_flash").skip_reason(h100, "float32")
        == "the SDPA flash backend runs float16/bfloat16 only on cuda, not float32"
    )
    assert reg.get("sdpa_flash").skip_reason(h100, "bfloat16") is None
    t4 = Stack(device_kind="cuda", device_name="T4", compute_capability=(7, 5), packages={"torch": "2.11.0"})
    assert "needs compute capability >= 8.0, found 7.5" in reg.get("sdpa_cudnn").skip_reason(t4, "bfloat16")


def test_probe_counts_calls_and_judges_each_run() -> None:
    from pytest_infer.core.probe import Probe, ProbeFailure

    probe = Probe("my kernel", per_forward=2)
    seen: list[int] = []
    counted = probe.count(seen.append)
    t = _t("mine", probes=[probe])  # a list is accepted and frozen into a tuple; the probe learns its owner
    assert t.probes == (probe,) and probe.label == "mine: my kernel" and t.describe()["probes"] == ["mine: my kernel"]
    with t.active():
        counted(1)  # no model attached: one call is proof enough
    assert seen == [1] and probe.last == {"calls": 1, "forwards": 0}
    with pytest.raises(ProbeFailure, match=r"mine: my kernel ran 0 times: the requested code never ran"), t.active():
        pass
    # nested runs (generate calling forward under the same technique) are judged once, by the outermost
    with t.active():
        with t.active():
            pass
        counted(2)
    # per_forward: against the forwards of the attached model
    probe.forwards += 3  # as the model's forward hook does, three forwards in one run
    start = probe.begin()
    probe.forwards += 3
    probe.calls += 5
    probe._models = [lambda: object()]  # type: ignore[list-item]  # an attached model is alive
    assert probe.end(start) == (
        "mine: my kernel ran 5 times in 3 forward(s), expected at least 2 per forward: it ran in only part of the run"
    )
    probe.calls += 1
    assert probe.end(start) is None
    assert probe.end(probe.begin()) is None  # the run did not run the model: nothing to judge


def test_probes_are_validated_and_stacked() -> None:
    from pytest_infer import Probe

    with pytest.raises(TechniqueError, match=r"probes must be pytest_infer.Probe objects, got str"):
        _t("bad", probes=("my kernel",))
    with pytest.raises(ValueError, match=r"per_forward must be an integer >= 0"):
        Probe("k", per_forward=-1)
    with pytest.raises(ValueError, match=r"name what it counts"):
        Probe("")
    a, b = Probe("a kernel"), Probe("b kernel")
    stacked = compose(_t("x", probes=(a,)), _t("y", probes=(b, a)))
    assert stacked.probes == (a, b)


def test_module_probe_counts_forwards_of_named_modules() -> None:
    import torch

    from pytest_infer import Probe
    from pytest_infer.core.probe import ProbeFailure

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    probe = Probe("fused relu", modules="ReLU", per_forward=1)
    t = _t("relu", probes=(probe,))
    probe.attach(model)
    probe.attach(model)  # once per model
    with t.active():
        model(torch.ones(1, 2))
    assert probe.last == {"calls": 1, "forwards": 1}
    model[1] = torch.nn.Identity()  # the module it counted was replaced: nothing of it runs any more
    with pytest.raises(ProbeFailure, match=r"relu: fused relu ran 0 times in 1 forward\(s\) of the model"), t.active():
        model(torch.ones(1, 2))
    with pytest.raises(ProbeFailure, match=r"no module of Sequential matches 'model.layers.\*.mlp'.*classes: "):
        Probe("mlp", modules="model.layers.*.mlp").attach(model)

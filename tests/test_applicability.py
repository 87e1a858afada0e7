"""Which technique applies to which architecture, decided before loading: the rules of
pytest_infer/techniques/applicability.py and the families' own predicates, on config-only folders (no weights: the
facts come from the config, the class and a meta-device instance), against what Transformers 5.24 really does
(docs/architectures.md). And the two nets: errors Transformers raises for an architecture reason at load or run
time become a skip; a compiled technique on a large model on CPU is left out unless named."""

from __future__ import annotations

import json

import pytest

from pytest_infer.core.model_facts import ModelFacts
from pytest_infer.core.registry import Registry
from pytest_infer.core.resources import fixtures_dir
from pytest_infer.core.stack import Stack
from pytest_infer.runtime.capabilities import architecture_reason, read_facts
from pytest_infer.runtime.loading import ModelLoadError, ModelSource
from pytest_infer.techniques import builtin_techniques
from pytest_infer.techniques.applicability import model_reason, size_reason

CPU = Stack(device_kind="cpu", device_name="test cpu")
REGISTRY = Registry(builtin_techniques())

# (config, technique) -> a fragment of the reason, or None where the technique applies
EXPECTED = {
    ("llama-tiny", "sdpa"): None,
    ("llama-tiny", "paged|sdpa"): None,
    ("llama-tiny", "static_cache"): None,
    ("llama-tiny", "quanto_int8"): None,
    ("llama-tiny", "quantized_cache_quanto_4bit"): "kv_heads*head_dim=32 is not a multiple of 64",
    ("gemma2-tiny", "sdpa"): "does not support attn_implementation='sdpa' (_supports_sdpa=False) (attention logit",
    ("gemma2-tiny", "quantized_cache_quanto_4bit"): "supports only full-attention layers; Gemma2ForCausalLM has",
    ("gemma2-tiny", "flex_attention"): None,
    ("gpt2-tiny", "flex_attention"): "GPT2LMHeadModel does not support attn_implementation='flex_attention'",
    ("gpt2-tiny", "quanto_int8"): "projections are Transformers Conv1D modules, not nn.Linear",
    ("gpt2-tiny", "bnb_8bit"): None,  # bitsandbytes converts Conv1D too
    ("mistral-sliding-tiny", "quantized_cache_quanto_4bit"): "has sliding_attention layers",
    ("mixtral-tiny", "quanto_int8"): None,  # it runs: the storage check says what it leaves out
    ("gpt-neox-tiny", "paged|sdpa"): "calls cache.update(key, value, layer_idx) without the kwargs",
    ("falcon-tiny", "paged|sdpa"): "does not dispatch attention through AttentionInterface",
    ("falcon-tiny", "torchao_int8_weight_only"): "FalconLinear.forward",
    ("falcon-tiny", "flex_attention"): "does not support attn_implementation='flex_attention'",
    ("mamba-tiny", "sdpa"): "has no attention layers (layer_types: linear_attention x2)",
    ("mamba-tiny", "static_cache"): "keeps no key/value cache",
    ("mamba-tiny", "paged|eager"): "continuous batching pages only full and sliding attention",
    ("mamba-tiny", "bnb_8bit"): "self.dt_proj.weight @ ...",
    ("mamba-tiny", "quanto_int8"): None,  # quanto's QLinear weight supports the matmul
    ("mamba-tiny", "eager"): None,
}


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFacts]:
    """Facts of every config in fixtures/configs, read from a folder holding the config alone."""
    from transformers import AutoConfig

    out = {}
    for path in sorted((fixtures_dir() / "configs").glob("*.json")):
        spec = json.loads(path.read_text())
        spec.pop("architectures", None)
        folder = tmp_path_factory.mktemp(path.stem)
        AutoConfig.for_model(spec.pop("model_type"), **spec).save_pretrained(folder)
        read = read_facts(ModelSource(str(folder)))
        assert read is not None, path.stem
        out[path.stem] = read
    return out


@pytest.mark.parametrize(("config", "technique"), sorted(EXPECTED), ids=lambda v: str(v))
def test_a_technique_applies_or_says_why(facts: dict[str, ModelFacts], config: str, technique: str) -> None:
    reason = model_reason(REGISTRY.get(technique), facts[config], CPU)
    expected = EXPECTED[(config, technique)]
    if expected is None:
        assert reason is None, reason
    else:
        assert reason is not None and expected in reason, reason


def test_facts_read_what_the_caches_hold(facts: dict[str, ModelFacts]) -> None:
    assert (facts["llama-tiny"].kv_heads, facts["llama-tiny"].head_dim) == (2, 16)
    assert (
        facts["mamba-tiny"].layer_types == ("linear_attention", "linear_attention") and not facts["mamba-tiny"].has_kv
    )
    assert facts["mixtral-tiny"].expert_share > 0.8 and "experts" in facts["mixtral-tiny"].expert_example
    assert facts["llama-700m"].parameters > 500_000_000  # a meta-device instance: no memory for its weights


def test_a_stack_of_techniques_gets_the_rules_of_both(facts: dict[str, ModelFacts]) -> None:
    reason = model_reason(REGISTRY.get("quanto_int8+static_cache"), facts["mamba-tiny"], CPU)
    assert reason is not None and "keeps no key/value cache" in reason


def test_compile_of_a_large_model_on_cpu_needs_to_be_named(facts: dict[str, ModelFacts]) -> None:
    compile_ = REGISTRY.get("compile")
    reason = size_reason(compile_, facts["llama-700m"], CPU, named=False)
    assert reason is not None and "-parameter model on CPU takes minutes; pass --infer-technique compile" in reason
    assert size_reason(compile_, facts["llama-700m"], CPU, named=True) is None
    assert size_reason(compile_, facts["llama-tiny"], CPU, named=False) is None
    assert size_reason(REGISTRY.get("sdpa"), facts["llama-700m"], CPU, named=False) is None


def test_architecture_errors_at_load_or_run_time_are_recognised() -> None:
    refused = ValueError("Gemma2ForCausalLM does not support an attention implementation through sdpa yet.")
    assert architecture_reason(ModelLoadError("loading x failed", refused)) is not None
    assert architecture_reason(ValueError("Group size (64) must be a divisor of (1056)")) is not None
    assert architecture_reason(RuntimeError("expected scalar type Float but found Char")) is None


def test_the_catalogue_says_per_technique_why_it_does_not_apply(
    tmp_path_factory: pytest.TempPathFactory, run_infer
) -> None:
    """``--infer-list --infer-model X``: every technique, runnable or why not, for this stack and this model."""
    from pytest_infer.runtime import architectures

    model = architectures.build("mamba-tiny", tmp_path_factory.getbasetemp() / "models")
    result = run_infer("--infer-list", f"--infer-model={model}")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "*eager * attention * runnable*",
            "*sdpa * attention * skip: MambaForCausalLM has no attention layers (layer_types: linear_attention x2)*",
            "*quanto_int8 * quantization*runnable*",
            "*static_cache * caching * skip: MambaForCausalLM keeps no key/value cache*",
        ],
        consecutive=False,
    )

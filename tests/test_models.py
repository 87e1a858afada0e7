"""The bounded model cache and the loading path on the embedded model."""

from __future__ import annotations

import pytest

from pytest_infer.core.resources import embedded_model_path
from pytest_infer.core.technique import Technique
from pytest_infer.runtime.loading import ModelLoadError, ModelSource, load_model
from pytest_infer.runtime.model_cache import ModelCache
from pytest_infer.techniques.attention import builtin


def test_cache_evicts_least_recently_used() -> None:
    cache = ModelCache(max_models=2)
    made: list[str] = []

    def factory(name: str):
        def make() -> str:
            made.append(name)
            return name

        return make

    assert cache.model("a", factory("a")) == "a"
    cache.model("b", factory("b"))
    cache.model("a", factory("a"))  # hit: a becomes most recent
    cache.model("c", factory("c"))  # evicts b
    assert len(cache) == 2 and cache.evictions == 1
    cache.model("a", factory("a"))
    cache.model("b", factory("b"))  # reloaded
    assert made == ["a", "b", "c", "b"]


class Weights:
    """A stand-in model whose weights take ``n`` bytes."""

    def __init__(self, n: int) -> None:
        import torch

        self.tensor = torch.zeros(n, dtype=torch.uint8)
        self.device = self.tensor.device

    def parameters(self):
        return [self.tensor]

    def buffers(self):
        return []


def test_auto_cache_keeps_models_while_they_fit_the_budget_and_always_two() -> None:
    cache = ModelCache(max_models=0, budget_bytes=1000)
    for name in "abcd":  # 4 x 200 bytes fit in 1000
        cache.model(name, lambda: Weights(200))
    assert len(cache) == 4 and cache.evictions == 0 and cache.resident_bytes == 800
    cache.model("e", lambda: Weights(200))  # 1000: still fits
    cache.model("f", lambda: Weights(200))  # would be 1200: the oldest goes first
    assert len(cache) == 5 and cache.evictions == 1 and "a" not in cache._models
    big = ModelCache(max_models=0, budget_bytes=100)
    big.model("base", lambda: Weights(300))
    big.model("cand", lambda: Weights(300))  # over the budget, but a baseline and a candidate always stay
    assert len(big) == 2
    big.model("other", lambda: Weights(300))
    assert len(big) == 2 and list(big._models) == ["cand", "other"]


def test_auto_budget_is_a_quarter_of_host_memory_for_cpu_models() -> None:
    from pytest_infer.runtime.model_cache import memory_of

    cache = ModelCache(max_models=0)
    cache.model("a", lambda: Weights(10))
    assert memory_of("cpu") > 2**30 and cache.budget("cpu") == memory_of("cpu") // 4
    assert not cache._over(memory_of("cpu") // 8)
    assert cache._over(memory_of("cpu") // 4)


def test_embedded_model_loads_through_from_pretrained() -> None:
    eager = next(t for t in builtin() if t.name == "eager")
    model = load_model(ModelSource(str(embedded_model_path())), eager, "float32", "cpu")
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 5_000_000


def test_silent_attention_fallback_is_caught() -> None:
    liar = Technique(
        name="liar",
        family="custom",
        load_kwargs={"attn_implementation": "sdpa"},
        effective_attention=frozenset({"flash_attention_2"}),
    )
    with pytest.raises(ModelLoadError, match="requested attention \\['flash_attention_2'\\] but the model runs 'sdpa'"):
        load_model(ModelSource(str(embedded_model_path())), liar, "float32", "cpu")


def test_pickle_only_checkpoint_is_refused(tmp_path) -> None:
    from pytest_infer.core.errors import ConfigError
    from pytest_infer.runtime.checkpoint import validate_model

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"only pickle weights .* --infer-allow-pickle"):
        validate_model(str(tmp_path), tmp_path, allow_pickle=False)
    assert validate_model(str(tmp_path), tmp_path, allow_pickle=True) == str(tmp_path.resolve())

"""The bounded model cache and the loading path on the embedded model."""

from __future__ import annotations

import pytest

from pytest_infer.config import embedded_model_path
from pytest_infer.models import ModelCache, ModelLoadError, ModelSource, load_model
from pytest_infer.technique import Technique
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
    from pytest_infer.config import ConfigError, validate_model

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"only pickle weights .* --infer-allow-pickle"):
        validate_model(str(tmp_path), tmp_path, allow_pickle=False)
    assert validate_model(str(tmp_path), tmp_path, allow_pickle=True) == str(tmp_path.resolve())

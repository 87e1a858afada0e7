"""Architecture coverage: random-weight Qwen3 and Mistral (sliding window 16) built from fixtures/configs,
loaded through from_pretrained(local_path) and run through the parity and generation suites."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_infer.runtime import architectures


@pytest.mark.parametrize("name", architectures.available())
def test_suites_run_on_other_architectures(name: str, tmp_path_factory: pytest.TempPathFactory, run_infer) -> None:
    model = architectures.build(name, tmp_path_factory.getbasetemp() / "models")
    assert (Path(model) / "model.safetensors").is_file()
    result = run_infer(
        f"--infer-model={model}",
        "--infer-suite",
        "parity,generation",
        "--infer-technique",
        "eager,sdpa,paged|sdpa",
        "--infer-new-tokens",
        "40",
    )
    # 40 new tokens on prompts of up to 48 tokens: well past a sliding window of 16
    # paged|sdpa has no plain forward (2 skipped); it runs generation parity and the 3 batching checks
    result.assert_outcomes(passed=10, skipped=2)


def test_sliding_window_config_is_what_it_says() -> None:
    import json

    from pytest_infer.core.resources import fixtures_dir

    spec = json.loads((fixtures_dir() / "configs" / "mistral-sliding-tiny.json").read_text())
    assert spec["sliding_window"] == 16

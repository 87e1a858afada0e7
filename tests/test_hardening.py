"""Unit tests of the defences of issue 20 (the sessions that show them to users are in test_bad_input.py,
test_isolation.py, test_report.py and test_security.py): numbers as written, output collisions, secret masking,
strict JSON, and the process-wide state a technique can leave behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pytest_infer.core.numbers import NumberError, parse_int, parse_real
from pytest_infer.core.paths import collision, partial_path, same_file
from pytest_infer.core.redact import mask, mask_data
from pytest_infer.reports.document import strict, write_atomically


@pytest.mark.parametrize(
    ("text", "value"), [("16", 16), (" +3 ", 3), ("-1", -1), (7, 7), ("0", 0), ("999999999999999999", 10**18 - 1)]
)
def test_integers_as_written(text: object, value: int) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("\u0663", "ASCII digits 0-9"),  # Arabic-Indic three: int() takes it
        ("\u00b2", "ASCII digits 0-9"),  # superscript two: isdigit() says yes, int() raises
        ("\uff11\uff12", "ASCII digits 0-9"),  # full-width digits
        ("1_000", "without '_' separators"),
        ("1e3", "is not an integer"),
        ("9" * 19, "a 19-digit number is too large"),
        (True, "is not an integer"),
        ("", "is not an integer"),
    ],
)
def test_integers_refused(text: object, why: str) -> None:
    with pytest.raises(NumberError, match=why):
        parse_int(text)


@pytest.mark.parametrize(
    ("text", "why"),
    [("inf", "not a finite number"), ("-Infinity", "not a finite number"), ("nan", "not a finite number"),
     ("1e400", "overflows a float"), ("\u0661.5", "ASCII digits"), ("0x10", "is not a number"), (float("nan"), "finite")],
)  # fmt: skip
def test_reals_refused(text: object, why: str) -> None:
    with pytest.raises(NumberError, match=why):
        parse_real(text)
    assert parse_real("1.5e-3") == 0.0015 and parse_real(".5") == 0.5


def test_collisions_name_both_paths(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "r.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "r.json")
    os.link(tmp_path / "r.json", tmp_path / "hard.json")
    assert same_file(str(tmp_path / "link.json"), str(tmp_path / "r.json"))
    assert same_file(str(tmp_path / "hard.json"), str(tmp_path / "r.json"))
    assert same_file(str(tmp_path / "a" / ".." / "r.json"), str(tmp_path / "r.json"))
    assert not same_file(str(tmp_path / "r.json"), str(tmp_path / "r.md"))
    r, md = str(tmp_path / "r.json"), str(tmp_path / "r.md")
    assert collision([("--a", r), ("--b", md)]) is None
    assert collision([("--a", r), ("--b", str(tmp_path / "link.json"))]) == (
        f"--b {tmp_path / 'link.json'}: the same file as --a {r}; give each output its own path"
    )
    inside = str(tmp_path / "model" / "config.json")
    assert "which is read, not written" in (
        collision([("--a", inside)], [], [("--model", str(tmp_path / "model"))]) or ""
    )
    assert (
        collision([("--a", str(tmp_path / "model" / "new.json"))], [], [("--model", str(tmp_path / "model"))]) is None
    )
    assert collision([("--a", "")], [("--in", "")]) is None  # unset paths
    assert partial_path("out/report.json") == "out/report.partial.json"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("https://user:hf_abcdefghijklmnopqrstu@huggingface.co/org/m", "https://user:***@huggingface.co/org/m"),
        ("https://hf_abcdefghijklmnopqrstuvwx@hf.co/org/m", "https://***@hf.co/org/m"),
        (
            "https://hf.co/org/m?revision=main&access_token=s3cr3t#x",
            "https://hf.co/org/m?revision=main&access_token=***#x",
        ),
        ("s3://bucket/m?X-Amz-Signature=abc123&X-Amz-Date=1", "s3://bucket/m?X-Amz-Signature=***&X-Amz-Date=1"),
        ("hf_AbCdEfGhIjKlMnOpQrStUv/model", "hf_A***/model"),
        ("token ghp_0123456789abcdefghijABCD", "token ghp_***"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "Authorization: Bearer ***"),
        ("AKIAABCDEFGHIJKLMNOP", "AKIA***"),
        ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B"),  # ordinary ids are left alone
        ("git@github.com:org/repo", "git@github.com:org/repo"),
        ("--infer-model ./models/tiny-llama", "--infer-model ./models/tiny-llama"),
    ],
)
def test_secrets_are_masked(text: str, masked: str) -> None:
    assert mask(text) == masked
    assert mask_data({"model": text, "list": [text], text: 1}) == {"model": masked, "list": [masked], masked: 1}


def test_reports_are_strict_json(tmp_path: Path) -> None:
    data = {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": (1, 2), 3: {"d": object}}
    assert strict(data) == {"a": None, "b": [None, None, 1.5], "c": [1, 2], "3": {"d": str(object)}}
    write_atomically(tmp_path / "r.json", data)

    def refuse(token: str) -> None:
        raise ValueError(token)

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)["a"] is None


def test_state_changes_are_listed_and_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kind of process-wide state: listed as changed, restored, and nothing listed after."""
    import torch
    import torch._dynamo
    import torch.nn.functional as F
    from transformers import AttentionInterface

    from pytest_infer.runtime import state

    monkeypatch.delenv("INFER_STATE_TEST", raising=False)
    before = state.snapshot()
    original, threads = F.softmax, torch.get_num_threads()

    def patched(*args: object, **kwargs: object) -> object:
        return original(*args, **kwargs)

    F.softmax = patched
    del torch.nn.Linear.extra_repr
    torch.set_num_threads(max(1, threads - 1) if threads > 1 else 2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_grad_enabled(False)
    torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
    torch._dynamo.config.recompile_limit += 1
    os.environ["INFER_STATE_TEST"] = "1"
    AttentionInterface._global_mapping["sdpa"], sdpa = patched, AttentionInterface._global_mapping["sdpa"]
    AttentionInterface._global_mapping["mine"] = patched
    changed = state.changes(before, frozenset({"allowed_one"}))
    state.restore(before)
    named = [line.split(":")[0].split(" replaced")[0].split(" deleted")[0] for line in changed]
    assert [n for n in named if not n.startswith("torch._inductor.config")] == [  # (it follows the flag)
        "torch.nn.functional.softmax",
        "torch.nn.modules.linear.Linear.extra_repr",
        "torch.get_num_threads()",
        "torch.is_grad_enabled()",
        "torch.are_deterministic_algorithms_enabled() (warn_only)",
        "torch.backends.cudnn.benchmark",
        "environment variable INFER_STATE_TEST set",
        "torch._dynamo.config.recompile_limit",
        "AttentionInterface",
        "AttentionInterface",
    ]
    assert state.changes(before) == []
    assert F.softmax is original and AttentionInterface._global_mapping["sdpa"] is sdpa
    assert "mine" not in AttentionInterface._global_mapping and "INFER_STATE_TEST" not in os.environ
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()

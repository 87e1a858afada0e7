"""Goldens without a model: the file format (exact to its step, diffable, compact), every way a file can be
unusable (each named with the file), the drift metrics and near-ties, what-changed, the stack class key, and the
start-up check of the folder option."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pytest_infer.core.stack import Stack
from pytest_infer.core.tolerance import Tolerance
from pytest_infer.parity.golden import (
    STEP,
    FutureGolden,
    GenerationGolden,
    Golden,
    GoldenError,
    GoldenKey,
    changes,
    logits_golden,
    read_golden,
    write_golden,
)
from pytest_infer.parity.golden_compare import GoldenResult, generation_drift, golden_bound, logit_drift, observe
from pytest_infer.runtime.generated import Generated

KEY = GoldenKey("tiny-llama", "cpu-x86_64-avx2", "float32", "paged|sdpa", "logits")


class Tok:
    def decode(self, ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)


def batch(vocab: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, vocab, generator=g) * 4
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    mask[2, :6] = 0
    return logits, mask


def test_round_trip_is_exact_to_its_step_and_diffable(tmp_path: Path) -> None:
    logits, mask = batch()
    lg = logits_golden(logits, mask, 20)
    assert lg.positions == [4, 7, 1] and lg.top_k == 20
    path = KEY.path(tmp_path)
    assert path == tmp_path / "tiny-llama" / "cpu-x86_64-avx2" / "float32" / "paged%7Csdpa.logits.json"
    size = write_golden(path, Golden(KEY, {"date": "2026-01-01"}, logits=lg))
    assert size == path.stat().st_size
    back = read_golden(path, KEY)
    assert back.logits is not None and back.logits.ids == lg.ids
    worst = max(
        abs(a - b)
        for r1, r2 in zip(lg.logprobs, back.logits.logprobs, strict=True)
        for p1, p2 in zip(r1, r2, strict=True)
        for a, b in zip(p1, p2, strict=True)
    )
    assert worst <= STEP / 2 + 1e-12
    text = path.read_text()
    # the readable part: one line per prompt of top-1 token ids, a diff shows which position's token changed
    top1 = json.loads(text)["logits"]["top1"]
    assert top1 == [lg.top1(r) for r in range(3)]
    assert f"  {json.dumps(lg.top1(1), separators=(', ', ': '))}" in text


def test_generation_round_trip_and_missing_margins(tmp_path: Path) -> None:
    key = GoldenKey("m", "cpu-x", "bfloat16", "paged|eager", "generation")
    for margins in ([[0.5, 0.00004, 3.0], [1.0, 2.0, 0.25]], None):
        write_golden(
            key.path(tmp_path), Golden(key, {}, generation=GenerationGolden(3, [[5, 6, 7], [8, 9, 10]], margins))
        )
        back = read_golden(key.path(tmp_path), key).generation
        assert back is not None and back.tokens == [[5, 6, 7], [8, 9, 10]]
        assert back.margins == (None if margins is None else [[0.5, 0.0, 3.0], [1.0, 2.0, 0.25]])


def test_unusable_files_are_named_with_what_to_do(tmp_path: Path) -> None:
    logits, mask = batch()
    path = KEY.path(tmp_path)
    write_golden(path, Golden(KEY, {}, logits=logits_golden(logits, mask, 5)))
    good = path.read_text()

    path.write_text(good[: len(good) // 2])
    with pytest.raises(GoldenError, match=r"golden .*paged%7Csdpa.logits.json: not valid JSON .* truncated or corrupt"):
        read_golden(path, KEY)
    doc = json.loads(good)
    for change, expected in (
        (lambda d: d.update(format_version=2), FutureGolden),
        (lambda d: d.update(format="something else"), GoldenError),
        (lambda d: d["logits"].update(data=d["logits"]["data"][:-8]), GoldenError),
        (lambda d: d["logits"].update(positions=[4, 7, 2]), GoldenError),
        (lambda d: d.pop("recorded"), GoldenError),
    ):
        broken = json.loads(good)
        change(broken)
        path.write_text(json.dumps(broken))
        with pytest.raises(expected) as info:
            read_golden(path, KEY)
        assert str(path) in str(info.value)
    path.write_text(json.dumps(doc))
    with pytest.raises(GoldenError, match=r"holds the golden of .* not of"):
        read_golden(path, GoldenKey("tiny-llama", "cuda-nvidia_a10-sm86", "float32", "paged|sdpa", "logits"))
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(GoldenError, match="not UTF-8"):
        read_golden(path, KEY)


def test_drift_names_where_and_top1_changes_outside_near_ties() -> None:
    logits, mask = batch()
    golden = logits_golden(logits, mask, 20)
    bound = Tolerance(max_abs=1e-4, tie_margin=1e-3)
    same = logit_drift(golden, observe(logits, mask, 20, golden), bound)
    assert not same.moved and same.max_abs <= STEP and same.decisive == 12
    moved = logits.clone()
    moved[1, 5] += torch.linspace(0, 2, moved.shape[-1])  # one position of row 1 moves
    drift = logit_drift(golden, observe(moved, mask, 20, golden), bound)
    assert drift.moved and (drift.row, drift.position) == (1, 5) and drift.max_abs > 0.1
    assert "max_abs" in drift.describe(Tok().decode) and "row 1, position 5" in drift.describe()
    # a swapped top-1 counts only where the golden's margin was decisive
    flipped = logits.clone()
    top2 = flipped[0, 4].topk(2).indices
    flipped[0, 4, top2[0]], flipped[0, 4, top2[1]] = flipped[0, 4, top2[1]], flipped[0, 4, top2[0]]
    margin = float(golden.logprobs[0][1][0] - golden.logprobs[0][1][1])
    decisive = logit_drift(golden, observe(flipped, mask, 20, golden), Tolerance(max_abs=100.0, tie_margin=margin / 2))
    near_tie = logit_drift(golden, observe(flipped, mask, 20, golden), Tolerance(max_abs=100.0, tie_margin=margin * 2))
    assert [c[:2] for c in decisive.top1_changed] == [(0, 1)] and decisive.moved
    assert near_tie.top1_changed == [] and not near_tie.moved
    # another tokenization: positions that do not line up are named, never compared row against wrong row
    shifted = mask.clone()
    shifted[2, 5] = 1
    assert "tokenizer changed" in str(logit_drift(golden, observe(logits, shifted, 20, golden), bound).mismatch)


def test_generation_drift_accepts_recorded_near_ties_only() -> None:
    golden = GenerationGolden(4, [[1, 2, 3, 4], [5, 6, 7, 8]], [[2.0, 0.0005, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    common = dict(tie_margin=1e-3, technique="sdpa", device="cpu", dtype="float32")
    at_tie = generation_drift(golden, Generated([[1, 9, 9, 9], [5, 6, 7, 8]], None), Tok(), **common)
    assert at_tie.rows[0].step == 1
    past_tie = generation_drift(golden, Generated([[1, 2, 9, 9], [5, 6, 7, 8]], None), Tok(), **common)
    assert not past_tie.passed  # step 2 was decisive (margin 2.0)
    assert at_tie.passed and at_tie.rows[0].status == "near_tie"
    decisive = generation_drift(golden, Generated([[1, 2, 3, 4], [5, 9, 7, 8]], None), Tok(), **common)
    assert not decisive.passed and decisive.rows[1].step == 1


def test_bound_takes_the_wider_floor_and_the_dtype() -> None:
    low = {"max_abs": 1e-5, "max_kl": 0.0, "flip_margin": 0.0}
    high = {"max_abs": 5e-5, "max_kl": 0.0, "flip_margin": 0.01}
    assert golden_bound("float32", "cpu", [low]).max_abs == pytest.approx(1e-4)  # never below a tenth of the table
    wide = golden_bound("float32", "cpu", [low, high])
    assert wide.max_abs == pytest.approx(5e-4) and wide.tie_margin == pytest.approx(0.02)
    assert golden_bound("bfloat16", "cpu", [None]).max_abs == 1.5  # no floor measured: the table


def test_changes_say_what_moved_since_recording() -> None:
    old = {
        "pytest_infer": "0.1.0",
        "stack": {"packages": {"torch": "2.13.0", "transformers": "5.17.0", "kernels": None}, "cuda_version": "12.8"},
        "model": {"files": {"model.safetensors": "aaaa", "config.json": "cccc"}},
        "tokenizer": "tttt",
    }
    new = json.loads(json.dumps(old))
    new["stack"]["packages"].update(transformers="5.24.0", kernels="0.17.2")
    new["model"]["files"]["model.safetensors"] = "bbbb"
    assert changes(old, new) == [
        "transformers 5.17.0 -> 5.24.0",
        "kernels not installed -> 0.17.2",
        "model file model.safetensors aaaa -> bbbb",
    ]
    assert changes(old, old) == []
    result = GoldenResult("sdpa", "cpu", "float32", "logits", "moved", "p", "c", Tolerance(max_abs=1e-4), detail="x")
    assert "the change is in code the golden does not fingerprint" in result.message()


def test_stack_class_finds_the_same_hardware_only() -> None:
    def gpu(name: str, cc: tuple[int, int], torch_v: str = "2.9.0", tf: str = "5.24.0") -> Stack:
        return Stack(
            "cuda", name, compute_capability=cc, cuda_version="12.8", packages={"torch": torch_v, "transformers": tf}
        )

    h100 = gpu("NVIDIA H100 80GB HBM3", (9, 0))
    assert h100.stack_class() == "cuda-nvidia_h100_80gb_hbm3-sm90"
    assert gpu("NVIDIA H100 80GB HBM3", (9, 0), "2.10.0", "5.17.0").stack_class() == h100.stack_class()
    assert gpu("NVIDIA A10", (8, 6)).stack_class() == "cuda-nvidia_a10-sm86"
    cpu = Stack("cpu", "AMD EPYC 7763 64-Core Processor", machine="x86_64", cpu_capability="avx2")
    other_model = Stack("cpu", "Intel(R) Xeon(R) Platinum 8370C", machine="x86_64", cpu_capability="avx2")
    assert cpu.stack_class() == other_model.stack_class() == "cpu-x86_64-avx2"
    assert Stack("cpu", "Intel Xeon", machine="x86_64", cpu_capability="avx512").stack_class() != cpu.stack_class()
    assert h100.for_device("cpu").stack_class().startswith("cpu-")
    # a report written before cpu_capability existed: the CPU model decides
    assert (
        Stack.from_dict({"device_kind": "cpu", "device_name": "AMD EPYC 7763", "machine": "x86_64"}).stack_class()
        == "cpu-x86_64-amd_epyc_7763"
    )


def test_a_150k_vocabulary_golden_stays_small(tmp_path: Path) -> None:
    """The size a real model's golden has (docs/goldens.md): the default prompt set's 217 positions, k=20, ids
    of a 151,936-token vocabulary (4 bytes each)."""
    g = torch.Generator().manual_seed(1)
    rows = [10, 10, 33, 17, 26, 38, 34, 49]
    logits = torch.randn(8, 49, 151_936, generator=g) * 3
    mask = torch.zeros(8, 49, dtype=torch.long)
    for r, n in enumerate(rows):
        mask[r, 49 - n :] = 1
    path = KEY.path(tmp_path)
    size = write_golden(path, Golden(KEY, {}, logits=logits_golden(logits, mask, 20)))
    assert 20_000 < size < 45_000, size
    assert not math.isnan(read_golden(path, KEY).logits.logprobs[0][0][0])  # type: ignore[union-attr]


def test_the_golden_folder_is_checked_at_start_up(tmp_path: Path, pytester: pytest.Pytester, run_infer) -> None:
    from pytest_infer.core.errors import ConfigError
    from pytest_infer.validation import validate_golden_dir, validate_golden_mode

    with pytest.raises(ConfigError, match=r"no such folder .* record goldens into it first with --infer-golden-record"):
        validate_golden_dir("nope", False, tmp_path)
    assert validate_golden_dir("new/goldens", True, tmp_path) == str(tmp_path / "new" / "goldens")  # created on write
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        validate_golden_dir("file", True, tmp_path)
    with pytest.raises(ConfigError, match=r"--infer-golden-regen writes goldens .* give --infer-golden too"):
        validate_golden_mode("", False, True)
    # as users meet it: a usage error naming the option as they wrote it (here: the ini, relative to the rootdir)
    pytester.makeini("[pytest]\ninfer_golden = goldens-typo\n")
    result = run_infer("--infer-suite=parity")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-infer: ini option infer_golden goldens-typo: no such folder (*/goldens-typo); *(set in *tox.ini)"
        ]
    )

"""Unit tests of batch invariance (parity/invariance.py): the bound's rule and the verdicts. The check itself
runs against a planted batch-dependent reduction in tests/test_planted_faults.py."""

from __future__ import annotations

import math

from pytest_infer.parity.floor import NoiseFloor
from pytest_infer.parity.invariance import BatchInvarianceResult, Placement, invariance_bound


def _floor(batch_max_abs: float) -> NoiseFloor:
    return NoiseFloor("float32", "cpu", batch_max_abs, 0.0, 0.0, dtype_max_abs=0.0, batch_max_abs=batch_max_abs)


def test_bound_is_ten_times_the_batch_noise_within_the_table() -> None:
    assert invariance_bound(1e-3, _floor(2e-5))[0] == 2e-4
    assert invariance_bound(1e-3, _floor(0.0))[0] == 1e-4  # never tighter than a tenth of the table
    assert invariance_bound(1e-3, _floor(1.0))[0] == 1e-3  # never looser than the table
    bound, source = invariance_bound(1e-3, None)
    assert bound == 1e-4 and "no noise floor" in source


def test_verdicts_bounded_and_bitwise() -> None:
    def result(bitwise: bool, *placements: Placement) -> BatchInvarianceResult:
        return BatchInvarianceResult("t", "cpu", "float32", "p", 10, 1e-4, "rule", bitwise, list(placements))

    small, large = Placement(2, 0, 2e-5, 3, 0), Placement(8, 7, 0.5, 10, 2)
    assert result(False, small).passed and not result(True, small).passed
    assert result(True, Placement(4, 3, 0.0, 0, 0)).passed
    failed = result(False, small, large)
    assert failed.failures == [
        "batch 8, last: max_abs 0.5 against the prompt alone > 0.0001 (rule); top-1 changed at 2 of 10 positions"
    ]
    assert failed.to_dict()["metrics"] == {
        "max_abs": 0.5,
        "bound": 1e-4,
        "differing_positions": 10,
        "top1_changed": 2,
        "placements": 2,
    }
    assert not result(False, Placement(3, 1, math.nan, 10, 0)).passed  # NaN never passes
    assert not result(False).passed  # nothing compared proves nothing
    assert "bitwise" in result(True, small).message() and result(True, small).to_dict()["variant"] == "bitwise"

"""Speed and memory of every selected technique against the baseline, in the same session
(``--infer-suite perf``), through pytest-benchmark: ``--benchmark-autosave``, ``--benchmark-compare``,
``--benchmark-compare-fail=median:10%`` and ``--infer-compare-fail=peak_memory:5%,tokens_per_s:10%``.
"""

from __future__ import annotations

import pytest


def test_decode_speed(infer_case, infer_perf, benchmark):
    if infer_case.technique.runner == "multiprocess":
        pytest.skip(f"{infer_case.technique.name} runs in its ranks: the perf suite times one process")
    infer_perf.assert_decode(infer_case, benchmark)

"""Speed and memory of every selected technique against the baseline, in the same session
(``--infer-suite perf``), through pytest-benchmark: ``--benchmark-autosave``, ``--benchmark-compare``,
``--benchmark-compare-fail=median:10%`` and ``--infer-compare-fail=peak_memory:5%,tokens_per_s:10%``.
"""

from __future__ import annotations


def test_decode_speed(infer_case, infer_perf, benchmark):
    infer_perf.assert_decode(infer_case, benchmark)

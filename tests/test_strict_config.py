"""A model repository's own strictness: ``--strict-markers --strict-config`` in its ini, with or without the
plugins the extras bring (pytest-xdist, pytest-benchmark). The plugin never adds a mark the session does not
know: the ``xdist_group`` mark of multi-process techniques only where pytest-xdist is loaded."""

from __future__ import annotations

import pytest

STRICT_INI = """
[pytest]
addopts = --strict-markers --strict-config
"""

GROUPED = """
def test_grouping_follows_xdist(infer_case, request):
    groups = [m.args[0] for m in request.node.iter_markers("xdist_group")]
    xdist = request.config.pluginmanager.hasplugin("xdist")
    multi = infer_case.technique.runner == "multiprocess"
    assert groups == (["pytest-infer-ranks"] if xdist and multi else [])
"""


@pytest.mark.parametrize(
    "plugins",
    [(), ("-p", "no:xdist"), ("-p", "no:benchmark"), ("-p", "no:xdist", "-p", "no:benchmark")],
    ids=["xdist+benchmark", "no-xdist", "no-benchmark", "neither"],
)
def test_strict_markers_and_config_in_every_plugin_combination(
    pytester: pytest.Pytester, run_infer, plugins: tuple[str, ...]
) -> None:
    """Collection of every bundled suite (multi-process techniques included) under the repository's strict ini,
    and a test that sees the grouping mark exactly where pytest-xdist is loaded."""
    pytester.makeini(STRICT_INI)
    pytester.makepyfile(test_grouping=GROUPED)
    result = run_infer(
        *plugins,
        "--infer-suite",
        "all",
        "--infer-technique",
        "sdpa,tensor_parallel",
        "-k",
        "test_grouping",
        "test_grouping.py",
    )
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert "not found in `markers` configuration option" not in result.stdout.str()
    result.assert_outcomes(passed=2)

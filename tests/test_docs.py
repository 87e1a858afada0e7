"""The docs that are generated from code must not drift from it."""

from __future__ import annotations

from pathlib import Path

from pytest_infer.__main__ import options_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_configuration_reference_matches_the_registered_options() -> None:
    text = (DOCS / "configuration.md").read_text()
    table = text.split("<!-- options:start -->\n", 1)[1].split("<!-- options:end -->", 1)[0]
    assert table == options_markdown(), (
        "docs/configuration.md is stale: regenerate with `python -m pytest_infer options --update docs/configuration.md`"
    )


def test_technique_catalogue_lists_every_builtin() -> None:
    from pytest_infer.techniques import builtin_techniques

    text = (DOCS / "techniques.md").read_text()
    missing = [t.name for t in builtin_techniques() if f"`{t.name}`" not in text]
    assert not missing, f"docs/techniques.md lacks {missing}"

"""Repository-level pytest configuration: keep collection to tests/ (and suites/ when selected)."""

collect_ignore = ["scripts", "fixtures", "docs", "examples", "build", "dist"]

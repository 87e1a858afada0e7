"""Print the README's two set-up-and-run commands, one per line: the first two ```bash blocks of README.md.

CI runs them exactly as the README writes them (.ci/run); tests/test_readme.py checks their shape. Stdlib only:
it runs before any virtual environment exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def commands(readme: str) -> list[str]:
    """The first two ```bash blocks, each a single command line (an error if not)."""
    blocks = [b.strip() for b in BLOCK.findall(readme)][:2]
    if len(blocks) != 2:
        raise ValueError(f"README.md: expected two ```bash blocks (main job, tests), found {len(blocks)}")
    for b in blocks:
        if "\n" in b:
            raise ValueError(f"README.md: a README command must be one line, got:\n{b}")
    return blocks


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    try:
        print("\n".join(commands(path.read_text(encoding="utf-8"))))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None

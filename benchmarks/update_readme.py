"""Copy generated benchmark tables into README.md between marker comments.

Each block ``<!-- BEGIN results:NAME -->`` ... ``<!-- END results:NAME -->`` in README.md is
replaced by the file ``benchmarks/results/NAME`` (written by the benchmark scripts; its
headings demoted by two levels), so the
figures in the README always come from a script run and are never typed in by hand.

    python benchmarks/update_readme.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(<!-- BEGIN results:(?P<name>[\w./-]+) -->\n).*?(<!-- END results:(?P=name) -->)", re.S
)


def demote(markdown: str, levels: int = 2) -> str:
    """Push Markdown headings down ``levels`` levels so they nest under the README's sections."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m[1]) + levels) + " ", markdown, flags=re.M)


def splice(readme: str, results: Path) -> tuple[str, list[str]]:
    """Replace every marked block with its results file; return the text and the missing files."""
    missing: list[str] = []

    def fill(match: re.Match) -> str:
        path = results / match["name"]
        if not path.exists():
            missing.append(str(path))
            return match.group(0)
        return f"{match.group(1)}{demote(path.read_text().rstrip())}\n{match.group(3)}"

    return BLOCK.sub(fill, readme), missing


def main() -> int:
    """Update README.md in place."""
    readme = ROOT / "README.md"
    text, missing = splice(readme.read_text(), ROOT / "benchmarks" / "results")
    readme.write_text(text)
    for path in missing:
        print(f"not found (block left as it was): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

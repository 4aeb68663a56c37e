"""Run ``diffst demo`` with its default settings and keep its table and picture for the README.

    python benchmarks/demo_results.py      # writes benchmarks/results/demo.md and demo_maps.png
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from diffst.demo import DemoSettings, format_summary, run_demo

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    """Run the demo in a temporary folder and copy its summary and figure."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = run_demo(tmp, DemoSettings())
        shutil.copy(Path(tmp) / "summary.md", RESULTS / "demo.md")
        shutil.copy(report["figure"], RESULTS / "demo_maps.png")
    print(format_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

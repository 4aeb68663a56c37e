"""Rewrite benchmark run folders' tables from the unit scores they store (nothing re-measured).

When the report gains a statistic (e.g. the per-seed effect of each ablation), older run folders
get it without rerunning: their ``summary.json`` keeps every run's scores.

    python benchmarks/refresh_tables.py benchmarks/results/ablations_simulated_x5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffst.benchmark.report import refresh_outputs


def main(argv: list[str] | None = None) -> int:
    """Refresh every folder given; print what was rewritten."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="benchmark output folders")
    for folder in p.parse_args(argv).folders:
        refresh_outputs(folder)
        print(f"rewrote {folder / 'table.md'} and {folder / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

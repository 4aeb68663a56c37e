"""Benchmark Diff-ST against the baselines on one dataset and print the Markdown table.

Examples (2 CPU cores):
    python benchmarks/run_benchmark.py --dataset simulated --seeds 0,1,2 --out bench/sim
    python benchmarks/run_benchmark.py --dataset her2st --data-root ../shared/data/her2st \
        --split loo --seeds 0,1,2 --out bench/her2st
    python benchmarks/run_benchmark.py --dataset her2st --data-root ../shared/data/her2st \
        --split loo --stage validation --out bench/her2st_val

The same function backs ``diffst benchmark``: :func:`diffst.benchmark.run_benchmark`.
"""

from __future__ import annotations

import argparse
import sys

from diffst.benchmark import METHOD_LABELS, PRESET_NAMES, run_benchmark
from diffst.threads import apply_threads


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError as exc:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="simulated",
                   help="'simulated', 'her2st', 'xenium_crop' or comma-separated sample paths")
    p.add_argument("--factors", type=_ints, default=None,
                   help="comma-separated scale factors (default 5,10; 2,3 for spot data)")
    p.add_argument("--split", default="holdout",
                   help="holdout | loo (leave-one-section-out) | seeds (simulated) | a section")
    p.add_argument("--stage", default="test", choices=["test", "validation"],
                   help="'validation' holds out inner sections/strips/seeds, never the test ones")
    p.add_argument("--preset", default="default", choices=list(PRESET_NAMES))
    p.add_argument("--out", default="benchmark_out", help="output folder")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {','.join(METHOD_LABELS)}")
    p.add_argument("--no-ablations", action="store_true",
                   help="skip the Diff-ST ablation runs")
    p.add_argument("--seeds", type=_ints, default=[0],
                   help="comma-separated training seeds (every fold runs once per seed)")
    p.add_argument("--steps", type=int, default=None,
                   help="override the preset's training steps (Diff-ST, ablations, regression)")
    p.add_argument("--data-root", default=None,
                   help="folder of a real dataset (required for her2st and xenium_crop)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: DIFFST_THREADS, else usable cores - 1)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the output paths."""
    args = parse_args(argv)
    apply_threads(args.threads)
    overrides = {"steps": args.steps} if args.steps is not None else None
    summary = run_benchmark(
        args.dataset, args.factors, args.split, args.preset, args.out,
        methods=args.methods.split(",") if args.methods else None,
        ablations=not args.no_ablations, seeds=args.seeds, stage=args.stage,
        data_root=args.data_root, overrides=overrides, progress=not args.quiet,
    )
    print(summary["table"])
    names = [v for k, v in summary["outputs"].items() if k != "figures"]
    print(f"wrote {', '.join(names)} and {len(summary['outputs']['figures'])} figure(s) "
          f"in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Validation check of the iStar-like fit's early stopping (``IStarLike(select_folds=...)``).

The iStar-like fit is made per slide, so it needs no training sections: on each VALIDATION
section of a dataset (the sections and strips that ``diffst benchmark --stage validation``
holds out; never a test section's test part), the LR map is pooled (after binomial thinning
for the depth cases), the fit is made with a fixed number of steps and with steps chosen by
cross-validation over the slide's LR cells, each map goes through the benchmark's consistency
step and is scored against the truth like ``diffst benchmark`` scores it. Bicubic + C is the
reference. Output: ``per_run.csv`` and ``table.md`` (mean ± sd over section x seed, sections
won, generated sentences).

    python benchmarks/istar_early_stopping.py --data-root ../shared/data \\
        --out benchmarks/results/validation/istar_early_stopping
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from diffst.baselines import BASELINES
from diffst.benchmark.data import load_benchmark_data
from diffst.benchmark.methods import prediction_mask, with_consistency
from diffst.benchmark.report import HEADLINE, MAIN_METRICS, mean_sd, paired_words
from diffst.benchmark.run import depth_shifted
from diffst.data.sample import STSample
from diffst.io.atomic import atomic_path
from diffst.metrics import evaluate
from diffst.model.istar_like import IStarLike, istar_settings

METRICS = {m: MAIN_METRICS[m] for m in HEADLINE}
FIXED, CHOSEN, BICUBIC = "iStar-like + C, fixed steps", "iStar-like + C, chosen steps", \
    "Bicubic + C"


@dataclass(frozen=True)
class Case:
    """One dataset, scale factor and test depth."""

    dataset: str
    folder: str | None  # under --data-root; None: simulated
    factor: int
    depth: float = 1.0


CASES = [Case("her2st", "her2st", f, d) for f in (2, 3) for d in (1.0, 0.1, 0.05)] + [
    Case("xenium_crop", "xenium_breast_crop", f) for f in (5, 10)] + [
    Case("simulated", None, f) for f in (5, 10)]
SPLITS = {"her2st": "loo"}
CHOSEN_FOLDS = istar_settings()["select_folds"] or 5
"""Folds of the step choice compared with fixed steps: the package default (5 if it is off)."""


def validation_sections(case: Case, seed: int, data_root: Path | None) -> list[STSample]:
    """The held-out sections (or strips) of the validation stage (``short`` preset), cut as
    ``diffst benchmark`` cuts them for the dataset's default factors."""
    root = None if case.folder is None else data_root / case.folder
    data, _ = load_benchmark_data(case.dataset, SPLITS.get(case.dataset, "holdout"),
                                  "validation", "short", seed=seed, data_root=root)
    return [t for fold in data.folds for t in fold.test]


def score_case(case: Case, seed: int, truth0: STSample, select_folds: int) -> list[dict]:
    """Rows (one per method) of one validation section: scores and the iStar-like steps."""
    lr, truth = depth_shifted(truth0, case.factor, case.depth, seed)
    given = prediction_mask(lr, case.factor)
    h, w = truth.shape
    maps, steps = {}, {}
    bicubic = BASELINES["bicubic"](lr, case.factor, given.shape, seed=seed) * given
    maps[BICUBIC] = with_consistency(bicubic, lr, given, case.factor)
    for name, folds in ((FIXED, 0), (CHOSEN, select_folds)):
        fit = IStarLike(seed=0, select_folds=folds).fit(lr, case.factor, given.shape)
        maps[name] = with_consistency(fit.predict() * given, lr, given, case.factor)
        steps[name] = fit.chosen_steps
    rows = []
    for name, pred in maps.items():
        table = evaluate(truth.expr, pred[:, :h, :w], truth.mask, truth.genes)
        rows.append({"dataset": case.dataset, "factor": case.factor, "depth": case.depth,
                     "seed": seed, "section": truth0.name, "method": name,
                     "steps": steps.get(name, np.nan),
                     **{m: float(table[m].mean()) for m in METRICS}})
    return rows


def case_lines(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Table rows and one sentence for one case's runs."""
    stats = df.groupby("method")[list(METRICS)].agg(["mean", "std"])
    d = df.iloc[0]
    label = f"{d.dataset} x{d.factor}" + (f", depth {d.depth:.0%}" if d.depth != 1.0 else "")
    steps = df[df.method == CHOSEN]["steps"]
    rows = []
    for method in (BICUBIC, FIXED, CHOSEN):
        cells = [mean_sd(stats.loc[method, (m, "mean")], stats.loc[method, (m, "std")])
                 for m in METRICS]
        note = (f"{steps.mean():.0f} ({steps.min():.0f}-{steps.max():.0f})" if method == CHOSEN
                else str(int(df[df.method == FIXED]["steps"].iloc[0])) if method == FIXED
                else "")
        rows.append(f"| {label} | {method} | " + " | ".join(cells) + f" | {note} |")
    sentence = (f"- {label}: chosen steps against fixed steps: "
                f"{paired_words(df, 'method', CHOSEN, FIXED, tuple(METRICS))}.")
    return rows, [sentence]


def write_table(df: pd.DataFrame, out: Path, seeds: list[int], skipped: list[str]) -> None:
    """``table.md``: one block of rows per case, then the generated sentences."""
    lines = [
        "# iStar-like fit: fixed steps against steps chosen by cross-validation (validation)",
        "",
        "Validation sections only (those `diffst benchmark --stage validation` holds out: "
        "HER2ST leave-one-out validation sections, the Xenium validation strip, the simulated "
        f"validation tissues), seeds {', '.join(map(str, seeds))}. Each slide's LR map (thinned "
        "first where a depth is given; the target is then the thinned truth's expectation) is "
        "fitted with the package's iStar-like settings, once with a fixed number of steps and "
        f"once with the steps chosen by {CHOSEN_FOLDS}-fold cross-validation over its LR cells (no "
        "truth). Every map goes through the same consistency step (+ C) and is scored with the "
        "benchmark's metrics; mean ± sd over section x seed. The fits' own seed is 0 in every "
        "run, so at full depth the seeds repeat the same HER2ST and Xenium fits (a seed "
        "changes the thinning, and the tissue of simulated data). Steps: the fixed count, or "
        "the mean (min-max) of the chosen counts.",
        "",
        "| Case | Method | " + " | ".join(METRICS.values()) + " | Steps |",
        "|---|---|" + "---|" * len(METRICS) + "---|",
    ]
    sentences = []
    for _, group in df.groupby(["dataset", "factor", "depth"], sort=False):
        rows, said = case_lines(group)
        lines += rows
        sentences += said
    lines += ["", "In words (generated from the table):", "", *sentences]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    lines += ["", "Produced by `python benchmarks/istar_early_stopping.py`; do not edit the "
              "numbers by hand."]
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"),
                        help="folder with her2st/ and xenium_breast_crop/ (cases skip without)")
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/validation/istar_early_stopping"))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--cases", default="all",
                        help="comma-separated dataset names to run (default: all)")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite table.md from the per_run.csv already in --out")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.table_only:
        df = pd.read_csv(args.out / "per_run.csv")
        write_table(df, args.out, sorted(df["seed"].unique().tolist()), [])
        return 0
    wanted = None if args.cases == "all" else set(args.cases.split(","))
    rows, skipped = [], []
    for case in tqdm([c for c in CASES if wanted is None or c.dataset in wanted], desc="cases"):
        if case.folder is not None and not (args.data_root / case.folder).is_dir():
            reason = f"{case.dataset} (no {case.folder}/ under the data root)"
            if reason not in skipped:
                skipped.append(reason)
            continue
        for seed in seeds:
            for truth in validation_sections(case, seed, args.data_root):
                rows += score_case(case, seed, truth, CHOSEN_FOLDS)
    if not rows:
        print("nothing to run: " + "; ".join(skipped), file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    with atomic_path(args.out / "per_run.csv") as tmp:
        df.to_csv(tmp, index=False)
    write_table(df, args.out, seeds, skipped)
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

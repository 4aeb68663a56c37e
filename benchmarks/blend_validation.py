"""Validation check: Diff-ST's mean map mixed with the slide's own iStar-like map.

Diff-ST's mean map averages a few diffusion samples; the early-stopped iStar-like map is fitted
on the slide itself. Their errors differ, so a weighted mean ``(1 - w) * Diff-ST + w * base``
of Diff-ST's raw map and the in-slide base map (:func:`diffst.model.upsampler.istar_like_base`,
the iStar-like map made consistent with the slide's counts), then the benchmark's consistency
step, may beat both.
This script trains Diff-ST once per validation fold (the preset's settings at the factor, as
``diffst benchmark --stage validation`` trains it) and scores every weight ``w`` of
``--weights`` on the fold's held-out section: ``w = 0`` is Diff-ST + C, ``w = 1`` is the
base map (iStar-like + C of the iStar-like fit with seed 0). ``--test-strip F`` gives the
methods and scores only the right ``F`` of each held-out section's width (cut at a multiple of
the factor): with ``--split seeds`` a slide of another tissue as large as a ``holdout`` strip.
Validation sections only; the truth is used for scoring only. Output: ``per_run.csv`` and
``table.md`` (mean ± sd over section x seed; generated sentences: the preset's weight against
``w = 0`` in sections won, and the best fixed weight). ``--combine`` writes one such table for
several output folders.

    python benchmarks/blend_validation.py --data-root ../shared/data/her2st --factor 2 \\
        --out benchmarks/results/validation/blend/x2
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from diffst.benchmark.data import Fold, load_benchmark_data
from diffst.benchmark.methods import DiffSTMethod, prediction_mask, with_consistency
from diffst.benchmark.presets import Preset, get_preset
from diffst.benchmark.report import HEADLINE, MAIN_METRICS, mean_sd, paired_words
from diffst.benchmark.run import depth_shifted
from diffst.config import DEPTH_MIX
from diffst.demo import split_holdout
from diffst.infer import istar_mix_weight
from diffst.io.atomic import atomic_path
from diffst.metrics import HIGHER_IS_BETTER, evaluate
from diffst.model.upsampler import istar_like_base

METRICS = {m: MAIN_METRICS[m] for m in HEADLINE}


def fold_rows(fold: Fold, factor: int, preset: Preset, seed: int, thin: float,
              weights: list[str]) -> list[dict]:
    """Scores of every weight on the held-out sections of one fold (one Diff-ST training)."""
    diffst = DiffSTMethod(preset, seed)
    diffst.fit(fold.train, fold.genes, factor)
    pipeline = diffst.trainer.pipeline()
    rows = []
    for truth0 in fold.test:
        lr, truth = depth_shifted(truth0, factor, thin, seed)
        given = prediction_mask(lr, factor)
        ours, base = diffst.predict(lr, given), istar_like_base(lr, factor, given)
        h, w_ = truth.shape
        for label in weights:
            w = istar_mix_weight(label if label == DEPTH_MIX else float(label), pipeline, lr)
            mixed = with_consistency((1.0 - w) * ours + w * base, lr, given, factor)
            table = evaluate(truth.expr, mixed[:, :h, :w_], truth.mask, truth.genes)
            rows.append({"factor": factor, "depth": thin, "seed": seed,
                         "section": truth0.name, "weight": label, "w": w,
                         **{m: float(table[m].mean()) for m in METRICS}})
    return rows


def with_test_strips(fold: Fold, fraction: float, factor: int) -> Fold:
    """``fold`` whose held-out sections are cut to their right ``fraction`` of the width."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--test-strip must be between 0 and 1, got {fraction}")
    return replace(fold, test=[split_holdout(s, fraction, factor)[1] for s in fold.test])


def case_label(df: pd.DataFrame) -> str:
    """``x3, depth 5%`` for one case's rows."""
    d = df.iloc[0]
    return f"x{d.factor}" + (f", depth {d.depth:.0%}" if d.depth != 1.0 else "")


def case_rows(df: pd.DataFrame, with_case: bool) -> list[str]:
    """Table rows (one per weight, in run order) of one case."""
    stats = df.groupby("weight")[[*METRICS, "w"]].agg(["mean", "std", "min", "max"])
    rows = []
    for key in dict.fromkeys(df["weight"]):
        cells = [mean_sd(stats.loc[key, (m, "mean")], stats.loc[key, (m, "std")])
                 for m in METRICS]
        name = key if key != DEPTH_MIX else (
            f"{DEPTH_MIX} ({stats.loc[key, ('w', 'mean')]:.2f}, "
            f"{stats.loc[key, ('w', 'min')]:.2f}-{stats.loc[key, ('w', 'max')]:.2f})")
        rows.append("| " + (f"{case_label(df)} | " if with_case else "") + f"{name} | "
                    + " | ".join(cells) + " |")
    return rows


def best_words(df: pd.DataFrame) -> str:
    """The fixed weight with the best mean on each metric."""
    fixed = df[df["weight"] != DEPTH_MIX]
    stats = fixed.groupby("weight")[list(METRICS)].mean()
    best = {m: stats[m].idxmax() if HIGHER_IS_BETTER.get(m) else stats[m].idxmin()
            for m in METRICS}
    return ", ".join(f"{METRICS[m].split()[0]} w = {w}" for m, w in best.items())


def write_table(df: pd.DataFrame, out: Path, command: str, adopted: dict[int, str]) -> None:
    """``table.md``: rows per case and weight; per case, the adopted weight (``adopted``:
    factor -> weight label, the preset's) against w = 0 and the best fixed weights, in words."""
    df = df.astype({"weight": str})
    cases = [group for _, group in df.groupby(["factor", "depth"], sort=False)]
    several = len(cases) > 1
    name = df["dataset"].iloc[0] if "dataset" in df else "her2st"  # older files: HER2ST
    title = name if several else f"{name} {case_label(df)}"
    lines = [f"# Diff-ST mixed with the slide's own iStar-like map ({title}, validation)", "",
             "Weight w of the iStar-like map in the mixed raw map, then the consistency step; "
             "w = 0 is Diff-ST + C, w = 1 the in-slide base map (iStar-like, seed 0, + C); "
             f"`{DEPTH_MIX}`: w = max(0, 1 - 1/r), r = training depth / slide depth, per "
             "slide (mean and range of w given). Validation sections only, seeds "
             f"{', '.join(map(str, sorted(df['seed'].unique())))}; mean ± sd over section x "
             "seed.", "",
             "| " + ("Case | " if several else "") + "w | " + " | ".join(METRICS.values())
             + " |",
             "|---|" + ("---|" if several else "") + "---|" * len(METRICS)]
    sentences = []
    for case in cases:
        lines += case_rows(case, several)
        factor, weights = int(case.iloc[0].factor), list(dict.fromkeys(case["weight"]))
        chosen = adopted.get(factor)
        if chosen is not None and chosen in weights and chosen != weights[0]:
            said = paired_words(case, "weight", chosen, weights[0], tuple(METRICS))
            sentences.append(f"- {case_label(case)}: the preset's w = {chosen} against "
                             f"w = {weights[0]}: {said}; best fixed weight: {best_words(case)}.")
        else:
            sentences.append(f"- {case_label(case)}: best fixed weight: {best_words(case)}.")
    lines += ["", "In words (generated from the table):", "", *sentences,
              "", f"Produced by `{command}`; do not edit the numbers by hand."]
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")


def adopted_weights(preset_name: str, df: pd.DataFrame) -> dict[int, str]:
    """The preset's ``istar_mix`` at each factor of the runs ``df``, as the table labels
    weights (the data profile of the runs; files written before that column: HER2ST, spots)."""
    factors = sorted(int(f) for f in df["factor"].unique())
    profile = df["profile"].iloc[0] if "profile" in df else "spots"
    preset = get_preset(preset_name, profile)
    labels = {}
    for f in factors:
        value = preset.at(f).istar_mix
        labels[f] = value if isinstance(value, str) else f"{value:g}"
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/her2st"))
    parser.add_argument("--dataset", default="her2st")
    parser.add_argument("--split", default="loo",
                        help="as diffst benchmark --split (holdout for xenium_crop, simulated)")
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--thin", type=float, default=1.0)
    parser.add_argument("--preset", default="short")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--weights", default=f"0,0.25,0.5,0.75,1,{DEPTH_MIX}",
                        help=f"weights of the base map; {DEPTH_MIX!r}: the depth rule of "
                             "diffst.infer.istar_mix_weight")
    parser.add_argument("--match-depth", action="store_true",
                        help="Diff-ST samples with the input scaled to the training depth")
    parser.add_argument("--size-um", type=float, default=None,
                        help="side (µm) of the simulated tissue (default: the preset's)")
    parser.add_argument("--test-strip", type=float, default=None,
                        help="score only this right fraction of each held-out section's width")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--combine", type=Path, nargs="+", default=None,
                        help="write one table of these output folders' per_run.csv to --out")
    args = parser.parse_args(argv)
    if args.combine:
        df = pd.concat([pd.read_csv(d / "per_run.csv", dtype={"weight": str})
                        for d in args.combine], ignore_index=True)
        args.out.mkdir(parents=True, exist_ok=True)
        write_table(df, args.out, "python benchmarks/blend_validation.py --combine " + " ".join(
            str(d) for d in args.combine) + f" --preset {args.preset} --out {args.out}",
            adopted_weights(args.preset, df))
        print((args.out / "table.md").read_text())
        return 0
    if args.dataset != "simulated" and not args.data_root.is_dir():
        print(f"skipped: no data folder {args.data_root}", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = args.weights.split(",")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        torch.manual_seed(seed)
        overrides = {**({"match_depth": True} if args.match_depth else {}),
                     **({"size_um": args.size_um} if args.size_um else {})}
        data, preset = load_benchmark_data(args.dataset, args.split, "validation", args.preset,
                                           [args.factor], seed, args.data_root,
                                           overrides or None)
        for fold in tqdm(data.folds, desc=f"folds seed {seed}"):
            if args.test_strip:
                fold = with_test_strips(fold, args.test_strip, args.factor)
            unmixed = replace(preset.at(args.factor), istar_mix=0.0)  # mixed here, per weight
            rows += [{**row, "dataset": data.name, "profile": preset.profile} for row in
                     fold_rows(fold, args.factor, unmixed, seed, args.thin, weights)]
    args.out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    with atomic_path(args.out / "per_run.csv") as tmp:
        df.to_csv(tmp, index=False)
    command = (f"python benchmarks/blend_validation.py --data-root DATA_ROOT --dataset "
               f"{args.dataset} --split {args.split} --factor {args.factor} --thin "
               f"{args.thin:g} --preset {args.preset} --seeds {args.seeds} --weights "
               f"{args.weights}" + (" --match-depth" if args.match_depth else "")
               + (f" --size-um {args.size_um:g}" if args.size_um else "")
               + (f" --test-strip {args.test_strip:g}" if args.test_strip else ""))
    write_table(df, args.out, command, adopted_weights(args.preset, df))
    print((args.out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

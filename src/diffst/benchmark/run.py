"""Run the benchmark: fit every method per fold and seed, score raw and consistent maps."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diffst.benchmark.data import BenchmarkData, Fold, load_benchmark_data, read_dataset
from diffst.benchmark.methods import (
    METHOD_LABELS,
    REFERENCE_METHODS,
    Method,
    consistent_key,
    make_method,
    method_label,
    methods_for_factor,
    prediction_mask,
    with_consistency,
)
from diffst.benchmark.presets import Preset
from diffst.benchmark.report import build_summary, draw_figures, format_tables, write_outputs
from diffst.data.lr import simulate_lr, thin_counts
from diffst.data.sample import STSample
from diffst.metrics import METRIC_COLUMNS, gene_corr_error
from diffst.metrics import evaluate as score_maps

UNIT_COLUMNS = ["factor", "seed", "fold", "test"]
"""A unit of evidence: one test section (or strip) at one factor for one training seed."""


@dataclass
class FoldResult:
    """Scores of every method on one fold at one factor for one seed."""

    per_gene: pd.DataFrame
    per_sample: pd.DataFrame
    maps: dict[str, dict[str, np.ndarray]]


def depth_shifted(truth: STSample, factor: int, thin: float, seed: int
                  ) -> tuple[STSample, STSample]:
    """The test input and scoring target of a section sequenced ``thin`` times as deep.

    The LR input is pooled from binomially thinned HR counts; the target is ``thin`` x the
    HR truth (the expected thinned counts), so scores measure the recovered pattern rather than
    the extra sampling noise of a thinned truth. ``thin = 1``: the section as measured.
    """
    if thin == 1.0:
        return simulate_lr(truth, factor), truth
    lr = simulate_lr(thin_counts(truth, thin, seed), factor)
    return lr, replace(truth, expr=(truth.expr * thin).astype(np.float32))


def run_fold(fold: Fold, factor: int, keys: list[str], preset: Preset, seed: int,
             hr_mask: str = "lr", progress: bool = False,
             make: Callable[..., Method] = make_method, thin: float = 1.0) -> FoldResult:
    """Fit every method on ``fold.train``; score its raw and consistent maps on ``fold.test``.

    Methods see only the pooled LR sample and :func:`prediction_mask` of it; the truth's own
    mask is used for scoring only. ``thin < 1`` is the depth-shift test: the test sections
    (never the training sections) are binomially thinned to that fraction of their counts
    (:func:`depth_shifted`).
    """
    shifted = [depth_shifted(t, factor, thin, seed) for t in fold.test]
    lrs = [lr for lr, _ in shifted]
    targets = [target for _, target in shifted]
    gene_rows, sample_rows = [], []
    maps: dict[str, dict[str, np.ndarray]] = {t.name: {} for t in fold.test}
    for key in keys:
        _log(progress, f"[x{factor} {fold.name} seed {seed}] {method_label(key)}: fitting")
        method = make(key, preset, seed, progress)
        t0 = time.perf_counter()
        method.fit(fold.train, fold.genes, factor)
        fit_s = time.perf_counter() - t0
        for truth, lr in zip(targets, lrs, strict=True):
            h, w = truth.shape
            given = prediction_mask(lr, factor, hr_mask)
            t0 = time.perf_counter()
            raw = method.predict(lr, given)
            predict_s = time.perf_counter() - t0
            variants = {key: raw}
            if key not in REFERENCE_METHODS:
                variants[consistent_key(key)] = with_consistency(raw, lr, given, factor)
            for name, pred in variants.items():
                pred = pred[:, :h, :w]
                table = score_maps(truth.expr, pred, truth.mask, truth.genes)
                ids = dict(factor=factor, seed=seed, fold=fold.name, test=truth.name,
                           method=name)
                gene_rows.append(table.reset_index().assign(**ids))
                sample_rows.append({**ids, "gene_corr_error": gene_corr_error(
                    truth.expr, pred, truth.mask), "fit_s": fit_s / len(fold.test),
                    "predict_s": predict_s})
                maps[truth.name][name] = pred
        _log(progress, f"[x{factor} {fold.name} seed {seed}] {method_label(key)}: "
                       f"fit {fit_s:.1f} s")
        del method
    order = [*UNIT_COLUMNS, "method", "gene", *METRIC_COLUMNS]
    per_gene = pd.concat(gene_rows, ignore_index=True)[order]
    return FoldResult(per_gene, pd.DataFrame(sample_rows), maps)


def run_benchmark(
    dataset: str | list[str] = "simulated",
    factors: list[int] | tuple[int, ...] | None = None,
    split: str = "holdout",
    preset: str = "default",
    out_dir: str | Path = "benchmark_out",
    methods: list[str] | None = None,
    ablations: bool = True,
    seeds: list[int] | tuple[int, ...] = (0,),
    *,
    stage: str = "test",
    hr_mask: str = "lr",
    data_root: str | Path | None = None,
    overrides: dict | None = None,
    thin: float = 1.0,
    progress: bool = True,
) -> dict:
    """Run the benchmark and write ``table.md``, ``per_gene.csv``, ``summary.json``, figures.

    Args:
        dataset: ``"simulated"``, ``"her2st"``, ``"xenium_crop"`` or path(s) readable by
            :func:`diffst.io.read_sample` (a list, or comma-separated).
        factors: integer scale factors (default: 5, 10 for cell-scale data; 2, 3 for spots).
        split: ``"holdout"``, ``"loo"`` (leave-one-section-out), ``"seeds"`` (simulated only)
            or the name of the section to test on.
        preset: ``"quick"``, ``"default"`` or ``"full"`` (:mod:`diffst.benchmark.presets`).
        out_dir: output folder.
        methods: main method keys (default all of :data:`METHOD_LABELS`).
        ablations: also run Diff-ST with each part off (at the preset's ablation factors).
        seeds: training seeds (and, for the simulated tissue, tissue seeds); every fold is
            run once per seed.
        stage: ``"test"`` or ``"validation"`` (:mod:`diffst.benchmark.data`).
        hr_mask: how the HR mask given to every method is made (``"lr"``).
        data_root: folder of a real dataset (HER2ST, Xenium crop); required for those.
        overrides: :class:`Preset` fields to change, e.g. ``{"steps": 300}``.
        thin: depth-shift test: test sections binomially thinned to this fraction of their
            counts (training sections untouched); scored against ``thin`` x the truth.
        progress: print progress to stderr.

    Returns:
        The summary (as written to ``summary.json``) with the Markdown tables under ``"table"``.
    """
    start = time.perf_counter()
    methods = list(methods or METHOD_LABELS)
    for key in methods:
        if key not in METHOD_LABELS:
            raise ValueError(f"unknown method {key!r}: choose from {list(METHOD_LABELS)}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("give at least one seed")
    read = None if dataset == "simulated" else read_dataset(dataset, data_root, None)
    factor_list = factors and list(factors)
    out = Path(out_dir)
    per_gene, per_sample, figures = [], [], []
    runs: list[tuple[int, BenchmarkData]] = []
    for seed in seeds:
        torch.manual_seed(seed)
        data, chosen = load_benchmark_data(dataset, split, stage, preset, factor_list, seed,
                                           data_root, overrides, samples=read)
        runs.append((seed, data))
        for factor in data.factors:
            keys = methods_for_factor(methods, ablations, factor, data.factors, chosen)
            for fold in data.folds:
                res = run_fold(fold, factor, keys, chosen.at(factor), seed, hr_mask,
                               progress, thin=thin)
                per_gene.append(res.per_gene)
                per_sample.append(res.per_sample)
                if seed == seeds[0]:
                    figures += draw_figures(data.name, fold, factor, res.maps, methods,
                                            chosen, out)
    gene_df = pd.concat(per_gene, ignore_index=True)
    sample_df = pd.concat(per_sample, ignore_index=True)
    summary = build_summary(runs, chosen, split, stage, hr_mask, methods, ablations, seeds,
                            gene_df, sample_df, dataset_arg=dataset, preset_name=preset,
                            thin=thin)
    summary["wall_s"] = time.perf_counter() - start
    summary["outputs"] = {"table": "table.md", "per_gene": "per_gene.csv",
                          "summary": "summary.json",
                          "figures": [str(p.relative_to(out)) for p in figures]}
    summary["table"] = format_tables(summary)
    write_outputs(out, summary, gene_df)
    return summary


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)

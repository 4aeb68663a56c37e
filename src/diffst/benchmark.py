"""One-command benchmark: Diff-ST against the baselines users pick, scored with the same code.

For a dataset, a list of scale factors and a split, every method is fitted on the training part
and scored on the held-out part by :func:`diffst.metrics.evaluate` (per gene) and
:func:`diffst.metrics.gene_corr_error` (per test sample). The held-out HR truth is sum-pooled by
the factor (:func:`diffst.data.lr.simulate_lr`) into the LR input every method receives.

Methods (keys of :data:`METHOD_LABELS`): ``spot_constant``, ``bicubic``, ``tesla``,
``regression`` (:class:`diffst.baselines.regression.HistologyRegression`), ``istar_like``,
``diffst``, and with ablations ``diffst-no_<part>`` for each part of
:data:`diffst.api.ABLATIONS`. The interpolation, TESLA-style and iStar-style baselines see only
the test sample's LR map (and image); ``regression`` and Diff-ST train on the training part.

Datasets: ``"simulated"`` (the built-in simulated tissue; split ``holdout`` = train on the left,
test on the right strip, or ``seeds`` = train on one simulated section, test on the next seed),
``"her2st"`` (the HER2ST sections in ``data_root``; ``holdout`` = test on the last section,
``loo`` = leave-one-section-out, or a section name), or paths readable by
:func:`diffst.io.read_sample` (one path: strip holdout; several: like HER2ST).

Outputs in ``out_dir`` (all written atomically): ``table.md`` (methods x metrics per factor,
Diff-ST's per-gene win rates with Wilcoxon p-values, the ablation table and the metrics where
Diff-ST does not win), ``per_gene.csv``, ``summary.json`` (settings, wall times, machine) and
``figures/*.png`` (truth / LR / each method over the H&E).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from diffst.api import ABLATIONS, default_work_um_per_px, model_config_for, shared_top_genes
from diffst.baselines import BASELINES, IStarLike
from diffst.baselines.regression import HistologyRegression
from diffst.data.image import aligned_image
from diffst.data.lr import padded_mask, simulate_lr, upsample_nearest
from diffst.data.sample import SampleError, STSample
from diffst.demo import split_holdout
from diffst.infer import model_from_trainer, super_resolve
from diffst.io.atomic import atomic_path
from diffst.metrics import HIGHER_IS_BETTER, METRIC_COLUMNS, gene_corr_error, paired_wilcoxon
from diffst.metrics import evaluate as score_maps
from diffst.plot import gene_panel
from diffst.train import TrainConfig, Trainer

METHOD_LABELS: dict[str, str] = {
    "spot_constant": "Spot-constant",
    "bicubic": "Bicubic",
    "tesla": "TESLA-like",
    "regression": "Histology regression",
    "istar_like": "iStar-like",
    "diffst": "Diff-ST",
}
"""The main methods, in table order."""

ABLATION_LABELS: dict[str, str] = {
    "disentangle": "w/o disentangling",
    "modulation": "w/o modulation",
    "attention": "w/o dynamic attention",
    "graph": "w/o CIGC-Graph",
}
"""Diff-ST parts that ablation rows switch off (keys of :data:`diffst.api.ABLATIONS`)."""

TABLE_METRICS: dict[str, str] = {
    "rmse": "RMSE ↓",
    "ssim": "SSIM ↑",
    "pcc": "PCC ↑",
    "psnr": "PSNR ↑",
    "rvd": "RVD ↓",
    "istar_rmse": "iStar RMSE ↓",
    "istar_ssim": "iStar SSIM ↑",
    "istar_pcc": "iStar PCC ↑",
    "gene_corr_error": "Gene-corr err ↓",
}
"""Columns of the Markdown tables (mean over genes; gene-corr error mean over test samples)."""

WIN_METRICS = ("rmse", "ssim", "pcc", "psnr")
"""Metrics of the win-rate table (the paper's four)."""

DATASETS = ("simulated", "her2st")
SPLITS = ("holdout", "loo", "seeds")
"""Named splits; a section name is also accepted (test on that section)."""
DEFAULT_FACTORS = {"cells": (5, 10), "spots": (2, 3)}
SPOT_PROFILE_MIN_UM = 50.0
"""Raster cells of at least this size (µm) are spots (legacy ST, Visium): the ``spots`` presets."""


def ablation_key(part: str) -> str:
    """Method key of the Diff-ST run with ``part`` switched off, e.g. ``diffst-no_graph``."""
    return f"diffst-no_{part}"


def method_label(key: str) -> str:
    """Human-readable name of a method key."""
    if key.startswith("diffst-no_"):
        return f"Diff-ST {ABLATION_LABELS[key.removeprefix('diffst-no_')]}"
    return METHOD_LABELS[key]


# ---------------------------------------------------------------------------- presets
TINY_MODEL = dict(channels=8, channel_mults=(1, 2), time_dim=16, cond_channels=8,
                  tissue_px_per_cell=2, tile_px=4, n_tiles=6, attn_dim=8, attn_heads=2,
                  graph_dim=4, graph_layers=1)


@dataclass
class Preset:
    """Settings of one benchmark run; ``None`` means the package default named in brackets.

    Attributes:
        name: preset name; ``profile`` ``cells`` (single-cell-scale rasters) or ``spots``.
        model: :class:`~diffst.model.config.DiffSTConfig` overrides (others: its defaults).
        steps, batch_size, lr, ema_decay: Diff-ST and regression training [TrainConfig].
        patch_um: HR patch side in µm, rounded to a multiple of factor x cell [8 x factor
            cells, as :func:`diffst.api.train_model`].
        work_um_per_px: image resolution of the model [:func:`default_work_um_per_px`].
        sample_steps, n_samples: DDIM steps and samples per tile averaged into the mean map.
        ablation_factors: ``"first"`` (ablations at the first factor only) or ``"all"``.
        size_um, n_genes, holdout_fraction: simulated tissue side (µm) and gene count (for real
            data: the number of most expressed shared genes), held-out strip fraction.
        istar: :class:`~diffst.baselines.IStarLike` keyword arguments.
        figure_genes: genes shown per figure.
    """

    name: str
    profile: str
    model: dict = field(default_factory=dict)
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    ema_decay: float | None = None
    patch_um: float | None = None
    work_um_per_px: float | None = None
    sample_steps: int = 20
    n_samples: int = 4
    ablation_factors: str = "first"
    size_um: float = 1600.0
    n_genes: int = 20
    holdout_fraction: float = 0.3
    istar: dict = field(default_factory=dict)
    figure_genes: int = 4


PRESETS: dict[tuple[str, str], Preset] = {
    # seconds: CI smoke test (tiny network, a few steps; numbers mean nothing)
    ("cells", "quick"): Preset(
        "quick", "cells", model=dict(TINY_MODEL), steps=4, batch_size=2, lr=2e-3,
        ema_decay=0.9, patch_um=80.0, work_um_per_px=2.0, sample_steps=2, n_samples=1,
        size_um=480.0, n_genes=4, istar=dict(n_models=1, steps=20), figure_genes=2),
    ("spots", "quick"): Preset(
        "quick", "spots", model=dict(TINY_MODEL), steps=4, batch_size=2, lr=2e-3,
        ema_decay=0.9, patch_um=1600.0, work_um_per_px=12.5, sample_steps=2, n_samples=1,
        n_genes=6, istar=dict(n_models=1, steps=20), figure_genes=2),
    # fits 30 min on 2 CPU cores for ONE dataset at its two default factors (8 trainings:
    # Diff-ST and regression at both factors, the 4 ablations at the first factor only).
    # Measured on 2 idle cores: simulated x5 0.25 s/step (batch 8, 40x40-cell patches), so
    # 8 x 500 steps ~ 16 min plus ~1 min of sampling and baselines; HER2ST x2 0.22 s/step
    # (8x8-cell patches at 2 µm/px), 8 x 600 steps ~ 18 min plus ~10 s of reading.
    ("cells", "default"): Preset(
        "default", "cells", steps=500, batch_size=8, lr=1e-3, ema_decay=0.995,
        patch_um=320.0, sample_steps=20, n_samples=4),
    ("spots", "default"): Preset(
        "default", "spots", model=dict(tissue_px_per_cell=16), steps=600, batch_size=8,
        lr=1e-3, ema_decay=0.995, patch_um=1600.0, sample_steps=20, n_samples=4,
        n_genes=50),
    # the package's own training defaults (TrainConfig) and ablations at every factor
    ("cells", "full"): Preset(
        "full", "cells", sample_steps=20, n_samples=8, ablation_factors="all"),
    ("spots", "full"): Preset(
        "full", "spots", model=dict(tissue_px_per_cell=16), patch_um=1600.0, sample_steps=20,
        n_samples=8, ablation_factors="all", n_genes=50),
}
"""``(profile, name)`` -> :class:`Preset`."""


def get_preset(name: str, profile: str, overrides: dict | None = None) -> Preset:
    """The preset ``name`` for a data ``profile``, with ``overrides`` (field -> value) applied."""
    if (profile, name) not in PRESETS:
        names = sorted({n for _, n in PRESETS})
        raise ValueError(f"unknown preset {name!r}: choose from {names}")
    preset = PRESETS[(profile, name)]
    known = {f.name for f in fields(Preset)}
    bad = sorted(set(overrides or {}) - known)
    if bad:
        raise ValueError(f"unknown preset settings {bad}: choose from {sorted(known)}")
    return replace(preset, **(overrides or {}))


def patch_cells(preset: Preset, cell_um: float, factor: int) -> int:
    """HR patch side in cells: ``patch_um`` rounded to a multiple of ``factor`` (>= factor)."""
    if preset.patch_um is None:
        return 8 * factor
    lr_cells = max(1, round(preset.patch_um / (cell_um * factor)))
    return lr_cells * factor


def train_config(preset: Preset, sample: STSample, factor: int, seed: int) -> TrainConfig:
    """The :class:`TrainConfig` of Diff-ST and the regression baseline for one factor."""
    base = TrainConfig()
    steps = preset.steps if preset.steps is not None else base.steps
    return TrainConfig(
        steps=steps,
        batch_size=preset.batch_size or base.batch_size,
        lr=preset.lr or base.lr,
        ema_decay=preset.ema_decay or base.ema_decay,
        patch=patch_cells(preset, sample.cell_um, factor),
        work_um_per_px=preset.work_um_per_px or default_work_um_per_px(sample),
        seed=seed,
        checkpoint_every=max(steps, 1),
    )


# ---------------------------------------------------------------------------- data
@dataclass
class Fold:
    """One train/test split: samples with HR truth, restricted to the benchmark genes."""

    name: str
    train: list[STSample]
    test: list[STSample]


@dataclass
class BenchmarkData:
    """The folds of a dataset and how they were made."""

    name: str
    description: str
    profile: str
    genes: list[str]
    folds: list[Fold]
    factors: list[int]
    simulated: bool = False


def default_her2st_root() -> Path:
    """``../shared/data/her2st`` beside the working directory or beside the repository."""
    candidates = [Path.cwd().parent / "shared" / "data" / "her2st",
                  Path(__file__).resolve().parents[3] / "shared" / "data" / "her2st"]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(
        f"HER2ST folder not found (tried {', '.join(str(c) for c in candidates)}); "
        "pass data_root (--data-root) pointing at the folder with C2.counts.tsv.gz etc."
    )


def her2st_sections(root: Path) -> list[str]:
    """Section names in a HER2ST folder that have counts, spot table and H&E image."""
    names = sorted(p.name.removesuffix(".counts.tsv.gz") for p in root.glob("*.counts.tsv.gz"))
    if not names:
        raise FileNotFoundError(f"{root}: no *.counts.tsv.gz section files")
    for s in names:
        for suffix in (".spots.tsv", ".HE.jpg"):
            if not (root / f"{s}{suffix}").is_file():
                raise FileNotFoundError(f"{root / (s + suffix)}: missing for section {s}")
    return names


def make_folds(samples: list[STSample], split: str, preset: Preset,
               factors: list[int]) -> list[Fold]:
    """Train/test folds of whole sections, or a strip holdout for a single section."""
    names = [s.name for s in samples]
    if len(samples) == 1:
        if split != "holdout":
            raise ValueError(f"split {split!r} needs several sections; use 'holdout'")
        train, test = split_holdout(samples[0], preset.holdout_fraction, math.lcm(*factors))
        return [Fold("holdout", [train], [test])]
    if split == "loo":
        return [Fold(f"test_{s.name}", [o for o in samples if o is not s], [s]) for s in samples]
    test_name = names[-1] if split == "holdout" else split
    if test_name not in names:
        raise ValueError(
            f"unknown split {split!r}: use 'holdout', 'loo' or a section name {names}")
    return [Fold(f"test_{test_name}", [s for s in samples if s.name != test_name],
                 [s for s in samples if s.name == test_name])]


def load_benchmark_data(dataset: str | list[str], split: str, preset_name: str,
                        factors: list[int] | None = None, seed: int = 0,
                        data_root: str | Path | None = None,
                        overrides: dict | None = None) -> tuple[BenchmarkData, Preset]:
    """Read or simulate the dataset, choose genes and build the folds; returns data and preset.

    ``factors`` default to :data:`DEFAULT_FACTORS` of the data's profile (5, 10 for cell-scale
    rasters; 2, 3 for spot rasters of at least :data:`SPOT_PROFILE_MIN_UM` µm).
    """
    if factors is not None and any(int(f) != f or f < 2 for f in factors):
        raise ValueError(f"scale factors must be integers >= 2, got {list(factors)}")
    if dataset == "simulated":
        return _simulated(split, get_preset(preset_name, "cells", overrides), factors, seed)
    if dataset == "her2st":
        root = Path(data_root) if data_root else default_her2st_root()
        from diffst.io import read_her2st

        # read the H&E at the model's resolution once, instead of resampling it per training
        work = get_preset(preset_name, "spots", overrides).work_um_per_px or 2.0
        samples = [read_her2st(root, s, work_um_per_px=work) for s in her2st_sections(root)]
        desc = f"HER2ST sections {', '.join(s.name for s in samples)} ({root}); 200 µm spots"
        return _real("her2st", desc, samples, split, preset_name, factors, overrides)
    from diffst.io import read_sample

    paths = [dataset] if isinstance(dataset, str) else list(dataset)
    paths = [p for item in paths for p in str(item).split(",") if p]
    samples = [read_sample(p) for p in paths]
    names = [s.name for s in samples]
    if len(set(names)) < len(names):
        raise SampleError(f"samples need distinct names for the split, got {names}")
    desc = f"{', '.join(names)} ({', '.join(paths)})"
    return _real(Path(paths[0]).stem, desc, samples, split, preset_name, factors, overrides)


def _simulated(split: str, preset: Preset, factors: list[int] | None,
               seed: int) -> tuple[BenchmarkData, Preset]:
    from diffst.data.simulate import simulate_tissue

    factors = [int(f) for f in (factors or DEFAULT_FACTORS["cells"])]

    tissue = simulate_tissue(seed=seed, size_um=preset.size_um, n_genes=preset.n_genes)
    if split == "seeds":
        other = simulate_tissue(seed=seed + 1, size_um=preset.size_um, n_genes=preset.n_genes)
        folds = [Fold(f"seed{seed}->seed{seed + 1}", [tissue], [other])]
        how = f"train on simulated seed {seed}, test on seed {seed + 1}"
    elif split == "holdout":
        folds = make_folds([tissue], split, preset, factors)
        how = (f"train on the left part, test on the right {preset.holdout_fraction:.0%} "
               "strip (never seen in training)")
    else:
        raise ValueError(f"split {split!r} is not available for the simulated tissue: use "
                         "'holdout' or 'seeds'")
    desc = (f"simulated tissue (diffst.data.simulate; NOT real data), {preset.size_um:g} µm "
            f"square, {tissue.cell_um:g} µm cells, {tissue.n_genes} genes; {how}")
    data = BenchmarkData("simulated", desc, "cells", list(tissue.genes), folds, factors, True)
    return data, preset


def _real(name: str, desc: str, samples: list[STSample], split: str, preset_name: str,
          factors: list[int] | None, overrides: dict | None) -> tuple[BenchmarkData, Preset]:
    profile = "spots" if samples[0].cell_um >= SPOT_PROFILE_MIN_UM else "cells"
    factors = [int(f) for f in (factors or DEFAULT_FACTORS[profile])]
    preset = get_preset(preset_name, profile, overrides)
    # gene totals are preserved by pooling, so choosing genes on every section uses no HR truth
    genes = shared_top_genes(samples, preset.n_genes)
    samples = [s.select_genes(genes) for s in samples]
    folds = make_folds(samples, split, preset, factors)
    desc += f"; the {len(genes)} most expressed genes shared by all sections"
    return BenchmarkData(name, desc, profile, genes, folds, factors), preset


# ---------------------------------------------------------------------------- methods
class Method(Protocol):
    """A super-resolution method: fitted on HR training samples, applied to an LR sample."""

    def fit(self, train: list[STSample], genes: list[str], factor: int) -> None: ...

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """``(G, H, W)`` counts per HR cell on the padded HR raster of ``hr_mask``."""
        ...


class LRBaseline:
    """A :data:`diffst.baselines.BASELINES` entry: uses only the test sample's LR map/image."""

    def __init__(self, key: str, seed: int) -> None:
        self.fn, self.seed, self.factor = BASELINES[key], seed, 1

    def fit(self, train: list[STSample], genes: list[str], factor: int) -> None:
        """Nothing to learn from the training part; remembers the factor."""
        self.factor = factor

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """``(G, H, W)`` counts per HR cell."""
        return self.fn(lr, self.factor, hr_mask.shape, seed=self.seed)


class IStarMethod(LRBaseline):
    """:class:`~diffst.baselines.IStarLike` fitted per test slide on its LR sums."""

    def __init__(self, seed: int, settings: dict) -> None:
        super().__init__("istar_like", seed)
        self.settings = settings

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """``(G, H, W)`` counts per HR cell."""
        model = IStarLike(seed=self.seed, **self.settings)
        return model.fit(lr, self.factor, hr_mask.shape).predict()


class DiffSTMethod:
    """Diff-ST (optionally with parts switched off) trained by :class:`~diffst.train.Trainer`."""

    def __init__(self, preset: Preset, seed: int, ablate: list[str] | None = None,
                 progress: bool = False) -> None:
        self.preset, self.seed, self.progress = preset, seed, progress
        self.model_config = model_config_for(ablate, **preset.model)
        self.trainer: Trainer | None = None

    def fit(self, train: list[STSample], genes: list[str], factor: int) -> None:
        """Train on the HR training samples."""
        tc = train_config(self.preset, train[0], factor, self.seed)
        self.trainer = Trainer(train, genes, factor, self.model_config, tc)
        self.trainer.fit(progress=self.progress)

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """Mean of ``n_samples`` DDIM samples per tile, counts per HR cell."""
        result = super_resolve(model_from_trainer(self.trainer), lr,
                               steps=self.preset.sample_steps, n_samples=self.preset.n_samples,
                               hr_mask=hr_mask, seed=self.seed, progress=self.progress)
        return result.mean


class RegressionMethod(DiffSTMethod):
    """:class:`HistologyRegression` with Diff-ST's full encoders and training budget."""

    def fit(self, train: list[STSample], genes: list[str], factor: int) -> None:
        """Train on the HR training samples."""
        tc = train_config(self.preset, train[0], factor, self.seed)
        self.trainer = HistologyRegression(train, genes, factor, self.model_config, tc)
        self.trainer.fit(progress=self.progress)

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """One deterministic pass per tile, counts per HR cell."""
        return self.trainer.predict(lr, hr_mask)


def make_method(key: str, preset: Preset, seed: int, progress: bool = False) -> Method:
    """Build the method ``key`` (see :data:`METHOD_LABELS` and :func:`ablation_key`)."""
    if key in ("spot_constant", "bicubic", "tesla"):
        return LRBaseline(key, seed)
    if key == "istar_like":
        return IStarMethod(seed, preset.istar)
    if key == "regression":
        return RegressionMethod(preset, seed, progress=progress)
    if key == "diffst":
        return DiffSTMethod(preset, seed, progress=progress)
    if key.startswith("diffst-no_") and key.removeprefix("diffst-no_") in ABLATIONS:
        return DiffSTMethod(preset, seed, [key.removeprefix("diffst-no_")], progress)
    raise ValueError(f"unknown method {key!r}: choose from {list(METHOD_LABELS)} or "
                     f"{[ablation_key(p) for p in ABLATIONS]}")


def methods_for_factor(methods: list[str], ablations: bool, factor: int, factors: list[int],
                       preset: Preset) -> list[str]:
    """Method keys run at ``factor``: the chosen main methods plus, where due, the ablations."""
    keys = list(methods)
    at_factor = preset.ablation_factors == "all" or factor == factors[0]
    if ablations and at_factor and "diffst" in keys:
        keys += [ablation_key(p) for p in ABLATION_LABELS]
    return keys


# ---------------------------------------------------------------------------- running
@dataclass
class FoldResult:
    """Scores of every method on one fold at one factor."""

    per_gene: pd.DataFrame
    per_sample: pd.DataFrame
    maps: dict[str, dict[str, np.ndarray]]


def run_fold(data: BenchmarkData, fold: Fold, factor: int, keys: list[str], preset: Preset,
             seed: int, progress: bool = False) -> FoldResult:
    """Fit every method on ``fold.train`` and score it on each pooled ``fold.test`` sample."""
    lrs = [simulate_lr(t, factor) for t in fold.test]
    gene_rows, sample_rows = [], []
    maps: dict[str, dict[str, np.ndarray]] = {t.name: {} for t in fold.test}
    for key in keys:
        _log(progress, f"[x{factor} {fold.name}] {method_label(key)}: fitting")
        method = make_method(key, preset, seed, progress)
        t0 = time.perf_counter()
        method.fit(fold.train, data.genes, factor)
        fit_s = time.perf_counter() - t0
        for truth, lr in zip(fold.test, lrs, strict=True):
            h, w = truth.shape
            t0 = time.perf_counter()
            pred = method.predict(lr, padded_mask(truth.mask, factor))[:, :h, :w]
            predict_s = time.perf_counter() - t0
            table = score_maps(truth.expr, pred, truth.mask, truth.genes)
            ids = dict(factor=factor, fold=fold.name, test=truth.name, method=key)
            gene_rows.append(table.reset_index().assign(**ids))
            sample_rows.append({**ids, "gene_corr_error": gene_corr_error(truth.expr, pred,
                                                                          truth.mask),
                                "fit_s": fit_s / len(fold.test), "predict_s": predict_s})
            maps[truth.name][key] = pred
        _log(progress, f"[x{factor} {fold.name}] {method_label(key)}: fit {fit_s:.1f} s")
        del method
    order = ["factor", "fold", "test", "method", "gene", *METRIC_COLUMNS]
    per_gene = pd.concat(gene_rows, ignore_index=True)[order]
    return FoldResult(per_gene, pd.DataFrame(sample_rows), maps)


def mean_scores(per_gene: pd.DataFrame, per_sample: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per method: mean of each metric over (fold, test, gene) rows, NaN ignored; plus the mean
    gene-corr error over test samples, summed fit/predict wall times and gene counts."""
    out: dict[str, dict[str, float]] = {}
    for key, rows in per_gene.groupby("method", sort=False):
        vals = rows[METRIC_COLUMNS].to_numpy(np.float64)
        means = [_nanmean(vals[:, j]) for j in range(vals.shape[1])]
        out[key] = dict(zip(METRIC_COLUMNS, means, strict=True))
        srows = per_sample[per_sample["method"] == key]
        out[key]["gene_corr_error"] = _nanmean(srows["gene_corr_error"].to_numpy(np.float64))
        out[key]["fit_s"] = float(srows["fit_s"].sum())
        out[key]["predict_s"] = float(srows["predict_s"].sum())
        out[key]["n_scores"] = float(np.isfinite(rows["pcc"].to_numpy(np.float64)).sum())
    return out


def win_rates(per_gene: pd.DataFrame, reference: str = "diffst",
              metrics: tuple[str, ...] = tuple(METRIC_COLUMNS)) -> dict[str, dict[str, dict]]:
    """Per-gene win rate of ``reference`` over every other method and the paired Wilcoxon
    p-value (two-sided), pairing rows by (fold, test sample, gene)."""
    keyed = per_gene.set_index(["fold", "test", "gene"])
    ref = keyed[keyed["method"] == reference]
    out: dict[str, dict[str, dict]] = {}
    for key in per_gene["method"].unique():
        if key == reference:
            continue
        other = keyed[keyed["method"] == key].reindex(ref.index)
        out[key] = {}
        for m in metrics:
            rate, p = paired_wilcoxon(ref[m].to_numpy(), other[m].to_numpy(),
                                      HIGHER_IS_BETTER[m])
            out[key][m] = {"win_rate": rate, "p": p}
    return out


def run_benchmark(
    dataset: str | list[str] = "simulated",
    factors: list[int] | tuple[int, ...] | None = None,
    split: str = "holdout",
    preset: str = "default",
    out_dir: str | Path = "benchmark_out",
    methods: list[str] | None = None,
    ablations: bool = True,
    seed: int = 0,
    *,
    data_root: str | Path | None = None,
    overrides: dict | None = None,
    progress: bool = True,
) -> dict:
    """Run the benchmark and write ``table.md``, ``per_gene.csv``, ``summary.json``, figures.

    Args:
        dataset: ``"simulated"``, ``"her2st"`` or path(s) readable by
            :func:`diffst.io.read_sample` (a list, or comma-separated).
        factors: integer scale factors (default: 5, 10 for cell-scale data; 2, 3 for spots).
        split: ``"holdout"``, ``"loo"`` (leave-one-section-out), ``"seeds"`` (simulated only)
            or the name of the section to test on.
        preset: ``"quick"``, ``"default"`` or ``"full"`` (see :data:`PRESETS`).
        out_dir: output folder.
        methods: main method keys (default all of :data:`METHOD_LABELS`).
        ablations: also run Diff-ST with each part off (at the preset's ablation factors).
        seed: seeds the simulation, training, sampling and baselines.
        data_root: HER2ST folder (default ``../shared/data/her2st``).
        overrides: :class:`Preset` fields to change, e.g. ``{"steps": 300}``.
        progress: print progress to stderr.

    Returns:
        The summary (as written to ``summary.json``) with the Markdown table under ``"table"``.
    """
    start = time.perf_counter()
    methods = list(methods or METHOD_LABELS)
    for key in methods:
        if key not in METHOD_LABELS:
            raise ValueError(f"unknown method {key!r}: choose from {list(METHOD_LABELS)}")
    torch.manual_seed(seed)
    data, chosen = load_benchmark_data(dataset, split, preset, factors and list(factors), seed,
                                       data_root, overrides)
    factors = data.factors
    out = Path(out_dir)
    per_gene, per_sample, figures = [], [], []
    for factor in factors:
        keys = methods_for_factor(methods, ablations, factor, factors, chosen)
        for fold in data.folds:
            res = run_fold(data, fold, factor, keys, chosen, seed, progress)
            per_gene.append(res.per_gene)
            per_sample.append(res.per_sample)
            figures += draw_figures(data, fold, factor, res.maps, methods, chosen, out)
    gene_df = pd.concat(per_gene, ignore_index=True)
    sample_df = pd.concat(per_sample, ignore_index=True)
    summary = build_summary(data, chosen, factors, split, methods, ablations, seed, gene_df,
                            sample_df, dataset_arg=dataset)
    summary["wall_s"] = time.perf_counter() - start
    summary["outputs"] = {"table": str(out / "table.md"), "per_gene": str(out / "per_gene.csv"),
                          "summary": str(out / "summary.json"),
                          "figures": [str(p) for p in figures]}
    summary["table"] = format_tables(summary)
    write_outputs(out, summary, gene_df)
    return summary


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


# ---------------------------------------------------------------------------- outputs
def draw_figures(data: BenchmarkData, fold: Fold, factor: int,
                 maps: dict[str, dict[str, np.ndarray]], methods: list[str], preset: Preset,
                 out: Path) -> list[Path]:
    """One PNG per test sample: truth, LR and every main method for the top genes, over H&E."""
    paths = []
    for truth in fold.test:
        if truth.image is None:
            continue
        h, w = truth.shape
        lr = simulate_lr(truth, factor)
        lr_map = upsample_nearest(lr.expr, factor)[:, :h, :w] / factor**2
        rows = [("truth", truth.expr), (f"LR x{factor}", lr_map)]
        rows += [(method_label(k), maps[truth.name][k]) for k in methods if k in maps[truth.name]]
        k = max(1, min(16, 400 // max(h, w)))
        path = out / "figures" / f"{data.name}_{truth.name}_x{factor}.png"
        gene_panel(rows, truth.genes, truth.top_genes(preset.figure_genes),
                   aligned_image(truth, k), truth.mask, path)
        paths.append(path)
    return paths


def machine_info() -> dict[str, Any]:
    """CPU count, torch threads and versions of the machine running the benchmark."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        diffst_version = version("diffst")
    except PackageNotFoundError:  # pragma: no cover - source checkout without install
        diffst_version = "unknown"
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.is_available(), "diffst": diffst_version}


def build_summary(data: BenchmarkData, preset: Preset, factors: list[int], split: str,
                  methods: list[str], ablations: bool, seed: int, gene_df: pd.DataFrame,
                  sample_df: pd.DataFrame, dataset_arg: str | list[str] = "") -> dict:
    """Settings, per-factor mean scores, win rates and timings as a JSON-ready dict."""
    results = {}
    for f in factors:
        g, s = gene_df[gene_df["factor"] == f], sample_df[sample_df["factor"] == f]
        results[str(f)] = {"means": mean_scores(g, s),
                           "win_rates": win_rates(g) if "diffst" in methods else {}}
    first = data.folds[0].train[0]
    tcs = {str(f): _plain(asdict(train_config(preset, first, f, seed))) for f in factors}
    abl_factors = [f for f in factors if preset.ablation_factors == "all" or f == factors[0]]
    return {
        "dataset": {"name": data.name, "description": data.description,
                    "simulated": data.simulated, "profile": data.profile,
                    "n_genes": len(data.genes), "genes": data.genes,
                    "folds": [{"name": fd.name,
                               "train": [_describe(x) for x in fd.train],
                               "test": [_describe(x) for x in fd.test]} for fd in data.folds]},
        "factors": factors, "split": split, "seed": seed,
        "preset": _plain(asdict(preset)),
        "train_config": tcs,
        "model_config": model_config_for(None, **preset.model).to_dict(),
        "methods": {k: method_label(k) for k in gene_df["method"].unique()},
        "ablations": {"enabled": bool(ablations and "diffst" in methods),
                      "factors": abl_factors if ablations else [],
                      "note": "ablation runs use the same training steps and settings as Diff-ST"},
        "results": results,
        "machine": machine_info(),
        "command": _command(dataset_arg, factors, split, preset.name, methods, ablations, seed),
    }


def _describe(s: STSample) -> dict:
    return {"name": s.name, "shape": list(s.shape), "cell_um": s.cell_um,
            "cells_in_tissue": int(s.mask.sum())}


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _command(dataset: str | list[str], factors: list[int], split: str, preset: str,
             methods: list[str], ablations: bool, seed: int) -> str:
    ds = dataset if isinstance(dataset, str) else ",".join(map(str, dataset))
    parts = ["python benchmarks/run_benchmark.py", f"--dataset {ds}",
             f"--factors {','.join(map(str, factors))}", f"--split {split}",
             f"--preset {preset}", f"--seed {seed}"]
    if list(methods) != list(METHOD_LABELS):
        parts.append(f"--methods {','.join(methods)}")
    if not ablations:
        parts.append("--no-ablations")
    return " ".join(parts)


def write_outputs(out: Path, summary: dict, gene_df: pd.DataFrame) -> None:
    """Write ``table.md``, ``per_gene.csv`` and ``summary.json`` atomically into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(summary["table"], encoding="utf-8")
    with atomic_path(out / "per_gene.csv") as tmp:
        gene_df.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(_plain(summary), indent=2, allow_nan=False), encoding="utf-8")


# ---------------------------------------------------------------------------- Markdown
def _fmt(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if metric in ("psnr", "fit_s") else f"{value:.4f}"


def _better(metric: str, a: float, b: float) -> bool:
    """True when ``a`` is strictly better than ``b`` for ``metric``."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return False
    higher = HIGHER_IS_BETTER.get(metric, False)  # gene_corr_error: lower is better
    return a > b if higher else a < b


def metric_table(means: dict[str, dict[str, float]], keys: list[str]) -> list[str]:
    """Markdown rows of methods x metrics; the best value of each column in bold."""
    keys = [k for k in keys if k in means]
    head = ["Method", *TABLE_METRICS.values(), "Time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {m: None for m in TABLE_METRICS}
    for m in TABLE_METRICS:
        for k in keys:
            v = means[k].get(m)
            if v is not None and not math.isnan(v) and (best[m] is None
                                                        or _better(m, v, best[m])):
                best[m] = v
    for k in keys:
        cells = []
        for m in TABLE_METRICS:
            v = means[k].get(m)
            text = _fmt(m, v)
            cells.append(f"**{text}**" if v is not None and v == best[m] else text)
        seconds = means[k]["fit_s"] + means[k]["predict_s"]
        lines.append(f"| {method_label(k)} | " + " | ".join(cells) + f" | {seconds:.2f} |")
    return lines


def win_table(wins: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown rows: Diff-ST's per-gene win rate (Wilcoxon p) against each method."""
    head = ["Diff-ST vs", *(TABLE_METRICS[m] for m in WIN_METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, per_metric in wins.items():
        cells = []
        for m in WIN_METRICS:
            r, p = per_metric[m]["win_rate"], per_metric[m]["p"]
            cells.append("n/a" if r is None or math.isnan(r) else f"{r:.0%} (p={p:.2g})")
        lines.append(f"| {method_label(k)} | " + " | ".join(cells) + " |")
    return lines


def losses(means: dict[str, dict[str, float]], wins: dict[str, dict[str, dict]]) -> list[str]:
    """One bullet per metric on which some main method's mean beats Diff-ST's, naming them
    (with Diff-ST's per-gene win rate against each where known)."""
    if "diffst" not in means:
        return []
    ref = means["diffst"]
    lines = []
    for m, label in TABLE_METRICS.items():
        better = []
        for k, row in means.items():
            if k == "diffst" or k.startswith("diffst-no_") or not _better(m, row[m], ref[m]):
                continue
            w = wins.get(k, {}).get(m)
            rate = w["win_rate"] if w else None
            extra = "" if rate is None or math.isnan(rate) else f" (Diff-ST wins {rate:.0%})"
            better.append(f"{method_label(k)} {_fmt(m, row[m])}{extra}")
        if better:
            lines.append(f"- {label.rsplit(' ', 1)[0]}: Diff-ST {_fmt(m, ref[m])}; better mean: "
                         + ", ".join(better))
    return lines


def format_tables(summary: dict) -> str:
    """The whole ``table.md`` text from a summary dict."""
    ds, p = summary["dataset"], summary["preset"]
    tc = next(iter(summary["train_config"].values()))
    patches = "/".join(str(t["patch"]) for t in summary["train_config"].values())
    scales = "/".join(f"x{f}" for f in summary["train_config"])
    lines = [f"# Benchmark: {ds['name']} (preset `{p['name']}`)", "",
             f"Data: {ds['description']}. Split: `{summary['split']}` "
             f"({len(ds['folds'])} fold(s): {', '.join(f['name'] for f in ds['folds'])}); "
             f"{ds['n_genes']} genes.", "",
             f"Diff-ST, its ablations and the histology regression: {tc['steps']} training "
             f"steps, batch {tc['batch_size']}, lr {tc['lr']:g}, EMA {tc['ema_decay']:g}, "
             f"patch {patches} HR cells at {scales}, image at {tc['work_um_per_px']:g} µm/px; "
             "Diff-ST maps are the mean of "
             f"{p['n_samples']} DDIM samples ({p['sample_steps']} steps). Seed "
             f"{summary['seed']}.", "",
             "Metrics: mean over genes (and test sections) of the per-gene scores of "
             "`diffst.metrics.evaluate` inside the tissue mask (RMSE/SSIM/PSNR on maps min-max "
             "normalised by the truth; PCC signed; iStar columns: each map scaled by its own "
             "min-max; RVD relative variance distance); gene-corr err: Frobenius distance of "
             "gene-gene correlation matrices, mean over test sections. Time: fit + predict "
             "wall seconds.", ""]
    for f in summary["factors"]:
        res = summary["results"][str(f)]
        means, wins = res["means"], res["win_rates"]
        lines += [f"## x{f}", ""]
        lines += metric_table(means, list(METHOD_LABELS)) + [""]
        if wins:
            main_wins = {k: v for k, v in wins.items() if not k.startswith("diffst-no_")}
            lines += [f"Per-gene win rate of Diff-ST at x{f} (two-sided paired Wilcoxon "
                      "p-value):", ""] + win_table(main_wins) + [""]
        ablated = [k for k in means if k.startswith("diffst-no_")]
        if ablated:
            lines += [f"Ablations at x{f} (same training budget as Diff-ST):", ""]
            lines += metric_table(means, ["diffst", *ablated]) + [""]
        lost = losses(means, wins)
        if "diffst" in means:
            lines += ([f"Where Diff-ST does not have the best mean at x{f}:", ""] + lost
                      if lost else [f"Diff-ST has the best mean on every metric at x{f}."])
            lines.append("")
    m = summary["machine"]
    lines += [f"Machine: {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch "
              f"{m['torch']}, CUDA {'yes' if m['cuda'] else 'no'}; total wall time "
              f"{summary.get('wall_s', float('nan')) / 60:.1f} min.", "",
              f"Produced by `{summary['command']}`; do not edit the numbers by hand.", ""]
    return "\n".join(lines)

"""Benchmark data: read or simulate sections, split them into folds, choose genes per fold.

Stages. ``"test"`` folds hold out the test section (or strip); ``"validation"`` folds never touch
it: they hold out an inner validation section (or strip, or simulated seed) of the training
part, so settings can be chosen there and only then run once on ``"test"``.

* HER2ST / several sections: the test fold of section T trains on every other section; its
  validation fold holds out V, the section after T in the (cyclic) list, and trains on the rest.
* One real section: three strips along the columns, ``[train | validation | test]``; the test
  stage trains on train + validation, the validation stage on train only.
* Simulated tissue: test tissues are simulated with seeds ``1 + seed`` (the demo uses seed 0),
  validation tissues with ``101 + seed``; each is split into a left training part and a right
  held-out strip (``holdout``), or trained on one tissue and tested on the next (``seeds``).

Genes: the ``n_genes`` genes with the highest total counts in the fold's TRAINING sections
among the genes every section of the fold measures. Test counts are never used for the choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from diffst.api import shared_top_genes
from diffst.benchmark.presets import Preset, get_preset
from diffst.data.sample import SampleError, STSample

DATASETS = ("simulated", "her2st", "xenium_crop")
SPLITS = ("holdout", "loo", "seeds")
STAGES = ("test", "validation")
DEFAULT_FACTORS = {"cells": (5, 10), "spots": (2, 3)}
SPOT_PROFILE_MIN_UM = 50.0
"""Raster cells of at least this size (µm) are spots (legacy ST, Visium): the ``spots`` presets."""

XENIUM_CROP = dict(morphology_image="morphology_dapi.tif", morphology_origin_um=(1062.0, 212.0),
                   image_um_per_px=0.2125, bin_um=8.0)
"""How ``../shared/data/xenium_breast_crop`` is read (pixel size and image offset from its
README); HR = transcripts binned at 8 µm, the DAPI image plays the histology's part."""


@dataclass
class Fold:
    """One train/test split: samples with HR truth, restricted to the fold's genes."""

    name: str
    train: list[STSample]
    test: list[STSample]
    genes: list[str]


@dataclass
class BenchmarkData:
    """The folds of a dataset (for one seed) and how they were made."""

    name: str
    description: str
    profile: str
    folds: list[Fold]
    factors: list[int]
    simulated: bool = False


def training_genes(train: list[STSample], test: list[STSample], n: int) -> list[str]:
    """The ``n`` genes measured by every section with the highest total counts in ``train``
    (the test sections contribute their gene names, never their counts)."""
    measured = set(test[0].genes).intersection(*(s.genes for s in test[1:]))
    return shared_top_genes(train, n, among=measured)


def make_fold(name: str, train: list[STSample], test: list[STSample], n_genes: int) -> Fold:
    """A fold with genes chosen on ``train`` and every sample restricted to them."""
    genes = training_genes(train, test, n_genes)
    return Fold(name, [s.select_genes(genes) for s in train],
                [s.select_genes(genes) for s in test], genes)


def strip_cuts(width: int, preset: Preset, multiple: int) -> tuple[int, int]:
    """Columns where the validation and the test strip start (multiples of ``multiple``)."""
    test_cut = int(round(width * (1 - preset.holdout_fraction) / multiple)) * multiple
    val_cut = int(round(test_cut * (1 - preset.val_fraction) / multiple)) * multiple
    if not 0 < val_cut < test_cut < width:
        raise SampleError(f"a raster {width} cells wide cannot be split into train/validation/"
                          f"test strips at multiples of {multiple}; use several sections")
    return val_cut, test_cut


def section_folds(samples: list[STSample], split: str, stage: str, preset: Preset,
                  factors: list[int]) -> list[Fold]:
    """Folds of whole sections (several samples) or of strips (one sample)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: choose from {list(STAGES)}")
    if len(samples) == 1:
        if split != "holdout":
            raise ValueError(f"split {split!r} needs several sections; use 'holdout'")
        s = samples[0]
        h, w = s.shape
        val_cut, test_cut = strip_cuts(w, preset, math.lcm(*factors))
        if stage == "test":
            return [make_fold("test_strip", [s.crop(0, 0, h, test_cut)],
                              [s.crop(0, test_cut, h, w - test_cut)], preset.n_genes)]
        return [make_fold("val_strip", [s.crop(0, 0, h, val_cut)],
                          [s.crop(0, val_cut, h, test_cut - val_cut)], preset.n_genes)]
    names = [s.name for s in samples]
    if split == "loo":
        tests = names
    elif split == "holdout":
        tests = [names[-1]]
    elif split in names:
        tests = [split]
    else:
        raise ValueError(f"unknown split {split!r}: use 'holdout', 'loo' or a section {names}")
    if stage == "validation" and len(samples) < 3:
        raise ValueError("a validation stage needs at least 3 sections (train, validation, test)")
    folds = []
    for t in tests:
        i = names.index(t)
        if stage == "test":
            held, name = t, f"test_{t}"
        else:
            held = names[(i + 1) % len(names)]
            name = f"val_{held}_for_{t}"
        train = [s for s in samples if s.name not in (t, held)]
        folds.append(make_fold(name, train, [samples[names.index(held)]], preset.n_genes))
    return folds


def profile_of(samples: list[STSample]) -> str:
    """``"spots"`` for rasters of spots (>= 50 µm cells), else ``"cells"``."""
    return "spots" if samples[0].cell_um >= SPOT_PROFILE_MIN_UM else "cells"


def read_dataset(dataset: str | list[str], data_root: str | Path | None,
                 work_um_per_px: float | None) -> tuple[str, str, list[STSample]]:
    """Read a real dataset: ``(name, description, samples)``; no machine paths in the text."""
    if dataset == "her2st":
        from diffst.io import read_her2st

        root = _root(data_root, "her2st", "the HER2ST folder with C2.counts.tsv.gz etc.")
        samples = [read_her2st(root, s, work_um_per_px=work_um_per_px or 2.0)
                   for s in her2st_sections(root)]
        desc = (f"HER2ST sections {', '.join(s.name for s in samples)} (legacy ST, 200 µm spot "
                "grid; LR = sum-pooling of the measured spots)")
        return "her2st", desc, samples
    if dataset == "xenium_crop":
        from diffst.io.xenium import read_xenium

        root = _root(data_root, "xenium_crop",
                     "the Xenium breast crop folder with transcripts.csv.gz and "
                     "morphology_dapi.tif")
        opts = dict(XENIUM_CROP, morphology_image=root / XENIUM_CROP["morphology_image"])
        sample = read_xenium(root, work_um_per_px=work_um_per_px or 1.0, name="xenium_breast",
                             **opts)
        desc = ("10x Xenium FFPE human breast crop (about 509 x 381 µm; transcripts binned at "
                "8 µm = HR truth; inverted DAPI image in place of the H&E); strips along x: "
                "train | validation | test")
        return "xenium_crop", desc, [sample]
    from diffst.io import read_sample

    paths = [dataset] if isinstance(dataset, str) else list(dataset)
    paths = [p for item in paths for p in str(item).split(",") if p]
    samples = [read_sample(p) for p in paths]
    names = [s.name for s in samples]
    if len(set(names)) < len(names):
        raise SampleError(f"samples need distinct names for the split, got {names}")
    return Path(paths[0]).stem, ", ".join(names), samples


def load_benchmark_data(dataset: str | list[str], split: str, stage: str, preset_name: str,
                        factors: list[int] | None = None, seed: int = 0,
                        data_root: str | Path | None = None, overrides: dict | None = None,
                        samples: tuple[str, str, list[STSample]] | None = None,
                        ) -> tuple[BenchmarkData, Preset]:
    """Folds for one seed (``samples``: an already read :func:`read_dataset` result)."""
    if factors is not None and any(int(f) != f or f < 2 for f in factors):
        raise ValueError(f"scale factors must be integers >= 2, got {list(factors)}")
    if dataset == "simulated":
        return _simulated(split, stage, get_preset(preset_name, "cells", overrides), factors,
                          seed)
    name, desc, read = samples or read_dataset(dataset, data_root, None)
    profile = profile_of(read)
    factors = [int(f) for f in (factors or DEFAULT_FACTORS[profile])]
    preset = get_preset(preset_name, profile, overrides)
    folds = section_folds(read, split, stage, preset, factors)
    return BenchmarkData(name, desc, profile, folds, factors), preset


def _simulated(split: str, stage: str, preset: Preset, factors: list[int] | None,
               seed: int) -> tuple[BenchmarkData, Preset]:
    from diffst.data.simulate import simulate_tissue
    from diffst.demo import split_holdout

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: choose from {list(STAGES)}")
    factors = [int(f) for f in (factors or DEFAULT_FACTORS["cells"])]
    base = (1 if stage == "test" else 101) + seed

    def tissue(s: int) -> STSample:
        return simulate_tissue(seed=s, size_um=preset.size_um, n_genes=preset.n_genes)

    if split == "seeds":
        train, test = tissue(base), tissue(base + 1000)
        folds = [make_fold(f"seed{base}->seed{base + 1000}", [train], [test], preset.n_genes)]
        how = "train on one simulated tissue, test on another"
    elif split == "holdout":
        train, test = split_holdout(tissue(base), preset.holdout_fraction, math.lcm(*factors))
        folds = [make_fold(f"seed{base}_strip", [train], [test], preset.n_genes)]
        how = (f"train on the left part, test on the right {preset.holdout_fraction:.0%} "
               "strip (never seen in training)")
    else:
        raise ValueError(f"split {split!r} is not available for the simulated tissue: use "
                         "'holdout' or 'seeds'")
    desc = (f"simulated tissue (diffst.data.simulate; NOT real data), {preset.size_um:g} µm "
            f"square, {preset.n_genes} genes; {stage} tissues are simulation seeds "
            f"{'1' if stage == 'test' else '101'} + run seed (the demo uses seed 0); {how}")
    return BenchmarkData("simulated", desc, "cells", folds, factors, True), preset


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


def _root(data_root: str | Path | None, dataset: str, what: str) -> Path:
    if data_root is None:
        raise ValueError(f"dataset {dataset!r} needs --data-root: {what}")
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder ({what})")
    return root

"""One-command benchmark: Diff-ST against the baselines users pick, under one protocol.

A small package: :mod:`~diffst.benchmark.presets` (settings and where they came from),
:mod:`~diffst.benchmark.data` (datasets, folds, validation/test stages, gene choice on training
data), :mod:`~diffst.benchmark.methods` (the methods and the protocol they share: HR mask from
the LR input, the same consistency step for all), :mod:`~diffst.benchmark.run` (fitting and
scoring) and :mod:`~diffst.benchmark.report` (mean ± sd over runs, wins over sections, paired
tests, tables and generated sentences).
"""

from diffst.benchmark.data import (
    DATASETS,
    SPLITS,
    STAGES,
    BenchmarkData,
    Fold,
    load_benchmark_data,
    section_folds,
    training_genes,
)
from diffst.benchmark.methods import (
    ABLATION_LABELS,
    METHOD_LABELS,
    ablation_key,
    make_method,
    method_label,
    prediction_mask,
    with_consistency,
)
from diffst.benchmark.presets import PRESET_NAMES, PRESETS, Preset, get_preset, patch_cells
from diffst.benchmark.report import compare, unit_scores
from diffst.benchmark.run import run_benchmark, run_fold

__all__ = [
    "ABLATION_LABELS",
    "DATASETS",
    "METHOD_LABELS",
    "PRESETS",
    "PRESET_NAMES",
    "SPLITS",
    "STAGES",
    "BenchmarkData",
    "Fold",
    "Preset",
    "ablation_key",
    "compare",
    "get_preset",
    "load_benchmark_data",
    "make_method",
    "method_label",
    "patch_cells",
    "prediction_mask",
    "run_benchmark",
    "run_fold",
    "section_folds",
    "training_genes",
    "unit_scores",
    "with_consistency",
]

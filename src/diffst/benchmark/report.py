"""Benchmark statistics and reports: units, mean +- sd, wins, paired tests, tables, sentences.

The unit of evidence is one test section (or strip) at one factor for one training seed
(``runs``); a *section* is a test section with its scores averaged over seeds. Tables give the
mean +- sd over runs of each run's mean over genes; comparisons count the runs and the sections
where Diff-ST + C is better and give a two-sided paired t-test over sections (no p-value with
fewer than 3 sections). Per-gene scores stay in ``per_gene.csv`` as detail.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from diffst.api import model_config_for
from diffst.benchmark.methods import (
    METHOD_LABELS,
    REFERENCE_METHODS,
    consistent_key,
    method_label,
)
from diffst.benchmark.presets import (
    DATA_SIZE_KEYS,
    PRESETS,
    Preset,
    data_size_words,
    factor_changes,
    train_config,
)
from diffst.config import ARCHITECTURE_PARTS, DEPTH_MIX, TrainConfig, paper_variant
from diffst.data.image import aligned_image
from diffst.data.lr import simulate_lr, upsample_nearest
from diffst.infer import draws_in_words
from diffst.io.atomic import atomic_path
from diffst.metrics import HIGHER_IS_BETTER, METRIC_COLUMNS
from diffst.model.config import DiffSTConfig, SchedulerConfig
from diffst.model.istar_like import istar_settings
from diffst.plot import gene_panel

REFERENCE = consistent_key("diffst")
"""The method every other one is compared with: Diff-ST after the consistency step."""

MAIN_METRICS: dict[str, str] = {
    "rmse": "RMSE ↓", "ssim": "SSIM ↑", "pcc": "PCC ↑", "psnr": "PSNR ↑", "rvd": "RVD ↓",
    "gene_corr_error": "Gene-corr err ↓",
}
"""Columns of the main table (truth min-max protocol, :mod:`diffst.metrics`)."""

OTHER_PROTOCOLS: dict[str, str] = {
    "istar_rmse": "iStar RMSE ↓", "istar_ssim": "iStar SSIM ↑",
    "release_ssim": "Release SSIM ↑", "release_pcc": "Release abs PCC ↑",
}
"""Columns of the second table: the iStar and released Diff-ST protocols."""

HEADLINE = ("rmse", "ssim", "pcc")
"""Metrics of the comparison table and of the generated sentences."""

UNIT = ["factor", "seed", "fold", "test"]


# ---------------------------------------------------------------------------- statistics
def unit_scores(gene_df: pd.DataFrame, sample_df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, method): metric means over genes (NaN ignored), gene-corr error and
    wall seconds."""
    means = gene_df.groupby([*UNIT, "method"], sort=False)[METRIC_COLUMNS].mean().reset_index()
    extra = sample_df[[*UNIT, "method", "gene_corr_error", "fit_s", "predict_s"]]
    return means.merge(extra, on=[*UNIT, "method"], how="left")


def method_stats(units: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """Per method and metric: mean, sd (ddof 1; 0 for one run) and number of runs."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    cols = [*METRIC_COLUMNS, "gene_corr_error"]
    for key, rows in units.groupby("method", sort=False):
        out[key] = {}
        for m in cols:
            v = rows[m].to_numpy(np.float64)
            v = v[np.isfinite(v)]
            out[key][m] = {"mean": float(v.mean()) if v.size else math.nan,
                           "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}
        out[key]["seconds"] = {"mean": float((rows["fit_s"] + rows["predict_s"]).mean()),
                               "sd": 0.0, "n": len(rows)}
    return out


def better(metric: str, a: float | None, b: float | None) -> bool:
    """True when ``a`` is strictly better than ``b`` for ``metric`` (NaN or None never is)."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return False
    return a > b if HIGHER_IS_BETTER.get(metric, False) else a < b


def mean_sd(mean: float, sd: float) -> str:
    """``mean ± sd`` (4 decimals); the mean alone where the sd is undefined (a single run)."""
    return f"{mean:.4f}" if not math.isfinite(sd) else f"{mean:.4f} ± {sd:.4f}"


def paired_words(df: pd.DataFrame, column: str, key: object, base: object,
                 metrics: tuple[str, ...] = HEADLINE) -> str:
    """Rows with ``column == key`` against rows with ``column == base``, per metric: the means
    over all their rows and the sections (``section``; rows averaged per section) where
    ``key`` is better, in words, e.g. ``RMSE better (0.1200 vs 0.1300, 4/5 sections)``."""
    means = df.groupby(column)[list(metrics)].mean()
    per_section = df.groupby([column, "section"])[list(metrics)].mean()
    sections = df["section"].unique()
    said = []
    for m in metrics:
        a, b = means.loc[key, m], means.loc[base, m]
        won = sum(better(m, per_section.loc[(key, s), m], per_section.loc[(base, s), m])
                  for s in sections)
        word = "better" if better(m, a, b) else "WORSE"
        said.append(f"{MAIN_METRICS[m].split()[0]} {word} ({a:.4f} vs {b:.4f}, "
                    f"{won}/{len(sections)} sections)")
    return "; ".join(said)


def compare(units: pd.DataFrame, reference: str = REFERENCE,
            metrics: tuple[str, ...] = (*HEADLINE, "psnr")) -> dict[str, dict[str, dict]]:
    """``reference`` against the other methods + C, the reference rows and raw Diff-ST: runs
    and sections won, paired t-test over sections."""
    keyed = units.set_index(["seed", "fold", "test"])
    ref = keyed[keyed["method"] == reference]
    out: dict[str, dict[str, dict]] = {}
    if ref.empty:
        return out
    for key in units["method"].unique():
        if key == reference or key.startswith("diffst-no_") or not (
                key.endswith("+C") or key in (*REFERENCE_METHODS, "diffst")):
            continue
        other = keyed[keyed["method"] == key].reindex(ref.index)
        out[key] = {m: _compare_metric(ref[m], other[m], m) for m in metrics}
    return out


def _compare_metric(ref: pd.Series, other: pd.Series, metric: str) -> dict[str, float]:
    pair = pd.DataFrame({"ref": ref.to_numpy(np.float64), "other": other.to_numpy(np.float64)},
                        index=ref.index).dropna()
    wins = sum(better(metric, a, b) for a, b in zip(pair["ref"], pair["other"], strict=True))
    sections = pair.groupby(level=["fold", "test"]).mean()
    sec_wins = sum(better(metric, a, b)
                   for a, b in zip(sections["ref"], sections["other"], strict=True))
    p = math.nan
    diff = sections["ref"] - sections["other"]
    if len(sections) >= 3 and np.any(diff.to_numpy() != 0):
        p = float(stats.ttest_rel(sections["ref"], sections["other"]).pvalue)
    return {"wins": int(wins), "runs": len(pair), "section_wins": int(sec_wins),
            "sections": len(sections), "p": p}


def ablation_effects(units: pd.DataFrame,
                     metrics: tuple[str, ...] = HEADLINE) -> dict[str, dict[str, dict]]:
    """What switching each part off does to Diff-ST + C, with an error bar over seeds.

    For every ablation ``diffst-no_<part>+C`` and metric: the difference ablated minus
    Diff-ST + C, averaged over the test sections of each seed (paired: same sections and seed).
    Returns per ablation key and metric the mean and sd (ddof 1) of those per-seed differences,
    the number of seeds and in how many of them the ablated model was worse (the part helped).
    """
    keyed = units.set_index(["seed", "fold", "test"])
    ref = keyed[keyed["method"] == REFERENCE]
    out: dict[str, dict[str, dict]] = {}
    if ref.empty:
        return out
    for key in units["method"].unique():
        if not (key.startswith("diffst-no_") and key.endswith("+C")):
            continue
        other = keyed[keyed["method"] == key].reindex(ref.index)
        out[key] = {}
        for m in metrics:
            pair = pd.DataFrame({"full": ref[m], "ablated": other[m]}).dropna()
            per_seed = pair.groupby(level="seed").mean()
            worse = sum(better(m, a, b) for a, b in zip(per_seed["full"], per_seed["ablated"],
                                                        strict=True))
            diff = per_seed["ablated"] - per_seed["full"]
            out[key][m] = {"mean": float(diff.mean()) if len(diff) else math.nan,
                           "sd": float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
                           "seeds": len(diff), "worse": int(worse)}
    return out


# ---------------------------------------------------------------------------- summary
def machine_info() -> dict[str, Any]:
    """CPU count, torch threads and versions of the machine running the benchmark."""
    try:
        diffst_version = version("diffst")
    except PackageNotFoundError:  # pragma: no cover - source checkout without install
        diffst_version = "unknown"
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.is_available(),
            "diffst": diffst_version}


def factor_statistics(units: pd.DataFrame) -> dict:
    """The statistics of one factor's unit scores: per-method stats, comparisons with
    Diff-ST + C and the ablation effects."""
    return {"stats": method_stats(units), "comparisons": compare(units),
            "ablation_effects": ablation_effects(units)}


def network_configs(model: dict, paper_variants: tuple[str, ...] | list[str]) -> dict:
    """The ``model_config`` and ``scheduler_config`` a preset's Diff-ST trains with (its
    ``model`` overrides and paper variants), as plain dicts."""
    model_variant, scheduler_variant, _ = paper_variant(paper_variants)
    return {"model_config": model_config_for(None, **{**model, **model_variant}).to_dict(),
            "scheduler_config": SchedulerConfig(**scheduler_variant).to_dict()}


def build_summary(runs: list, preset: Preset, split: str, stage: str, hr_mask: str,
                  methods: list[str], ablations: bool, seeds: list[int], gene_df: pd.DataFrame,
                  sample_df: pd.DataFrame, dataset_arg: str | list[str] = "",
                  preset_name: str = "", thin: float = 1.0) -> dict:
    """Settings, protocol, per-factor statistics and timings as a JSON-ready dict."""
    _, data = runs[0]
    units = unit_scores(gene_df, sample_df)
    results = {}
    for f in data.factors:
        u = units[units["factor"] == f]
        results[str(f)] = {**factor_statistics(u), "runs": _plain(u.to_dict(orient="records"))}
    first = data.folds[0].train  # the first fold's (the small-data rule may differ by fold)
    tcs = {str(f): _plain(asdict(train_config(preset.at(f), first, f, seeds[0])))
           for f in data.factors}
    at_factor = {str(f): network_configs(preset.at(f).model, preset.paper_variants)
                 for f in data.factors if f in preset.by_factor}
    folds = [{"seed": seed, "name": fd.name, "genes": fd.genes,
              "train": [_describe(x) for x in fd.train],
              "test": [_describe(x) for x in fd.test]} for seed, d in runs for fd in d.folds]
    return {
        "dataset": {"name": data.name, "description": data.description,
                    "simulated": data.simulated, "profile": data.profile,
                    "n_genes": len(data.folds[0].genes), "folds": folds},
        "factors": data.factors, "split": split, "stage": stage, "seeds": seeds,
        "protocol": {
            "hr_mask": {"lr": "the LR tissue mask repeated over each LR cell's HR cells"}
            [hr_mask],
            "consistency": "every method is scored raw and after the same spot-consistency "
                           "step (diffst.consistency.redistribute on its raw map): '+ C' rows",
            "gene_selection": "the most expressed genes of each fold's training sections "
                              "(total counts in tissue), among genes every section measures",
            "seeds": seeds,
            "stage": stage,
            "scoring": "truth and its tissue mask are used for scoring only",
            "unit": "one test section (or strip) x factor x seed; sections = seed-averaged",
            "depth": 1.0 if thin == 1.0 else float(thin),
        },
        "preset": _plain(asdict(preset)),
        "train_config": tcs,
        "istar_settings": _plain(istar_settings(**preset.istar)),
        **network_configs(preset.model, preset.paper_variants),
        **({"network_configs_at_factor": at_factor} if at_factor else {}),
        "methods": {k: method_label(k) for k in gene_df["method"].unique()},
        "ablations": {"enabled": bool(ablations and "diffst" in methods)},
        "results": results,
        "machine": machine_info(),
        "command": _command(dataset_arg, data.factors, split, preset_name or preset.name,
                            methods, ablations, seeds, stage, thin, preset),
    }


def _describe(s) -> dict:
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


def _draws(preset: dict) -> str:
    """How the Diff-ST mean map was drawn, in words."""
    sampler = preset.get("sampler", "ddim")
    words = draws_in_words(preset["n_samples"], sampler, preset["sample_steps"])
    if sampler == "mean":
        words += (" (`--sampler mean`: the denoiser's clean-sample estimate at the noisiest "
                  "step)")
    return words


def _model_sentence(preset: dict) -> str:
    """The architecture settings a run changed with ``--model``, as a sentence (or "")."""
    registered = PRESETS.get((preset["profile"], preset["name"]))
    changed = changed_model(preset.get("model", {}), registered.model if registered else {})
    if not changed:
        return ""
    settings = ", ".join(model_setting_text(k, v, " ") for k, v in changed.items())
    return f" Diff-ST's (and the regression's) network changed with `--model`: {settings}."


def _self_tune_sentence(preset: dict, factors: list[int]) -> str:
    """How Diff-ST was tuned on each test slide (the preset's ``self_tune``, or its value for
    a factor in ``by_factor``), as a sentence (or "")."""
    by_factor = preset.get("by_factor", {})
    steps = {f: factor_changes({}, by_factor, f).get("self_tune", preset.get("self_tune", 0))
             for f in factors}
    tuned = {f: n for f, n in steps.items() if n}
    if not tuned:
        return ""
    where = "" if len(tuned) == len(steps) else f" (at {', '.join(f'x{f}' for f in tuned)})"
    counts = (str(next(iter(tuned.values()))) if len(set(tuned.values())) == 1
              else ", ".join(f"{n} (x{f})" for f, n in tuned.items()))
    return (f" Before super-resolving a test slide{where}, Diff-ST was fine-tuned on that "
            f"slide's own LR map (pooled once more -> the LR map; no truth) for {counts} "
            f"steps at lr {preset.get('self_tune_lr', 0):g} (`--self-tune`).")


def _factor_sentence(preset: dict, factors: list[int]) -> str:
    """The preset's settings that differ at some of the run's ``factors`` (its ``by_factor``,
    read back from JSON: factors are strings), as a sentence (or "")."""
    changes = {f: factor_changes({}, preset.get("by_factor", {}), f) for f in factors}
    said = [f"at x{f}: {factor_settings_text(changes[f])}" for f in factors if changes[f]]
    return f" Settings of the preset that differ by factor: {'; '.join(said)}." if said else ""


def mix_words(value: float | str) -> str:
    """The ``istar_mix`` setting in words."""
    if value == DEPTH_MIX:
        return ("Diff-ST's map mixed with the slide's own iStar-like map, weight max(0, 1 - 1/r) "
                "for a slide r times shallower than the training data (`--istar-mix depth`)")
    if value:
        return f"Diff-ST's map mixed with the slide's own iStar-like map, weight {value:g}"
    return "no iStar-like mix"


def factor_settings_text(changes: dict) -> str:
    """One factor's preset settings (``{"self_tune": 0, "model": {...}}``) in words; the
    data-size settings last, as the clause each makes runs to the end."""
    words = []
    for key, value in sorted(changes.items(), key=lambda item: item[0] in DATA_SIZE_KEYS):
        if key == "model":
            words += [model_words(k, v) for k, v in value.items()]
        elif key == "self_tune":
            words.append(f"{value} self-tuning steps" if value else "no self-tuning")
        elif key == "istar_mix":
            words.append(mix_words(value))
        elif key == "grid_shifts":
            words.append(f"training pairs pooled on {value} x {value} shifted grids")
        elif key == "ema_warmup":
            words.append(f"the weights' EMA warmed up over {value:g} steps")
        elif key == "t_focus":
            words.append(f"{value:.0%} of the training examples at the last noise step")
        elif key == "steps":
            words.append(f"{value} training steps")
        elif key == "batch_size":
            words.append(f"training batches of {value}")
        elif key in DATA_SIZE_KEYS:
            words += [f"where the training tissue {data_size_words(key == 'small_data')}, "
                      f"{factor_settings_text(value)}"] if value else []
        elif key in OVERRIDE_FLAGS:
            words.append(f"`{OVERRIDE_FLAGS[key](value)}`")
        else:
            words.append(f"{key} {value}")
    return ", ".join(words)


def overridden(preset: Preset) -> dict:
    """The fields of ``preset`` that differ from the registered preset of its name (all the
    benchmark's command-line overrides: steps, samples, sampler, ...)."""
    registered = PRESETS.get((preset.profile, preset.name))
    if registered is None:
        return {}
    fixed, fixed_model = _set_at_every_factor(preset, registered)
    changed = {key: getattr(preset, key) for key in OVERRIDE_FLAGS
               if key != "model" and (getattr(preset, key) != getattr(registered, key)
                                      or key in fixed)}
    if preset.small_data_patch_um != registered.small_data_patch_um:  # --patch-um given
        changed["patch_um"] = preset.patch_um
    model = changed_model(preset.model, registered.model)
    model.update({key: preset.model.get(key, _DEFAULT_MODEL.get(key)) for key in fixed_model})
    return {**changed, "model": model} if model else changed


def _set_at_every_factor(preset: Preset, registered: Preset) -> tuple[set[str], set[str]]:
    """The fields and architecture settings that ``registered`` sets for some factor
    (``by_factor``) or amount of training data (``small_data``, ``large_data``) and ``preset``
    no longer does: overrides that hold at every factor and for any amount of data."""
    fields_, model = set(), set()
    for key in DATA_SIZE_KEYS:
        fields_ |= set(getattr(registered, key)) - set(getattr(preset, key))
    for factor, changes in registered.by_factor.items():
        kept = preset.by_factor.get(factor, {})
        fields_ |= {key for key in changes if key != "model" and key not in kept}
        model |= set(changes.get("model", {})) - set(kept.get("model", {}))
        for key in DATA_SIZE_KEYS:
            fields_ |= set(changes.get(key, {})) - set(kept.get(key, {}))
    return fields_, model


_DEFAULT_MODEL = DiffSTConfig().to_dict()


def changed_model(model: dict, registered: dict) -> dict:
    """The architecture settings of ``model`` (a preset's, or one read back from JSON, where
    tuples are lists) that differ from the ``registered`` preset's ``model`` (where either
    leaves a field out: :class:`DiffSTConfig`'s default)."""
    def plain(v: object) -> object:
        return tuple(v) if isinstance(v, list | tuple) else v

    def value_in(settings: dict, key: str) -> object:
        return plain(settings.get(key, _DEFAULT_MODEL.get(key)))

    return {key: value_in(model, key) for key in {**model, **registered}
            if value_in(model, key) != value_in(registered, key)}


def _part_words() -> dict[tuple[str, object], str]:
    """Each architecture-only part's setting (:data:`diffst.config.ARCHITECTURE_PARTS`) with the
    paper's value and with diffst's default, in words."""
    words = {}
    for part in ARCHITECTURE_PARTS:
        network, _, _ = paper_variant([part])
        for key, value in network.items():
            words[(key, value)] = f"the paper's {part}"
            words[(key, _DEFAULT_MODEL[key])] = f"diffst's {part}"
    return words


MODEL_WORDS = _part_words()
"""Architecture settings that are one Diff-ST part's variant (the paper's or diffst's), in
words: ``("graph_edges", "paper")`` -> ``"the paper's graph"``."""


def model_words(key: str, value: object) -> str:
    """One architecture setting in a run's words (a part's variant by whose it is, others as
    ``key value``)."""
    return MODEL_WORDS.get((key, value), model_setting_text(key, value, " "))


def model_setting_text(key: str, value: object, sep: str = "=") -> str:
    """One architecture setting as ``--model`` takes it (``channel_mults=1,2,2``)."""
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, tuple):
        value = ",".join(map(str, value))
    return f"{key}{sep}{value}"


OVERRIDE_FLAGS = {
    "steps": lambda v: f"--steps {v}",
    "n_samples": lambda v: f"--samples {v}",
    "sampler": lambda v: f"--sampler {v}",
    "turns": lambda v: "--turns" if v else "--no-turns",
    "log1p": lambda v: "--log1p" if v else "--no-log1p",
    "disentangle_weight": lambda v: f"--disentangle-weight {v:g}",
    "match_depth": lambda v: "--match-depth" if v else "",
    "consistency_weight": lambda v: f"--consistency-weight {v:g}",
    "patch_um": lambda v: f"--patch-um {v:g}",
    "self_tune": lambda v: f"--self-tune {v}",
    "self_tune_lr": lambda v: f"--self-tune-lr {v:g}",
    "istar_mix": lambda v: f"--istar-mix {v if isinstance(v, str) else format(v, 'g')}",
    "lr_schedule": lambda v: f"--lr-schedule {v}",
    "lr": lambda v: f"--lr {v:g}",
    "ema_warmup": lambda v: f"--ema-warmup {v:g}",
    "t_focus": lambda v: f"--t-focus {v:g}",
    "grid_shifts": lambda v: f"--grid-shifts {v}",
    "thin_inputs": lambda v: f"--thin-inputs {v:g}",
    "batch_size": lambda v: f"--batch-size {v}",
    "work_um_per_px": lambda v: f"--work-um-per-px {v:g}",
    "size_um": lambda v: f"--size-um {v:g}",
    "n_models": lambda v: f"--models {v}",
    "paper_variants": lambda v: f"--paper-variant {','.join(v)}" if v else "",
    "model": lambda v: " ".join(f"--model {model_setting_text(k, x)}" for k, x in v.items()),
}
"""Preset field -> the ``diffst benchmark`` option that sets it."""


def _command(dataset: str | list[str], factors: list[int], split: str, preset_name: str,
             methods: list[str], ablations: bool, seeds: list[int], stage: str,
             thin: float = 1.0, preset: Preset | None = None) -> str:
    ds = dataset if isinstance(dataset, str) else ",".join(map(str, dataset))
    parts = ["diffst benchmark", f"--dataset {ds}"]
    if ds in ("her2st", "xenium_crop"):
        parts.append("--data-root DATA_ROOT")
    parts += [f"--factors {','.join(map(str, factors))}", f"--split {split}",
              f"--stage {stage}", f"--preset {preset_name}",
              f"--seeds {','.join(map(str, seeds))}"]
    if list(methods) != list(METHOD_LABELS):
        parts.append(f"--methods {','.join(methods)}")
    if not ablations:
        parts.append("--no-ablations")
    changed = overridden(preset) if preset is not None else {}
    parts += [OVERRIDE_FLAGS[key](value) for key, value in changed.items()
              if value is not None and OVERRIDE_FLAGS[key](value)]
    if thin != 1.0:
        parts.append(f"--thin {thin:g}")
    return " ".join(parts)


def write_outputs(out: Path, summary: dict, gene_df: pd.DataFrame) -> None:
    """Write ``table.md``, ``per_gene.csv`` and ``summary.json`` atomically into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "per_gene.csv") as tmp:
        gene_df.to_csv(tmp, index=False, float_format="%.6g")
    _write_table_and_summary(out, summary)


def _write_table_and_summary(out: Path, summary: dict) -> None:
    """Write ``table.md`` (``summary["table"]``) and ``summary.json`` atomically into ``out``."""
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(summary["table"], encoding="utf-8")
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(_plain(summary), indent=2, allow_nan=False), encoding="utf-8")


# ---------------------------------------------------------------------------- figures
def draw_figures(dataset: str, fold, factor: int, maps: dict[str, dict[str, np.ndarray]],
                 methods: list[str], preset: Preset, out: Path) -> list[Path]:
    """One PNG per test sample: truth, LR and every main method + C, over the image."""
    paths = []
    for truth in fold.test:
        if truth.image is None:
            continue
        h, w = truth.shape
        lr = simulate_lr(truth, factor)
        lr_map = upsample_nearest(lr.expr, factor)[:, :h, :w] / factor**2
        rows = [("truth", truth.expr), (f"LR x{factor}", lr_map)]
        for k in methods:
            key = k if k in REFERENCE_METHODS else consistent_key(k)
            if key in maps[truth.name] and k != "gene_mean":
                rows.append((method_label(key), maps[truth.name][key]))
        k = max(1, min(16, 400 // max(h, w)))
        path = out / "figures" / f"{dataset}_{truth.name}_x{factor}.png"
        gene_panel(rows, truth.genes, truth.top_genes(preset.figure_genes),
                   aligned_image(truth, k), truth.mask, path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- Markdown
def _fmt(metric: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2f}" if metric in ("psnr", "seconds") else f"{value:.4f}"


def _cell(metric: str, s: dict[str, float] | None) -> str:
    if not s or s["mean"] is None or not math.isfinite(s["mean"]):
        return "n/a"
    if s["n"] > 1:
        return f"{_fmt(metric, s['mean'])} ± {_fmt(metric, s['sd'])}"
    return _fmt(metric, s["mean"])


def ordered_keys(stats_: dict, methods: list[str]) -> list[str]:
    """Row order: each main method raw then + C (reference rows raw only)."""
    keys = []
    for k in methods:
        keys += [k] if k in REFERENCE_METHODS else [k, consistent_key(k)]
    return [k for k in keys if k in stats_]


def metric_table(stats_: dict, keys: list[str], columns: dict[str, str],
                 seconds: bool = True) -> list[str]:
    """Markdown rows of methods x metrics (mean ± sd over runs); best mean in bold (reference
    rows excluded)."""
    head = ["Method", *columns.values(), *(["Time (s)"] if seconds else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best: dict[str, float] = {}
    for m in columns:
        for k in keys:
            v = stats_[k][m]["mean"]
            if k not in REFERENCE_METHODS and v is not None and math.isfinite(v) and (
                    m not in best or better(m, v, best[m])):
                best[m] = v
    for k in keys:
        cells = []
        for m in columns:
            text = _cell(m, stats_[k][m])
            cells.append(f"**{text}**" if stats_[k][m]["mean"] == best.get(m) else text)
        if seconds:
            cells.append(_fmt("seconds", stats_[k]["seconds"]["mean"]))
        lines.append(f"| {method_label(k)} | " + " | ".join(cells) + " |")
    return lines


def comparison_table(comp: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown rows: Diff-ST + C against each method (runs won, sections won, p)."""
    head = [f"{method_label(REFERENCE)} vs", *(MAIN_METRICS[m] for m in HEADLINE)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, per_metric in comp.items():
        cells = []
        for m in HEADLINE:
            c = per_metric[m]
            p = "" if not math.isfinite(c["p"]) else f"; p={c['p']:.2g}"
            cells.append(f"{c['wins']}/{c['runs']} runs; {c['section_wins']}/{c['sections']} "
                         f"sections{p}")
        lines.append(f"| {method_label(k)} | " + " | ".join(cells) + " |")
    return lines


def ablation_effect_lines(effects: dict[str, dict[str, dict]], factor: int) -> list[str]:
    """Markdown table and generated sentences of :func:`ablation_effects` (empty without)."""
    if not effects:
        return []
    head = ["Part switched off", *(f"Δ {MAIN_METRICS[m]}" for m in HEADLINE)]
    lines = [f"Effect of switching each part off at x{factor}: ablated + C minus Diff-ST + C, "
             "averaged over the test sections of each seed, mean ± sd over seeds; 'worse in "
             "k/n seeds' counts the seeds where the part helped.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    said = []
    for key, per_metric in effects.items():
        part = method_label(key).removeprefix("Diff-ST w/o ").removesuffix(" + C")
        cells = [f"{e['mean']:+.4f} ± {e['sd']:.4f} (worse in {e['worse']}/{e['seeds']} seeds)"
                 for e in (per_metric[m] for m in HEADLINE)]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
        said.append(f"- {part}: " + "; ".join(_effect_clauses(per_metric)) + ".")
    return lines + [""] + said + [""]


def _effect_clauses(per_metric: dict[str, dict]) -> list[str]:
    """'the part helped in every seed on ...', 'it hurt in every seed on ...', 'no effect
    consistent over seeds on ...' (non-empty clauses only)."""
    groups: dict[str, list[str]] = {"helped": [], "hurt": [], "mixed": []}
    for m in HEADLINE:
        e = per_metric[m]
        kind = ("helped" if e["seeds"] and e["worse"] == e["seeds"]
                else "hurt" if e["seeds"] and e["worse"] == 0 else "mixed")
        groups[kind].append(MAIN_METRICS[m].split(" ")[0])
    words = {"helped": "the part helped Diff-ST + C in every seed on ",
             "hurt": "it hurt Diff-ST + C in every seed on ",
             "mixed": "no effect consistent over seeds on "}
    return [words[k] + ", ".join(v) for k, v in groups.items() if v]


def sentences(stats_: dict, comp: dict, factor: int) -> list[str]:
    """Generated plain statements: where Diff-ST + C has the best mean among the methods + C,
    and where it does not (with the margin and how many sections it wins)."""
    if REFERENCE not in stats_:
        return []
    rivals = [k for k in stats_ if k.endswith("+C") and k != REFERENCE
              and not k.startswith("diffst-no_")]
    out = []
    for m in HEADLINE:
        ref = stats_[REFERENCE][m]
        best_other = None
        for k in rivals:
            v = stats_[k][m]["mean"]
            if best_other is None or better(m, v, stats_[best_other][m]["mean"]):
                best_other = k
        if best_other is None:
            continue
        o = stats_[best_other][m]
        c = comp[best_other][m]
        name = MAIN_METRICS[m].split(" ")[0]
        secs = f"{c['section_wins']} of {c['sections']} sections"
        if better(m, ref["mean"], o["mean"]):
            out.append(f"- x{factor} {name}: Diff-ST + C has the best mean of the methods + C, "
                       f"{_cell(m, ref)} against the next best, {method_label(best_other)}, "
                       f"{_cell(m, o)}; Diff-ST + C is better in {secs}.")
        else:
            out.append(f"- x{factor} {name}: Diff-ST + C does NOT have the best mean of the "
                       f"methods + C: {method_label(best_other)} has {_cell(m, o)}, Diff-ST + C "
                       f"{_cell(m, ref)}; Diff-ST + C is better in {secs}.")
    return out


def _per_factor(summary: dict, key: str) -> str:
    """A training setting of the run: one value, or where factors differ, each factor's
    (``500/1000 (x5/x10)``)."""
    configs = summary["train_config"]
    values = [str(tc[key]) for tc in configs.values()]
    if len(set(values)) == 1:
        return values[0]
    return f"{'/'.join(values)} ({'/'.join(f'x{f}' for f in configs)})"


def format_tables(summary: dict) -> str:
    """The whole ``table.md`` text from a summary dict."""
    ds, p = summary["dataset"], summary["preset"]
    tc = next(iter(summary["train_config"].values()))
    patches = "/".join(str(t["patch"]) for t in summary["train_config"].values())
    scales = "/".join(f"x{f}" for f in summary["train_config"])
    folds = sorted({f["name"] for f in ds["folds"]})
    depth = summary["protocol"].get("depth", 1.0)
    shallow = "" if depth == 1.0 else f", test counts thinned to {depth:.0%}"
    lines = [f"# Benchmark: {ds['name']} ({summary['stage']} stage, preset `{p['name']}`"
             f"{shallow})", "",
             f"Data: {ds['description']}. Split `{summary['split']}`: {len(folds)} fold(s) "
             f"({', '.join(folds)}), seeds {', '.join(map(str, summary['seeds']))}; "
             f"{ds['n_genes']} genes chosen on each fold's training part.", "",
             "Protocol: every method gets the LR map, the image and the HR mask made from the "
             "LR mask; the truth is used for scoring only. Each method is scored raw and after "
             "the same spot-consistency step (`+ C`: each LR cell's measured counts "
             "redistributed in proportion to the method's map). \"Gene mean\" is a constant map "
             "per gene: the floor of each metric.", ""]
    if depth != 1.0:
        lines += [f"**Depth-shift test**: the test sections were binomially thinned to "
                  f"{depth:.0%} of their counts before pooling (training sections untouched); "
                  f"scores are against {depth:g} x the measured truth (the expected thinned "
                  "counts).", ""]
    cosine = " (cosine schedule)" if tc.get("lr_schedule") == "cosine" else ""
    warmup = (f" (warm-up {tc['ema_warmup']:g})"
              if tc.get("ema_warmup", TrainConfig.ema_warmup) != TrainConfig.ema_warmup else "")
    focus = (f", {tc['t_focus']:.0%} of examples at the last noise step"
             if tc.get("t_focus", TrainConfig.t_focus) else "")
    shifts = tc.get("grid_shifts", TrainConfig.grid_shifts)
    grids = (f", each section pooled on {shifts} x {shifts} grids (`--grid-shifts`)"
             if shifts != 1 else "")
    thinned = (f", each section also with its input thinned to {tc['thin_inputs']:.0%} and "
               "depth-matched (`--thin-inputs`)" if tc.get("thin_inputs") else "")
    lines += [
             f"Training (Diff-ST, ablations, histology regression): "
             f"{_per_factor(summary, 'steps')} steps, batch "
             f"{_per_factor(summary, 'batch_size')}, lr {tc['lr']:g}{cosine}, "
             f"EMA {tc['ema_decay']:g}{warmup}"
             f"{focus}{grids}{thinned}, patch "
             f"{patches} HR "
             f"cells at {scales}, image at {tc['work_um_per_px']:g} µm/px, "
             f"{'log1p' if tc.get('log1p', True) else 'linear'} count scaling; Diff-ST maps "
             f"are the mean of {_draws(p)}. Where these "
             f"settings come from: {p['provenance']}."
             + (" Diff-ST sampled with its input scaled to the training data's depth "
                "(`--match-depth`)." if p.get("match_depth") else "")
             + (" Each Diff-ST sample saw the tile in another of its 8 orientations (rotations "
                "and mirrorings, turned back; `--turns`)." if p.get("turns") else "")
             + _self_tune_sentence(p, summary["factors"])
             + (f" {mix_words(p['istar_mix'])}." if p.get("istar_mix") else "")
             + (f" Diff-ST is an ensemble of {p['n_models']} models (seeds differ), their maps "
                "averaged (`--models`)." if p.get("n_models", 1) > 1 else "")
             + _model_sentence(p)
             + "".join(f" Where the training tissue {data_size_words(key == 'small_data')}, "
                       f"the preset trains with {factor_settings_text(p[key])}."
                       for key in DATA_SIZE_KEYS if p.get(key))
             + _factor_sentence(p, summary["factors"])
             + (f" Parts switched to the Diff-ST paper's variant (`--paper-variant`, README "
                f"'Where diffst differs from the paper'): {', '.join(p['paper_variants'])}."
                if p.get("paper_variants") else ""), "",
             "Numbers: mean ± sd over runs (test section x seed) of each run's mean over genes; "
             "metrics of `diffst.metrics` (truth min-max protocol: RMSE/SSIM/PSNR on maps "
             "scaled by the truth's min-max; PCC signed; RVD relative variance distance; "
             "gene-corr err: distance of gene-gene correlation matrices). Comparisons: runs and "
             "sections (seed-averaged) won by Diff-ST + C, two-sided paired t-test over "
             "sections (only with >= 3 sections). Time: fit + predict seconds per run.", ""]
    methods = [k for k in METHOD_LABELS if any(k in s for s in
                                               (summary["results"][str(f)]["stats"]
                                                for f in summary["factors"]))]
    for f in summary["factors"]:
        res = summary["results"][str(f)]
        st, comp = res["stats"], res["comparisons"]
        keys = ordered_keys(st, methods)
        lines += [f"## x{f}", ""] + metric_table(st, keys, MAIN_METRICS) + [""]
        lines += ["Other protocols (iStar: each map scaled by its own min-max; release: the "
                  "released Diff-ST evaluation, Gaussian SSIM on 8-bit maps, absolute PCC):",
                  ""] + metric_table(st, keys, OTHER_PROTOCOLS, seconds=False) + [""]
        if comp:
            lines += comparison_table(comp) + [""]
        ablated = [k for k in st if k.startswith("diffst-no_")]
        if ablated:
            lines += [f"Ablations at x{f} (same training budget):", ""]
            lines += metric_table(st, [k for k in ("diffst", REFERENCE) if k in st] + ablated,
                                  MAIN_METRICS) + [""]
            lines += ablation_effect_lines(res.get("ablation_effects", {}), f)
        said = sentences(st, comp, f)
        if said:
            lines += [f"In words (generated from the table above), x{f}:", ""] + said + [""]
    m = summary["machine"]
    lines += [f"Machine: {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, torch "
              f"{m['torch']}, CUDA {'yes' if m['cuda'] else 'no'}; total wall time "
              f"{summary.get('wall_s', float('nan')) / 60:.1f} min.", "",
              f"Produced by `{summary['command']}`; do not edit the numbers by hand.", ""]
    return "\n".join(lines)


def refresh_outputs(folder: Path) -> dict:
    """Recompute a run folder's statistics (method stats, comparisons, ablation effects) from the
    unit scores its ``summary.json`` stores, and its model and scheduler configs from its preset,
    and rewrite ``table.md`` and ``summary.json`` atomically; ``per_gene.csv`` and the figures
    are left as they are. For runs written before the report gained a statistic; nothing is
    re-measured."""
    folder = Path(folder)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    preset = summary["preset"]
    summary.update(network_configs(preset["model"], preset.get("paper_variants", ())))
    for f in summary["factors"]:
        res = summary["results"][str(f)]
        units = pd.DataFrame(res["runs"])
        res.update(factor_statistics(units))
    summary["table"] = format_tables(summary)
    _write_table_and_summary(folder, summary)
    return summary

"""Collect the benchmark runs' headline into one generated Markdown table for the README.

For every run folder given (each written by ``diffst benchmark``), and every factor in it: Diff-ST
+ C against the best other method + C on RMSE, SSIM and PCC (mean ± sd over runs, sections won by
Diff-ST + C), then one generated sentence per dataset saying where Diff-ST + C wins and where it
does not. Nothing is typed by hand.

    python benchmarks/headline.py benchmarks/results/her2st_x2 benchmarks/results/her2st_x3 \\
        benchmarks/results/xenium benchmarks/results/simulated \\
        --out benchmarks/results/headline.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from diffst.benchmark.methods import method_label
from diffst.benchmark.presets import PRESETS, factor_changes, for_data_size, patch_cells
from diffst.benchmark.report import (
    HEADLINE,
    MAIN_METRICS,
    REFERENCE,
    better,
    changed_model,
    model_words,
)
from diffst.config import ARCHITECTURE_PARTS, SELF_TUNE_LR, TrainConfig, paper_variant
from diffst.model.istar_like import istar_settings


def best_rival(stats: dict, metric: str) -> str | None:
    """The method + C (not Diff-ST + C, not an ablation) with the best mean on ``metric``."""
    best = None
    for key, row in stats.items():
        if not key.endswith("+C") or key == REFERENCE or key.startswith("diffst-no_"):
            continue
        if best is None or better(metric, row[metric]["mean"], stats[best][metric]["mean"]):
            best = key
    return best


def cell(s: dict) -> str:
    """``mean ± sd`` (4 decimals)."""
    if s["mean"] is None or not math.isfinite(s["mean"]):
        return "n/a"
    return f"{s['mean']:.4f} ± {s['sd']:.4f}" if s["n"] > 1 else f"{s['mean']:.4f}"


def run_settings(summary: dict, factor: int | None = None) -> dict:
    """The Diff-ST settings of a run (at ``factor``: with the preset's settings for that
    factor), with the values older runs used where they predate a field (DDIM sampling, no
    turns, log1p counts, disentangling weight 0.1, no self-tuning, an iStar-like fit of fixed
    length)."""
    preset = dict(summary["preset"])
    preset.update(factor_changes(preset.get("model", {}), preset.get("by_factor", {}), factor,
                                 preset.get("large_data", {}), preset.get("small_data", {})))
    configs = summary.get("train_config", {})
    tc = configs.get(str(factor)) or next(iter(configs.values()), {})
    return {"steps": tc.get("steps", preset.get("steps")), "n_samples": preset["n_samples"],
            "sampler": preset.get("sampler", "ddim"), "turns": preset.get("turns", False),
            "log1p": tc.get("log1p", True),
            "disentangle_weight": tc.get("disentangle_weight", 0.1),
            "match_depth": preset.get("match_depth", False),
            "consistency_weight": tc.get("consistency_weight", 0.0),
            "patch_um": trained_patch_um(summary, tc, preset.get("patch_um")),
            "self_tune": preset.get("self_tune", 0),
            "self_tune_lr": (preset.get("self_tune_lr", SELF_TUNE_LR) if preset.get("self_tune")
                             else SELF_TUNE_LR),  # a rate without self-tuning is no setting
            "paper_variants": architecture_free(preset.get("paper_variants", ())),
            "lr_schedule": tc.get("lr_schedule", "constant"),
            "lr": preset.get("lr"), "batch_size": tc.get("batch_size", preset.get("batch_size")),
            "ema_warmup": tc.get("ema_warmup", 10.0),
            "t_focus": tc.get("t_focus", 0.0),
            "grid_shifts": tc.get("grid_shifts", 1),
            "thin_inputs": tc.get("thin_inputs", 0.0),
            "work_um_per_px": preset.get("work_um_per_px"),
            "size_um": preset.get("size_um"),
            "n_models": preset.get("n_models", 1),
            "istar_mix": preset.get("istar_mix", 0.0),
            "istar_select_folds": summary.get("istar_settings", {}).get("select_folds", 0),
            "model": with_paper_architecture(preset.get("model", {}),
                                             preset.get("paper_variants", ()))}


def first_training_set(summary: dict) -> tuple[float, int] | None:
    """Cell side (µm) and HR tissue cells of the first fold's training sections (None where
    the run did not record them)."""
    folds = summary.get("dataset", {}).get("folds") or [{}]
    train = folds[0].get("train") or []
    if not train or any("cells_in_tissue" not in x for x in train):
        return None
    return float(train[0]["cell_um"]), sum(int(x["cells_in_tissue"]) for x in train)


def trained_patch_um(summary: dict, tc: dict, preset_patch_um: float | None) -> float | None:
    """The training patch side (µm) a run used: its recorded patch in cells times the cell
    side (the preset's ``patch_um`` where either is not recorded)."""
    data = first_training_set(summary)
    if data is None or "patch" not in tc:
        return preset_patch_um
    return float(tc["patch"] * data[0])


def todays_patch_um(summary: dict, registered, factor: int | None) -> float | None:
    """The training patch side (µm) today's preset ``registered`` gives the run's training
    sections at ``factor`` (the run's first factor where None), small-data rule included."""
    data = first_training_set(summary)
    if data is None:
        return registered.patch_um
    cell_um, tissue = data
    at = factor if factor is not None else summary["factors"][0]
    return float(patch_cells(registered, cell_um, at, tissue) * cell_um)


def todays_data_size_settings(summary: dict, registered, factor: int | None) -> dict:
    """The ``small_data`` and ``large_data`` settings today's preset ``registered`` gives the
    run's training sections at ``factor`` (the run's first factor where None): those fields
    with their value for that amount of data (empty where the run did not record its training
    set)."""
    data = first_training_set(summary)
    if data is None:
        return {}
    at = registered.at(factor if factor is not None else summary["factors"][0])
    today = for_data_size(at, *data)
    return {key: preset_value(key, today) for key in {**at.small_data, **at.large_data}}


def architecture_free(parts: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The paper variants of ``parts`` that change more than the network. The others
    (:data:`diffst.config.ARCHITECTURE_PARTS`) a run names as the architecture settings they
    are, so a run with ``--paper-variant graph`` and a preset whose ``model`` takes the paper's
    graph read the same."""
    return tuple(p for p in parts if p not in ARCHITECTURE_PARTS)


def with_paper_architecture(model: dict, parts: tuple[str, ...] | list[str]) -> dict:
    """``model`` with the network settings of the architecture-only paper variants in ``parts``."""
    network, _, _ = paper_variant([p for p in parts if p in ARCHITECTURE_PARTS])
    return {**model, **network}


WORDS = {
    "steps": lambda v: f"{v} steps",
    "n_samples": lambda v: f"{v} samples",
    "sampler": lambda v: f"{v.upper()} sampler" if v != "mean" else "`--sampler mean`",
    "turns": lambda v: "`--turns`" if v else "no turns",
    "log1p": lambda v: "log1p counts" if v else "linear counts",
    "disentangle_weight": lambda v: f"disentangle weight {v:g}",
    "match_depth": lambda v: "`--match-depth`" if v else "",
    "consistency_weight": lambda v: f"consistency weight {v:g}",
    "patch_um": lambda v: f"{v:g} µm patches" if v else "",
    "self_tune": lambda v: f"`--self-tune {v}`" if v else "no self-tuning",
    "self_tune_lr": lambda v: f"self-tune lr {v:g}",
    "paper_variants": lambda v: (f"the paper's {', '.join(v)}" if v else "diffst's parts"),
    "lr_schedule": lambda v: f"{v} lr schedule",
    "lr": lambda v: f"lr {v:g}" if v else "",
    "batch_size": lambda v: f"batch {v}" if v else "",
    "ema_warmup": lambda v: f"EMA warm-up {v:g}",
    "t_focus": lambda v: (f"{v:.0%} of training at the last noise step" if v
                          else "uniform noise steps"),
    "grid_shifts": lambda v: f"{v} x {v} pooling grids" if v != 1 else "one pooling grid",
    "thin_inputs": lambda v: (f"inputs also thinned to {v:.0%} in training" if v
                              else "no thinned training inputs"),
    "work_um_per_px": lambda v: f"image at {v:g} µm/px" if v else "",
    "size_um": lambda v: f"{v:g} µm simulated tissue" if v else "",
    "n_models": lambda v: f"ensemble of {v}" if v > 1 else "one model",
    "istar_mix": lambda v: (f"`--istar-mix {v}`" if v else "no iStar-like mix"),
    "istar_select_folds": lambda v: (f"iStar-like steps chosen by {v}-fold CV" if v
                                     else "iStar-like without early stopping"),
    "model": lambda v: ", ".join(model_words(k, x) for k, x in v.items()),
}
"""How a setting that differs from today's preset is named in the headline."""


def settings(summary: dict, seed: bool = True, factor: int | None = None) -> str:
    """Preset, test depth (when thinned), every Diff-ST setting that differs from today's
    preset of that name (older runs: what they used then; at ``factor``: both with the
    preset's settings for that factor) and a single seed other than 0, in words."""
    depth = summary["protocol"].get("depth", 1.0)
    preset = summary["preset"]
    registered = PRESETS.get((preset["profile"], preset["name"]))
    words = [f"`{preset['name']}`"]
    if registered is not None:
        if factor is not None:
            registered = registered.at(factor)
        now = {key: preset_value(key, registered) for key in WORDS}
        now["paper_variants"] = architecture_free(registered.paper_variants)
        now["patch_um"] = todays_patch_um(summary, registered, factor)
        now.update(todays_data_size_settings(summary, registered, factor))
        values = run_settings(summary, factor)
        values["model"] = changed_model(
            values["model"], with_paper_architecture(registered.model, registered.paper_variants))
        now["model"] = {}
        words += [WORDS[key](value) for key, value in values.items()
                  if value != now[key] and WORDS[key](value)]
    if summary.get("split") not in (None, "loo", "holdout"):  # e.g. another tissue seed
        words.append(f"split {summary['split']}")
    if depth != 1.0:
        words.append(f"test depth {depth:.0%}")
    if seed and summary["seeds"] != [0] and len(summary["seeds"]) == 1:  # not the usual 0
        words.append(f"seed {summary['seeds'][0]}")
    return ", ".join(words)


def preset_value(key: str, registered) -> object:
    """Today's value of the setting ``key`` for a registered preset (a training setting the
    preset leaves to the package: :class:`TrainConfig`'s default)."""
    if key == "istar_select_folds":
        return istar_settings(**registered.istar)["select_folds"]
    value = getattr(registered, key)
    return getattr(TrainConfig(), key, None) if value is None else value


def rows_for(summary: dict, against: str | None = None) -> tuple[list[str], list[str]]:
    """Table rows and verdicts (metric, won?) for one run folder's summary.

    ``against``: compare with that method + C (e.g. ``"bicubic"``) instead of the best other.
    """
    rows, verdicts = [], []
    n_runs = None
    for f in summary["factors"]:
        name = f"{summary['dataset']['name']} ({summary['stage']}, {settings(summary, True, f)})"
        res = summary["results"][str(f)]
        st, comp = res["stats"], res["comparisons"]
        if REFERENCE not in st:
            continue
        cells = []
        for m in HEADLINE:
            rival = best_rival(st, m) if against is None else f"{against}+C"
            if rival not in st:
                rival = None
            ref = st[REFERENCE][m]
            n_runs = ref["n"]
            if rival is None:
                cells.append(cell(ref))
                continue
            c = comp[rival][m]
            won = better(m, ref["mean"], st[rival][m]["mean"])
            verdicts.append(f"x{f} {MAIN_METRICS[m].split(' ')[0]} "
                            f"{'won' if won else 'lost to ' + method_label(rival)}")
            cells.append(f"{'**' if won else ''}{cell(ref)}{'**' if won else ''} vs "
                         f"{cell(st[rival][m])} ({method_label(rival)}); "
                         f"{c['section_wins']}/{c['sections']} sections")
        rows.append(f"| {name} | x{f} | {n_runs} | " + " | ".join(cells) + " |")
    return rows, verdicts


def run_label(summary: dict) -> str:
    """The preset and the settings that every row of a run names (those that differ from
    today's preset at each of its factors), in words; :func:`factor_notes` adds the rest."""
    labels = [settings(summary, False, f).split(", ") for f in summary["factors"]]
    return ", ".join(w for w in labels[0] if all(w in other for other in labels[1:]))


def factor_notes(summary: dict, run: str) -> str:
    """What a run of several factors did differently from today's preset at one factor only
    (e.g. ``"; at x10: 2 x 2 pooling grids"``): the labels of its rows that ``run``, the
    label of the whole run, does not name."""
    if len(summary["factors"]) < 2:
        return ""
    named = set(run.split(", "))
    notes = []
    for f in summary["factors"]:
        extra = [w for w in settings(summary, False, f).split(", ") if w not in named]
        if extra:
            notes.append(f"at x{f}: {', '.join(extra)}")
    return "".join(f"; {note}" for note in notes)


def run_folder(arg: str) -> tuple[Path, list[int] | None]:
    """A command-line run folder, optionally with the factors to show: ``FOLDER`` (all of the
    run's factors) or ``FOLDER:5`` / ``FOLDER:5,10`` (those only, e.g. the rerun factor of a
    run whose other factor is shown by another run)."""
    path, sep, tail = arg.rpartition(":")
    if sep and tail.replace(",", "").isdigit():
        return Path(path), [int(f) for f in tail.split(",")]
    return Path(arg), None


def load_run(folder: Path, factors: list[int] | None = None) -> dict:
    """A run's summary.json, restricted to ``factors`` (None: all of them)."""
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    if factors is None:
        return summary
    missing = sorted(set(factors) - set(summary["factors"]))
    if missing:
        raise SystemExit(f"{folder}: no factor {missing} in this run (it has "
                         f"{summary['factors']})")
    return {**summary, "factors": [f for f in summary["factors"] if f in factors]}


def headline(folders: list[Path | tuple[Path, list[int] | None]],
             against: str | None = None) -> str:
    """The Markdown text (``folders``: run folders, or (folder, factors) pairs from
    :func:`run_folder`; ``against``: as :func:`rows_for`)."""
    other = "best other + C" if against is None else f"{method_label(against)} + C"
    head = ["Dataset", "Factor", "Runs", *(f"{MAIN_METRICS[m]}: Diff-ST + C vs {other}"
                                           for m in HEADLINE)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    words = []
    for entry in folders:
        folder, factors = entry if isinstance(entry, tuple) else (entry, None)
        summary = load_run(folder, factors)
        rows, verdicts = rows_for(summary, against)
        lines += rows
        won = [v for v in verdicts if v.endswith("won")]
        lost = [v for v in verdicts if not v.endswith("won")]
        what = ("has the best mean of the methods + C" if against is None
                else f"beats {other} on the mean")
        run = run_label(summary)
        run += factor_notes(summary, run)
        words.append(f"- {summary['dataset']['name']} (preset {run}, seeds "
                     f"{', '.join(map(str, summary['seeds']))}): Diff-ST + C {what} "
                     f"in {len(won)} of {len(verdicts)} factor x metric cells"
                     + (f"; it does not in: {'; '.join(lost)}" if lost else "") + ".")
    bold = ("has the best mean of the methods + C" if against is None
            else f"has a better mean than {other}")
    return "\n".join([*lines, "", *words, "",
                      "Generated by `python benchmarks/headline.py` from the runs' summary.json; "
                      f"bold: Diff-ST + C {bold}. Sections won: "
                      "test sections (seed-averaged) where Diff-ST + C beats that method + C.",
                      ""])


def main(argv: list[str] | None = None) -> int:
    """Write the headline Markdown."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=run_folder,
                   help="benchmark output folders; FOLDER:5 shows the run's x5 rows only")
    p.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    p.add_argument("--against", default=None,
                   help="compare with this method + C (e.g. bicubic) instead of the best other")
    args = p.parse_args(argv)
    text = headline(args.folders, args.against)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

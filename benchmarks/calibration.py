"""Calibration benchmark: coverage and width of prediction intervals before and after calibration.

Two test settings, each with a calibration region that is neither training nor test data:

* ``sim``: a simulated tissue; the model (HR truth, factor 5) trains on the left part, a
  middle strip is the calibration data and the right strip (pooled by 5) the test.
* ``her2st`` (skipped when ``../shared/data/her2st`` is absent): a model (factor 2, spot
  pairs) trains on sections C2-C4, C5 is the calibration section and C6 pooled 2x the test,
  scored against C6's measured spots. ``--folds`` rotates the roles over more sections.

Both models are trained as the accuracy benchmark's ``short`` preset trains Diff-ST (network,
steps, batch, learning rate, image resolution; ``diffst.benchmark.presets``), so the intervals
are those of the maps whose accuracy the README reports (without the benchmark's self-tuning on
the test slide).

For every sampler variant (deterministic DDIM with K draws, stochastic DDIM ``eta=1``, more
draws, and ``meanturns``: K one-step posterior-mean estimates, one per tile orientation, whose
spread is only that over orientations and start noise) the test input is super-resolved once
and these intervals are scored on the test truth:

* ``raw``: ``mean +- z_L std`` of the draws (Gaussian reading of the sampler spread); ``raw_q``
  is the sampler's own ``[q05, q95]`` (90 % only).
* ``split``: split-conformal per-gene multipliers of the spread from the calibration region
  (``split3``: with 3 expression-level bins per gene); what the width follows (the sampler's
  spread or ``sqrt(mean)``) and its floor are chosen on the calibration region and recorded.
* ``self``: self-calibration on the test input itself (its LR cells pooled once more and
  super-resolved back; for these models that is one scale off their training scale).
* ``naive``: bicubic interpolation with a constant per-gene width, the split-conformal quantile
  of absolute bicubic residuals on the calibration region.

Reported (printed, ``summary.json``, ``per_gene.csv``, ``table.md``): coverage at nominal
50/80/90/95 % and mean interval width (counts per HR cell) overall and per gene, plus
``reliability.png`` (empirical vs nominal coverage at 10 %, 20 %, ..., 90 %, 95 %).

Defaults keep a run near 10 minutes on one CPU thread::

    python benchmarks/calibration.py --out benchmarks/results/calibration
    python benchmarks/calibration.py --quick --out /tmp/cal      # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import shown_path  # noqa: E402
from whole_slide import HER2ST  # noqa: E402

REPORT_LEVELS = (0.5, 0.8, 0.9, 0.95)
CURVE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
METHODS = ("raw", "split", "split3", "self", "naive")


@dataclass
class Settings:
    """Benchmark knobs (see ``--help``)."""

    out: Path
    preset: str = "short"
    sample_steps: int = 10
    n_samples: int = 8
    sim_size_um: float = 1200.0
    sim_genes: int = 12
    her2st_genes: int = 16
    folds: int = 1
    threads: int = 1

    def variants(self) -> dict[str, dict]:
        """Sampler variants: name -> super_resolve keyword arguments."""
        k = self.n_samples
        return {f"ddim_K{k}": dict(eta=0.0, n_samples=k),
                f"eta1_K{k}": dict(eta=1.0, n_samples=k),
                f"eta1_K{2 * k}": dict(eta=1.0, n_samples=2 * k),
                f"meanturns_K{k}": dict(sampler="mean", turns=True, n_samples=k)}


# ---------------------------------------------------------------------------- intervals
def intervals(setting: dict, sr: dict) -> dict[str, dict[float, tuple]]:
    """Every method's ``(lo, hi)`` ``(G, h, w)`` on the test raster at every level."""
    from diffst.calibration import fit_calibration, self_calibrate

    lm, test, lr = setting["lm"], setting["test"], setting["lr"]
    h, w = test.shape
    res = setting["results"][sr["name"]]
    mean, std = res.mean[:, :h, :w], res.std[:, :h, :w]
    kw = {k: v for k, v in sr.items() if k != "name"}
    kw.update(steps=setting["sample_steps"])
    cals = {"split": split_fit(setting, sr["name"], kw, 1),
            "split3": split_fit(setting, sr["name"], kw, 3)}
    cals["self"] = self_calibrate(lm, lr, allow_scale_shift=True, levels=CURVE_LEVELS, **kw)
    out: dict[str, dict[float, tuple]] = {}
    out["raw"] = {lv: _gaussian(mean, std, test.mask, lv) for lv in CURVE_LEVELS}
    for name, cal in cals.items():
        out[name] = {lv: cal.interval(mean, std, test.mask, lv) for lv in CURVE_LEVELS}
    naive_cal = fit_calibration(setting["cal_truth_expr"], setting["cal_bicubic"],
                                np.zeros_like(setting["cal_bicubic"]), setting["cal_mask"],
                                lm.genes, method="constant", levels=CURVE_LEVELS)
    bic = setting["test_bicubic"]
    out["naive"] = {lv: naive_cal.interval(bic, bic, test.mask, lv) for lv in CURVE_LEVELS}
    out["raw_q"] = {0.9: (res.q05[:, :h, :w], res.q95[:, :h, :w])}
    setting["cals"][sr["name"]] = {k: {**v.source, "floor_frac": v.floor_frac,
                                       "spread": v.spread}
                                   for k, v in cals.items()}
    return out


def split_fit(setting: dict, variant: str, kw: dict, n_bins: int):
    """Split-conformal calibration from the calibration region's prediction with the sampler
    ``variant`` (as :func:`diffst.calibration.split_conformal` does, reusing the maps)."""
    from diffst.calibration import fit_calibration

    res = setting["cal_results"][variant]
    cal = setting["cal"]
    h, w = cal.shape
    source = {"kind": "split-conformal", "data": cal.name, "n_bins": n_bins, **kw}
    return fit_calibration(cal.expr, res.mean[:, :h, :w], res.std[:, :h, :w], cal.mask,
                           setting["lm"].genes, levels=CURVE_LEVELS, n_bins=n_bins,
                           source=source)


def _gaussian(mean, std, mask, level):
    z = NormalDist().inv_cdf(0.5 + level / 2)
    lo = np.where(mask, np.maximum(mean - z * std, 0), 0)
    return lo, np.where(mask, mean + z * std, 0)


def score(truth, mask, ivs: dict) -> dict:
    """Coverage and mean width per method and level, overall and per gene."""
    from diffst.calibration import coverage

    rows = {}
    for method, by_level in ivs.items():
        rows[method] = {}
        for lv, (lo, hi) in by_level.items():
            width = (hi - lo)[:, mask]
            rows[method][lv] = {
                "coverage": coverage(truth, lo, hi, mask),
                "width": float(width.mean()),
                "coverage_gene": coverage(truth, lo, hi, mask, per_gene=True).tolist(),
                "width_gene": width.mean(axis=1).tolist(),
            }
    return rows


# ---------------------------------------------------------------------------- settings
def prepare(lm, test, cal, cfg: Settings) -> dict:
    """Super-resolve the test and calibration inputs once per sampler variant."""
    from diffst.baselines.interpolation import bicubic
    from diffst.data.lr import simulate_lr
    from diffst.infer import super_resolve

    test, cal = test.select_genes(lm.genes), cal.select_genes(lm.genes)
    lr, cal_lr = simulate_lr(test, lm.factor), simulate_lr(cal, lm.factor)
    s = dict(lm=lm, test=test, cal=cal, lr=lr, sample_steps=cfg.sample_steps, results={},
             cal_results={}, cals={}, timings={})
    for name, kw in cfg.variants().items():
        t0 = time.perf_counter()
        # HR masks come from the pooled LR masks; the truth masks are used for scoring only
        s["results"][name] = super_resolve(lm, lr, steps=cfg.sample_steps, progress=False, **kw)
        s["timings"][name] = time.perf_counter() - t0
        s["cal_results"][name] = super_resolve(
            lm, cal_lr, steps=cfg.sample_steps, progress=False, **kw)
    h, w = test.shape
    ch, cw = cal.shape
    hr = lambda x: (x.shape[1] * lm.factor, x.shape[2] * lm.factor)  # noqa: E731
    s["test_bicubic"] = bicubic(lr, lm.factor, hr(lr.expr))[:, :h, :w] * test.mask
    s["cal_bicubic"] = bicubic(cal_lr, lm.factor, hr(cal_lr.expr))[:, :ch, :cw] * cal.mask
    s["cal_truth_expr"], s["cal_mask"] = cal.expr, cal.mask
    return s


def run_setting(name: str, lm, test, cal, cfg: Settings) -> dict:
    """Score every variant and method on one test setting; print its table."""
    t0 = time.perf_counter()
    s = prepare(lm, test, cal, cfg)
    out = {"test": s["test"].name, "calibration": s["cal"].name, "genes": list(lm.genes),
           "tissue_cells": int(s["test"].mask.sum()), "variants": {}}
    for variant, kw in cfg.variants().items():
        ivs = intervals(s, dict(kw, name=variant))
        out["variants"][variant] = score(s["test"].expr, s["test"].mask, ivs)
    out["sources"] = s["cals"]
    out["sr_time_s"] = s["timings"]
    out["total_s"] = time.perf_counter() - t0
    print_setting(name, out)
    return out


def train_like_benchmark(samples: list, genes: list[str], factor: int, profile: str,
                         cfg: Settings, out: Path) -> Path:
    """Train Diff-ST as the accuracy benchmark does (:class:`diffst.benchmark.methods.
    DiffSTMethod`, preset ``cfg.preset`` for ``profile``, seed 0; the HER2ST spot pairs are its
    HR truth pooled by ``factor``, as there); export to ``out``."""
    from diffst.benchmark.methods import DiffSTMethod
    from diffst.benchmark.presets import get_preset

    method = DiffSTMethod(get_preset(cfg.preset, profile), seed=0)
    method.fit(samples, genes, factor)
    return method.trainer.export_model(out)


def simulated_setting(cfg: Settings) -> dict:
    from diffst.data.simulate import simulate_tissue
    from diffst.demo import split_holdout
    from diffst.infer import load_model

    tissue = simulate_tissue(seed=0, size_um=cfg.sim_size_um, cell_um=8.0, n_genes=cfg.sim_genes)
    rest, test = split_holdout(tissue, 0.3, 5)
    train_part, cal = split_holdout(rest, 0.3 / 0.7, 5)
    test = replace(test, name=f"{tissue.name}_right_strip", meta=dict(test.meta))
    cal = replace(cal, name=f"{tissue.name}_middle_strip", meta=dict(cal.meta))
    t0 = time.perf_counter()
    model = train_like_benchmark([train_part], tissue.genes, 5, "cells", cfg, cfg.out / "sim_x5.pt")
    row = run_setting("simulated: train left 40 %, calibrate middle 30 %, test right 30 %",
                      load_model(model, "cpu"), test, cal, cfg)
    row["train_s"] = time.perf_counter() - t0 - row["total_s"]
    return row


def her2st_folds(cfg: Settings) -> dict:
    from diffst.api import shared_top_genes
    from diffst.infer import load_model
    from diffst.io import read_her2st

    names = ["C2", "C3", "C4", "C5", "C6"]
    sections = {n: read_her2st(HER2ST, n) for n in names}
    out = {}
    for i in range(cfg.folds):
        test_name, cal_name = names[-1 - i], names[-2 - i]
        train_names = [n for n in names if n not in (test_name, cal_name)]
        train_secs = [sections[n] for n in train_names]
        genes = shared_top_genes(train_secs, cfg.her2st_genes)
        t0 = time.perf_counter()
        model = train_like_benchmark(train_secs, genes, 2, "spots", cfg,
                                     cfg.out / f"her2st_x2_test{test_name}.pt")
        train_s = time.perf_counter() - t0
        row = run_setting(f"HER2ST: train {'+'.join(train_names)}, calibrate {cal_name}, "
                          f"test {test_name} pooled 2x", load_model(model, "cpu"),
                          sections[test_name], sections[cal_name], cfg)
        row["train_s"] = train_s
        out[f"test_{test_name}"] = row
    return out


# ---------------------------------------------------------------------------- output
def print_setting(title: str, row: dict) -> None:
    print(f"\n{title} ({row['tissue_cells']} test cells, {len(row['genes'])} genes)")
    for line in table_lines(row):
        print(line)


def table_lines(row: dict) -> list[str]:
    """Markdown table: variant/method rows, coverage at each level and the 90 % width."""
    head = ("| sampler | interval | " + " | ".join(f"cov {int(lv * 100)} %" for lv in
                                                    REPORT_LEVELS)
            + " | width 90 % | width / naive |")
    lines = [head, "|" + "---|" * (4 + len(REPORT_LEVELS))]
    for variant, methods in row["variants"].items():
        naive = methods["naive"][0.9]["width"]
        for method in (*METHODS, "raw_q"):
            by = methods[method]
            cov = [f"{by[lv]['coverage']:.3f}" if lv in by else "-" for lv in REPORT_LEVELS]
            w = by[0.9]["width"]
            lines.append(f"| {variant} | {method} | " + " | ".join(cov)
                         + f" | {w:.4g} | {w / naive:.2f} |")
    return lines


def write_outputs(report: dict, out: Path) -> None:
    from diffst.io.atomic import atomic_path

    with atomic_path(out / "summary.json") as tmp:
        Path(tmp).write_text(json.dumps(_strip_genes(report), indent=1, default=str))
    with atomic_path(out / "per_gene.csv") as tmp, open(tmp, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["setting", "sampler", "interval", "level", "gene", "coverage", "width"])
        for setting, row in _settings(report):
            for variant, methods in row["variants"].items():
                for method, by in methods.items():
                    for lv, r in by.items():
                        for g, c, w in zip(row["genes"], r["coverage_gene"], r["width_gene"],
                                           strict=True):
                            wr.writerow([setting, variant, method, lv, g, f"{c:.4f}",
                                         f"{w:.5g}"])
    md = ["# Interval calibration (benchmarks/calibration.py)", ""]
    for setting, row in _settings(report):
        md += [f"## {setting}: test {row['test']}, calibration {row['calibration']}, "
               f"{row['tissue_cells']} test cells x {len(row['genes'])} genes", ""]
        md += table_lines(row) + [""]
    with atomic_path(out / "table.md") as tmp:
        Path(tmp).write_text("\n".join(md))
    reliability_png(report, out / "reliability.png")


def _settings(report: dict):
    if "sim" in report:
        yield "simulated", report["sim"]
    for name, row in report.get("her2st", {}).items():
        yield f"her2st_{name}", row


def _strip_genes(report: dict) -> dict:
    """Summary without the per-gene lists (they are in per_gene.csv)."""
    def strip(obj):
        if isinstance(obj, dict):
            return {str(k): strip(v) for k, v in obj.items()
                    if k not in ("coverage_gene", "width_gene")}
        return obj
    return strip(report)


COLOURS = {"raw": (200, 60, 60), "split": (40, 110, 200), "split3": (30, 160, 160),
           "self": (150, 80, 190), "naive": (120, 120, 120)}


def reliability_png(report: dict, path: Path, size: int = 300) -> Path:
    """Empirical vs nominal coverage, one panel per setting (first sampler variant)."""
    from PIL import Image, ImageDraw

    from diffst.io.atomic import atomic_path

    panels = list(_settings(report))
    pad, legend = 40, 90
    img = Image.new("RGB", (len(panels) * (size + pad) + pad + legend, size + 2 * pad + 10),
                    "white")
    d = ImageDraw.Draw(img)
    for i, (name, row) in enumerate(panels):
        x0, y0 = pad + i * (size + pad), pad

        def xy(nominal, empirical, x0=x0, y0=y0):
            return x0 + nominal * size, y0 + (1 - empirical) * size

        d.rectangle([x0, y0, x0 + size, y0 + size], outline="black")
        d.line([xy(0, 0), xy(1, 1)], fill=(180, 180, 180), width=1)
        for t in (0.5, 0.9):
            d.text((xy(t, 0)[0] - 8, y0 + size + 4), f"{t:g}", fill="black")
            d.text((x0 - 24, xy(0, t)[1] - 6), f"{t:g}", fill="black")
        variant = next(iter(row["variants"]))
        d.text((x0, 8), f"{name} ({variant})", fill="black")
        d.text((x0 + size // 2 - 30, y0 + size + 18), "nominal level", fill="black")
        for method, colour in COLOURS.items():
            by = row["variants"][variant][method]
            pts = [xy(lv, by[lv]["coverage"]) for lv in CURVE_LEVELS]
            d.line(pts, fill=colour, width=2)
            for px, py in pts:
                d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
    lx = pad + len(panels) * (size + pad)
    for j, (method, colour) in enumerate(COLOURS.items()):
        d.line([lx, pad + 14 * j + 6, lx + 16, pad + 14 * j + 6], fill=colour, width=3)
        d.text((lx + 20, pad + 14 * j), method, fill="black")
    d.text((lx, pad + 14 * len(COLOURS) + 6), "y: coverage", fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_calibration", type=Path)
    p.add_argument("--samples", type=int, default=8, help="K samples per tile (base variant)")
    p.add_argument("--sample-steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--folds", type=int, default=1, help="HER2ST held-out sections (1-3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parts", default="sim,her2st", help="sim and/or her2st")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    cfg = Settings(out=a.out, sample_steps=a.sample_steps,
                   n_samples=a.samples, folds=max(1, min(a.folds, 3)), threads=a.threads)
    if a.quick:
        cfg.preset, cfg.sample_steps, cfg.n_samples = "quick", 3, 4
        cfg.sim_size_um, cfg.sim_genes, cfg.her2st_genes = 800.0, 6, 6
    cfg.out.mkdir(parents=True, exist_ok=True)
    parts = {x.strip() for x in a.parts.split(",") if x.strip()}
    report: dict = {"settings": {k: shown_path(v) if k == "out" else str(v)
                                 for k, v in cfg.__dict__.items()}}
    t0 = time.perf_counter()
    if "sim" in parts:
        report["sim"] = simulated_setting(cfg)
    if "her2st" in parts and HER2ST.exists():
        report["her2st"] = her2st_folds(cfg)
    elif "her2st" in parts:
        print(f"\nHER2ST skipped ({HER2ST} absent)")
    report["total_s"] = time.perf_counter() - t0
    write_outputs(report, cfg.out)
    print(f"\ntotal {report['total_s']:.0f} s; wrote {shown_path(cfg.out)}/summary.json, "
          "per_gene.csv, table.md, reliability.png")
    return report


if __name__ == "__main__":
    main()

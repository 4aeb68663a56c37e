"""The built-in demo: simulate a tissue, train Diff-ST, super-resolve a held-out area, score it.

Everything runs on the simulated tissue of :mod:`diffst.data.simulate` (no downloads). The
right-hand strip of the section (``holdout_fraction`` of its width) is never seen in training;
its LR map is simulated by sum-pooling the truth, super-resolved with Diff-ST and with bicubic
interpolation, and both are scored against the truth inside the tissue mask. Both methods get
the same inputs (the LR map, the image and the LR tissue mask repeated onto the HR raster) and
are scored raw and after the same spot-consistency step (``+ C``). The demo's tissue (seed 0)
is not a test region of ``diffst benchmark`` (whose simulated test tissues are seeds 1, 2, ...).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diffst.baselines import bicubic
from diffst.consistency import redistribute_np
from diffst.data.image import aligned_image
from diffst.data.lr import simulate_lr, upsample_nearest
from diffst.data.sample import STSample
from diffst.data.simulate import simulate_tissue
from diffst.infer import SRResult, draws_in_words, super_resolve
from diffst.metrics import evaluate, summarize
from diffst.model.config import DiffSTConfig
from diffst.plot import gene_panel
from diffst.train import TrainConfig, Trainer

DEMO_FILES = ("model.pt", "checkpoint.pt", "metrics_per_gene.csv", "demo_maps.png",
              "summary.json", "summary.md")
"""Every file :func:`run_demo` writes into its output folder."""


@dataclass
class DemoSettings:
    """Knobs of the demo (defaults finish in a few minutes on 2 CPU cores).

    The Diff-ST map is the mean of ``n_samples`` draws of ``sampler`` (``mean``: one-step
    posterior-mean estimates, ``turns``: one per orientation of the tile), the way
    ``diffst benchmark`` scores Diff-ST.
    """

    seed: int = 0
    size_um: float = 1600.0
    cell_um: float = 8.0
    n_genes: int = 20
    factor: int = 5
    holdout_fraction: float = 0.3
    steps: int = 800
    batch_size: int = 8
    lr: float = 1e-3
    sample_steps: int = 20
    n_samples: int = 8
    sampler: str = "mean"
    turns: bool = True


def split_holdout(sample: STSample, fraction: float, factor: int) -> tuple[STSample, STSample]:
    """Split a sample into a left training part and a right held-out strip.

    The cut column is a multiple of ``factor`` so both parts pool cleanly.
    """
    h, w = sample.shape
    cut = int(round(w * (1 - fraction) / factor)) * factor
    return sample.crop(0, 0, h, cut), sample.crop(0, cut, h, w - cut)


def run_demo(out_dir: str | Path = "diffst_out", settings: DemoSettings | None = None,
             progress: bool = True) -> dict:
    """Run the demo end to end; write model, metrics and pictures to ``out_dir``.

    Returns a dict with the summary metrics of Diff-ST and bicubic and the output paths
    (``files``: every file written, see :data:`DEMO_FILES`).
    """
    cfg = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    tissue = simulate_tissue(seed=cfg.seed, size_um=cfg.size_um, cell_um=cfg.cell_um,
                             n_genes=cfg.n_genes)
    train_part, test_part = split_holdout(tissue, cfg.holdout_fraction, cfg.factor)
    timings["simulate_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    trainer = Trainer(
        [train_part], tissue.genes, cfg.factor, DiffSTConfig(),
        TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, ema_decay=0.995,
                    patch=8 * cfg.factor, seed=cfg.seed, checkpoint_every=max(cfg.steps, 1)),
    )
    trainer.fit(checkpoint=out / "checkpoint.pt", progress=progress)
    trainer.export_model(out / "model.pt")
    timings["train_s"] = time.perf_counter() - t0

    lr = simulate_lr(test_part, cfg.factor)
    t0 = time.perf_counter()
    result = super_resolve(trainer.pipeline(), lr, steps=cfg.sample_steps,
                           sampler=cfg.sampler, turns=cfg.turns, n_samples=cfg.n_samples,
                           seed=cfg.seed, consistency="off", progress=progress)
    timings["predict_s"] = time.perf_counter() - t0
    return _score_and_draw(test_part, lr, result, cfg, out, timings)


def _score_and_draw(truth: STSample, lr: STSample, result: SRResult, cfg: DemoSettings,
                    out: Path, timings: dict[str, float]) -> dict:
    h, w = truth.shape
    given = result.mask  # the LR tissue mask repeated: what a user has, not the truth mask
    raw = {"bicubic": bicubic(lr, cfg.factor, given.shape) * given, "diffst": result.mean}
    maps = {}
    for name, pred in raw.items():
        maps[name] = pred[:, :h, :w]
        maps[f"{name} + C"] = redistribute_np(pred, lr.expr, given, cfg.factor)[:, :h, :w]
    scores = {name: evaluate(truth.expr, m, truth.mask, truth.genes) for name, m in maps.items()}
    table = pd.concat(scores, names=["method"]).reset_index()
    table.to_csv(out / "metrics_per_gene.csv", index=False)
    summary = {name: summarize(df) for name, df in scores.items()}
    show = truth.top_genes(4)
    background = aligned_image(truth, 4)
    lr_up = upsample_nearest(lr.expr, cfg.factor)[:, :h, :w] / cfg.factor**2
    figure = gene_panel(
        [("truth", truth.expr), (f"LR x{cfg.factor}", lr_up), ("bicubic + C", maps["bicubic + C"]),
         ("Diff-ST + C", maps["diffst + C"])],
        truth.genes, show, background, truth.mask, out / "demo_maps.png",
    )
    report = {"summary": summary, "timings_s": timings, "settings": cfg.__dict__,
              "figure": str(figure), "metrics_csv": str(out / "metrics_per_gene.csv"),
              "model": str(out / "model.pt"),
              "files": [str(out / name) for name in DEMO_FILES]}
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    (out / "summary.md").write_text(format_markdown(report))
    return report


def format_markdown(report: dict) -> str:
    """The demo's mean metrics and timings as a Markdown table."""
    cfg = report["settings"]
    t = report["timings_s"]
    lines = [
        f"Held-out strip of the simulated tissue (seed {cfg['seed']}), factor {cfg['factor']}, "
        f"{cfg['n_genes']} genes, {cfg['steps']} training steps, Diff-ST map: the mean of "
        f"{draws_in_words(cfg['n_samples'], cfg.get('sampler', 'ddim'), cfg['sample_steps'])}"
        f"{', one per tile orientation' if cfg.get('turns') else ''}; "
        f"train {t['train_s']:.0f} s, predict {t['predict_s']:.0f} s.",
        "",
        "| method | RMSE ↓ | SSIM ↑ | PCC ↑ | PSNR ↑ |",
        "|---|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        lines.append(f"| {name} | {s['rmse']:.4f} | {s['ssim']:.4f} | {s['pcc']:.4f} | "
                     f"{s['psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def format_summary(report: dict) -> str:
    """A small plain-text table of the demo's mean metrics."""
    lines = [f"{'method':<12} {'RMSE':>8} {'SSIM':>8} {'PCC':>8} {'PSNR':>8}"]
    for name, s in report["summary"].items():
        lines.append(f"{name:<12} {s['rmse']:8.4f} {s['ssim']:8.4f} {s['pcc']:8.4f} "
                     f"{s['psnr']:8.2f}")
    return "\n".join(lines)

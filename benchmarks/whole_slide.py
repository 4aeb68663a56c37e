"""Whole-slide prediction benchmark: calibration, spot consistency and peak memory.

Three parts, each printed as a small table (and saved to ``<out>/whole_slide.json``):

1. ``sim``: a model is trained briefly on the left part of a simulated section; the held-out
   right strip is pooled by 5 and super-resolved with spot consistency ``off``, ``draws`` (the
   default) and ``steps``. Reported: RMSE/SSIM/PCC/PSNR of the mean map (as the demo scores
   them), the coverage of the [q05, q95] interval by the truth (nominal 0.90; with K samples
   even a perfectly calibrated sampler covers less: ``expected_cov``), the mean interval width,
   the largest relative pooling error, and bicubic interpolation (raw and + C) for reference.
   The gallery and HTML report of the ``draws`` result go to ``<out>/report_sim_holdout``.
2. ``her2st`` (skipped when ``../shared/data/her2st`` is absent): a spots-only model trained on
   C2-C5 (measured spots as HR, pooled 2x as LR) is tested on C6 pooled 2x against its measured
   spots (same table), then applied to the whole measured C6 section one scale finer (200 µm ->
   100 µm): ``<out>/her2st_C6_x2.h5ad`` and ``<out>/report_her2st_C6``.
3. ``memory``: peak resident memory of ``diffst.api.predict`` with the default-size model, each
   run in a fresh process, on a whole 2 mm x 2 mm simulated tissue at factor 10 (tile batches of
   1 and 8) and on the whole HER2ST section C6 with a model trained on C6's own spots.

The defaults are small (a reduced model trained 150 steps) so the script finishes in about
10 minutes on 2 CPU cores; the numbers then show the mechanics, not a converged model. Usage::

    python benchmarks/whole_slide.py --out bench_whole_slide              # all parts
    python benchmarks/whole_slide.py --parts sim --train-steps 600        # a better model
    python benchmarks/whole_slide.py --quick --out /tmp/ws                # smoke test
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HER2ST = ROOT.parent / "shared" / "data" / "her2st"


@dataclass
class Settings:
    """Benchmark knobs (see ``--help``)."""

    out: Path
    train_steps: int = 150
    n_samples: int = 8
    sample_steps: int = 10
    sim_size_um: float = 1200.0
    sim_genes: int = 12
    her2st_genes: int = 16
    memory_steps: int = 3
    threads: int = 2


def small_model_config(**overrides):
    """A reduced Diff-ST (about 4x cheaper than the default) for quick CPU benchmarks."""
    from diffst.model.config import DiffSTConfig

    base = dict(channels=16, channel_mults=(1, 2, 2), time_dim=32, cond_channels=16,
                n_tiles=16, attn_dim=32, attn_heads=2, graph_dim=8)
    base.update(overrides)
    return DiffSTConfig(**base)


def interval_coverage(truth: np.ndarray, q05: np.ndarray, q95: np.ndarray,
                      mask: np.ndarray) -> float:
    """Fraction of (gene, tissue cell) values of ``truth`` inside ``[q05, q95]``."""
    t, lo, hi = truth[:, mask], q05[:, mask], q95[:, mask]
    return float(((t >= lo - 1e-6) & (t <= hi + 1e-6)).mean())


def expected_coverage(k: int, trials: int = 200_000, seed: int = 0) -> float:
    """Coverage of the interpolated 5%-95% interval of K draws for a truth drawn from the same
    continuous distribution (what perfect calibration gives with K samples)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((trials, k + 1))
    lo, hi = np.quantile(x[:, :k], [0.05, 0.95], axis=1)
    return float(((x[:, k] >= lo) & (x[:, k] <= hi)).mean())


def score(truth, result, lr, factor: int) -> dict[str, float]:
    """Accuracy of the mean map plus interval coverage/width and the pooling error."""
    from diffst.consistency import max_relative_error
    from diffst.metrics import evaluate, summarize

    h, w = truth.shape
    mask = truth.mask
    crop = {k: v[:, :h, :w] for k, v in result.layers().items()}
    s = summarize(evaluate(truth.expr, crop["mean"], mask, truth.genes))
    return {
        "rmse": s["rmse"], "ssim": s["ssim"], "pcc": s["pcc"], "psnr": s["psnr"],
        "coverage90": interval_coverage(truth.expr, crop["q05"], crop["q95"], mask),
        "width90": float((crop["q95"] - crop["q05"])[:, mask].mean()),
        "pool_err": max_relative_error(result.mean, lr.expr, result.mask, factor),
    }


def bicubic_row(truth, lr, factor: int, consistent: bool = False) -> dict[str, float]:
    """Accuracy of bicubic interpolation of the same LR map (no intervals: NaN coverage);
    ``consistent``: after the same spot-consistency step Diff-ST's ``draws`` mode takes."""
    from diffst.baselines.interpolation import bicubic
    from diffst.consistency import max_relative_error, redistribute_np
    from diffst.data.lr import hr_mask_from_lr
    from diffst.metrics import evaluate, summarize

    hr_shape = (lr.shape[0] * factor, lr.shape[1] * factor)
    tissue = hr_mask_from_lr(lr.mask, factor)  # what a user has: the LR mask
    pred = bicubic(lr, factor, hr_shape) * tissue
    if consistent:
        pred = redistribute_np(pred, lr.expr, tissue, factor)
    h, w = truth.shape
    s = summarize(evaluate(truth.expr, pred[:, :h, :w], truth.mask, truth.genes))
    return {"rmse": s["rmse"], "ssim": s["ssim"], "pcc": s["pcc"], "psnr": s["psnr"],
            "coverage90": float("nan"), "width90": float("nan"),
            "pool_err": max_relative_error(pred, lr.expr, tissue, factor),
            "time_s": float("nan")}


def train(samples, genes, factor: int, steps: int, out: Path, spots_only: bool = False,
          work_um_per_px: float = 2.0, model_config=None) -> Path:
    """Train briefly (default: the reduced model) and export the model to ``out``."""
    from diffst.train import TrainConfig, Trainer

    tc = TrainConfig(steps=steps, batch_size=4, lr=1e-3, ema_decay=0.99, patch=8 * factor,
                     work_um_per_px=work_um_per_px, seed=0, checkpoint_every=max(steps, 1))
    trainer = Trainer(samples, genes, factor, model_config or small_model_config(), tc,
                      spots_only=spots_only)
    trainer.fit(progress=False)
    return trainer.export_model(out)


def calibration_table(name: str, model: Path, truth, cfg: Settings) -> tuple[dict, dict]:
    """Super-resolve the pooled ``truth`` with each consistency mode and score it; returns the
    table rows and the results by mode."""
    from diffst.data.lr import simulate_lr
    from diffst.infer import load_model, super_resolve

    lm = load_model(model)
    lr = simulate_lr(truth, lm.factor)
    rows, results = {}, {}
    for mode in ("off", "draws", "steps"):
        t0 = time.perf_counter()
        res = super_resolve(lm, lr, steps=cfg.sample_steps, n_samples=cfg.n_samples,
                            consistency=mode, progress=False)  # HR mask from the LR mask
        rows[mode] = {**score(truth, res, lr, lm.factor), "time_s": time.perf_counter() - t0}
        results[mode] = res
    rows["bicubic"] = bicubic_row(truth, lr, lm.factor)
    rows["bicubic+C"] = bicubic_row(truth, lr, lm.factor, consistent=True)
    print_table(f"{name}: consistency vs accuracy and calibration (K={cfg.n_samples}, "
                f"{cfg.sample_steps} DDIM steps; expected_cov with perfect calibration "
                f"{expected_coverage(cfg.n_samples):.3f}, nominal 0.900)", rows)
    return rows, results


def print_table(title: str, rows: dict[str, dict]) -> None:
    """Print ``rows`` (name -> metrics) as a fixed-width table."""
    keys = list(next(iter(rows.values())))
    print(f"\n{title}")
    print(f"{'':<8}" + "".join(f"{k:>11}" for k in keys))
    for name, row in rows.items():
        print(f"{name:<8}" + "".join(f"{row[k]:>11.4g}" for k in keys))


# ---------------------------------------------------------------------------- memory (child)
def measure_predict(spec: dict) -> dict:
    """Run ``diffst.api.predict`` in a fresh process; return its peak RSS and timings."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(spec: dict) -> None:
    import torch

    torch.set_num_threads(int(spec["threads"]))
    from diffst.api import predict
    from diffst.data.sample import load_npz
    from diffst.io import read_her2st

    rss_imports = _max_rss_mb()
    if spec["kind"] == "her2st":
        sample = read_her2st(spec["root"], spec["section"])
    else:
        sample = load_npz(spec["path"])
    rss_before = _max_rss_mb()
    t0 = time.perf_counter()
    res = predict(sample, spec["model"], spec["out"], pool=spec["pool"],
                  n_samples=spec["n_samples"], steps=spec["steps"], batch_size=spec["batch"],
                  report_dir=spec["report"], progress=False)
    print(json.dumps({
        "peak_rss_mb": _max_rss_mb(), "rss_before_predict_mb": rss_before,
        "rss_imports_mb": rss_imports,
        "predict_s": time.perf_counter() - t0, "tiles": res.meta["n_tiles"],
        "hr_raster": list(res.mask.shape), "genes": len(res.genes),
        "pool_err": res.meta["consistency_max_rel_err"],
    }))


def _max_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    ``VmHWM`` (Linux) is reset by ``exec``; ``ru_maxrss`` is not (a child started from a large
    parent would report the parent's peak), so it is only the fallback.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------- parts
def simulated_part(cfg: Settings, report: dict) -> None:
    from diffst.data.lr import simulate_lr
    from diffst.data.simulate import simulate_tissue
    from diffst.demo import split_holdout
    from diffst.report import write_report

    t0 = time.perf_counter()
    tissue = simulate_tissue(seed=0, size_um=cfg.sim_size_um, cell_um=8.0, n_genes=cfg.sim_genes)
    train_part, test_part = split_holdout(tissue, 0.3, 5)
    model = train([train_part], tissue.genes, 5, cfg.train_steps, cfg.out / "sim_x5.pt")
    report["sim_train_s"] = time.perf_counter() - t0
    rows, results = calibration_table("simulated tissue, x5, held-out strip", model,
                                      test_part, cfg)
    report["simulated"] = rows
    write_report(results["draws"], simulate_lr(test_part, 5), cfg.out / "report_sim_holdout",
                 settings={"model": str(model), "note": "held-out strip, pooled x5"},
                 genes=test_part.top_genes(6))


def her2st_part(cfg: Settings, report: dict) -> None:
    from diffst.api import predict, shared_top_genes
    from diffst.io import read_her2st

    t0 = time.perf_counter()
    train_secs = [read_her2st(HER2ST, s) for s in ("C2", "C3", "C4", "C5")]
    genes = shared_top_genes(train_secs, cfg.her2st_genes)
    model = train(train_secs, genes, 2, cfg.train_steps, cfg.out / "her2st_x2.pt",
                  spots_only=True)
    report["her2st_train_s"] = time.perf_counter() - t0
    section = read_her2st(HER2ST, "C6")
    rows, _ = calibration_table("HER2ST C6 pooled 2x (train C2-C5)", model,
                                section.select_genes(genes), cfg)
    report["her2st"] = rows
    t0 = time.perf_counter()  # the whole section one scale finer: 200 µm spots -> 100 µm
    predict(section, model, cfg.out / "her2st_C6_x2.h5ad", n_samples=cfg.n_samples,
            steps=cfg.sample_steps, report_dir=cfg.out / "report_her2st_C6", progress=False)
    report["her2st_C6_predict_s"] = time.perf_counter() - t0


def memory_part(cfg: Settings, report: dict) -> None:
    """Peak RSS of whole-slide predictions with the default-size model (trained 2 steps: the
    weights do not change the memory), each in a fresh process."""
    from diffst.api import shared_top_genes
    from diffst.data.simulate import simulate_tissue
    from diffst.io import read_her2st
    from diffst.model.config import DiffSTConfig

    rows = {}
    tissue = simulate_tissue(seed=1, size_um=2000.0, cell_um=8.0, n_genes=cfg.sim_genes)
    tissue.save_npz(cfg.out / "sim_2mm.npz")
    model = train([tissue], tissue.genes, 10, 2, cfg.out / "mem_sim_x10.pt",
                  model_config=DiffSTConfig())
    common = dict(threads=cfg.threads, n_samples=cfg.n_samples, steps=cfg.memory_steps)
    sim = dict(common, kind="npz", path=str(cfg.out / "sim_2mm.npz"), model=str(model),
               pool=True, out=str(cfg.out / "mem_sim_2mm_x10.h5ad"))
    for batch in (1, 8):
        rows[f"sim_2mm_x10_b{batch}"] = measure_predict(dict(
            sim, batch=batch, report=str(cfg.out / "mem_report_sim") if batch == 8 else None))
    if HER2ST.exists():  # "train on my own slide": spots-only model of C6, applied to C6
        section = read_her2st(HER2ST, "C6")
        model = train([section], shared_top_genes([section], 20), 2, 2,
                      cfg.out / "mem_her2st_C6_own.pt", spots_only=True,
                      model_config=DiffSTConfig())
        rows["her2st_C6_100um_b8"] = measure_predict(dict(
            common, batch=8, kind="her2st", root=str(HER2ST), section="C6", model=str(model),
            pool=False, out=str(cfg.out / "mem_her2st_C6.h5ad"),
            report=str(cfg.out / "mem_report_her2st")))
    print(f"\nPeak RSS of a whole-slide `predict` with the default-size model (fresh process, "
          f"K={cfg.n_samples}, {cfg.memory_steps} sampler steps, .h5ad written; b8 runs also "
          "write the report)")
    for name, r in rows.items():
        print(f"{name:<20} raster {r['hr_raster'][0]}x{r['hr_raster'][1]}, {r['genes']} genes, "
              f"{r['tiles']} tiles: peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(imports {r['rss_imports_mb']:.0f} MB, with data and model "
              f"{r['rss_before_predict_mb']:.0f} MB), {r['predict_s']:.1f} s, "
              f"pooling error {r['pool_err']:.1e}")
    report["memory"] = rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_whole_slide", type=Path)
    p.add_argument("--train-steps", type=int, default=150)
    p.add_argument("--samples", type=int, default=8, help="K samples per tile")
    p.add_argument("--sample-steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: DIFFST_THREADS, else usable cores - 1)")
    p.add_argument("--parts", default="sim,her2st,memory",
                   help="comma-separated parts to run: sim, her2st, memory")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test settings")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        _child(json.loads(a.child))
        return {}
    from diffst.threads import apply_threads

    a.threads = apply_threads(a.threads)
    parts = {x.strip() for x in a.parts.split(",") if x.strip()}
    unknown = parts - {"sim", "her2st", "memory"}
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}")
    cfg = Settings(out=a.out, train_steps=a.train_steps, n_samples=a.samples,
                   sample_steps=a.sample_steps, threads=a.threads)
    if a.quick:
        cfg.train_steps, cfg.sample_steps, cfg.n_samples = 10, 3, 4
        cfg.sim_size_um, cfg.sim_genes, cfg.her2st_genes, cfg.memory_steps = 800.0, 6, 6, 1
    cfg.out.mkdir(parents=True, exist_ok=True)
    # settings without machine paths: the output folder by name only
    report: dict = {"settings": {k: (v.name if isinstance(v, Path) else str(v))
                                 for k, v in cfg.__dict__.items()}}
    t0 = time.perf_counter()
    if "sim" in parts:
        simulated_part(cfg, report)
    if "her2st" in parts and not HER2ST.exists():
        print(f"\nHER2ST skipped ({HER2ST} absent)")
    elif "her2st" in parts:
        her2st_part(cfg, report)
    if "memory" in parts:
        memory_part(cfg, report)
    report["total_s"] = time.perf_counter() - t0
    print(f"\ntotal {report['total_s']:.0f} s; wrote {cfg.out / 'whole_slide.json'}")
    (cfg.out / "whole_slide.json").write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()

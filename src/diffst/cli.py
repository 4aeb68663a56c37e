"""The ``diffst`` command line: demo, simulate, inspect, train, predict, evaluate, benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from diffst.data.sample import SampleError


def _fail_nicely(fn):
    """Turn expected user errors into a one-line message and exit code 2."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (SampleError, FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group()
@click.version_option(package_name="diffst")
@click.option("--threads", type=int, default=None,
              help="CPU threads for PyTorch (default: PyTorch's choice).")
def main(threads: int | None) -> None:
    """Histology-guided super-resolution of spatial transcriptomics (Diff-ST)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", "out_dir", default="diffst_out", show_default=True,
              type=click.Path(file_okay=False), help="Output folder.")
@click.option("--steps", default=None, type=int, help="Training steps (default 800).")
@click.option("--seed", default=0, show_default=True)
@click.option("--quick", is_flag=True, help="A much shorter run (for smoke tests).")
@_fail_nicely
def demo(out_dir: str, steps: int | None, seed: int, quick: bool) -> None:
    """Simulate a tissue, train Diff-ST, super-resolve a held-out strip and score it."""
    from diffst.demo import DemoSettings, format_summary, run_demo

    settings = DemoSettings(seed=seed)
    if quick:
        settings.size_um, settings.steps, settings.n_genes, settings.n_samples = 800, 20, 8, 1
    if steps is not None:
        settings.steps = steps
    click.echo("diffst demo: simulated tissue (no real data), factor "
               f"{settings.factor}, {settings.n_genes} genes, {settings.steps} training steps")
    report = run_demo(out_dir, settings)
    click.echo("\nHeld-out strip, mean over genes (per-gene min-max of the truth):")
    click.echo(format_summary(report))
    click.echo(f"\nwrote {report['model']}, {report['metrics_csv']}, {report['figure']}, "
               f"{Path(out_dir) / 'summary.json'}")


# ---------------------------------------------------------------------------- data
@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.option("--size-um", default=1600.0, show_default=True, help="Side of the tissue in µm.")
@click.option("--cell-um", default=8.0, show_default=True, help="HR raster cell in µm.")
@click.option("--genes", "n_genes", default=20, show_default=True, help="Number of genes.")
@_fail_nicely
def simulate(out: str, seed: int, size_um: float, cell_um: float, n_genes: int) -> None:
    """Write a simulated tissue with HR truth (.npz or .h5ad)."""
    from diffst.data.simulate import simulate_tissue

    sample = simulate_tissue(seed=seed, size_um=size_um, cell_um=cell_um, n_genes=n_genes)
    _write_sample(sample, Path(out))
    click.echo(f"wrote {out}: {sample.n_genes} genes, raster {sample.shape}, "
               f"{sample.cell_um:g} µm cells (simulated)")


@main.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--overlay", type=click.Path(dir_okay=False), default=None,
              help="PNG of tissue spot centres over the image (default PATH-stem_overlay.png "
                   "in the current folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_fail_nicely
def inspect(path: str, overlay: str | None, as_json: bool) -> None:
    """Show what diffst finds at PATH: format, spots, genes, image size, µm/px."""
    from diffst.io import format_inspection, inspect_path

    overlay = overlay or f"{Path(path).name.split('.')[0]}_overlay.png"
    info = inspect_path(path, overlay_png=overlay)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_inspection(info))


# ---------------------------------------------------------------------------- train
@main.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--factor", required=True, type=int, help="Integer scale factor (e.g. 5 or 10).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Model file (.pt).")
@click.option("--genes", default=None, help="Comma-separated genes (default: top expressed).")
@click.option("--top-genes", default=25, show_default=True)
@click.option("--steps", default=2000, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--lr", "learning_rate", default=1e-3, show_default=True,
              help="AdamW learning rate (the paper uses 1e-4 for long GPU runs).")
@click.option("--patch", default=None, type=int, help="HR patch side in cells (default 8x factor).")
@click.option("--work-um-per-px", default=None, type=float,
              help="Image resolution the model works at (default: 8 px per HR cell).")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="Resumable checkpoint; training resumes from it when it exists.")
@click.option("--spots-only", is_flag=True,
              help="DATA has no HR truth: train LR/s -> LR by pooling it one level further.")
@click.option("--ablate", multiple=True,
              type=click.Choice(["disentangle", "modulation", "attention", "graph"]),
              help="Switch a Diff-ST part off (repeatable).")
@click.option("--prediction", default="sample", show_default=True,
              type=click.Choice(["sample", "epsilon", "v"]),
              help="What the denoiser predicts (the paper uses epsilon; see README).")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast (GPUs, CPUs with bf16 support).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--seed", default=0, show_default=True)
@_fail_nicely
def train(data, factor, out, genes, top_genes, steps, batch_size, learning_rate, patch,
          work_um_per_px, checkpoint, spots_only, ablate, prediction, bf16, device,
          seed) -> None:
    """Train Diff-ST on samples with HR truth (or on spots only with --spots-only)."""
    from diffst.api import model_config_for, train_model

    samples = [_read(p) for p in data]
    gene_list = genes.split(",") if genes else None
    path = train_model(
        samples, factor, out, genes=gene_list, top_genes=top_genes, steps=steps,
        batch_size=batch_size, lr=learning_rate, patch=patch, work_um_per_px=work_um_per_px,
        checkpoint=checkpoint, spots_only=spots_only, seed=seed,
        model_config=model_config_for(list(ablate), prediction=prediction), bf16=bf16,
        device=device,
    )
    click.echo(f"wrote {path}")


# ---------------------------------------------------------------------------- predict
@main.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--model", "model_path", required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Result: .h5ad (layers mean/std/q05/q95) or .npz (mean map).")
@click.option("--pool", is_flag=True,
              help="DATA is HR truth: pool it by the model's factor first (for evaluation).")
@click.option("--samples", "n_samples", default=8, show_default=True,
              help="Diffusion samples per tile (mean, std and quantiles).")
@click.option("--steps", default=20, show_default=True, help="Sampler steps.")
@click.option("--sampler", default="ddim", show_default=True,
              type=click.Choice(["ddim", "dpmpp", "ddpm"]))
@click.option("--batch-size", default=8, show_default=True, help="Tiles per batch.")
@click.option("--consistency", default="draws", show_default=True,
              type=click.Choice(["draws", "steps", "off"]),
              help="Make the output sum-pool back to the measured counts (draws: rescale each "
                   "draw within each measured cell; steps: project at every sampler step).")
@click.option("--no-consistency", is_flag=True, help="Same as --consistency off.")
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False),
              help="Also write a per-gene PNG gallery and report.html to this folder.")
@click.option("--report-genes", default=None, help="Comma-separated genes for the gallery.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Keep finished tiles beside OUT so an interrupted run continues.")
@click.option("--resume-dir", default=None, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--autocast", is_flag=True, help="bfloat16 autocast while sampling.")
@click.option("--seed", default=0, show_default=True)
@click.option("--eta", default=0.0, show_default=True,
              help="DDIM stochasticity (0: deterministic steps; 1: DDPM variance).")
@click.option("--calibration", default="auto", show_default=True,
              help="How q05/q95 are calibrated: auto (split-conformal on --calibrate-on, else "
                   "self-calibration for a spots-only model on spots of its size, else none), "
                   "self, none (raw sampler quantiles), or a saved calibration .json.")
@click.option("--calibrate-on", default=None, type=click.Path(exists=True),
              help="A sample with HR truth the model did not train on, for split-conformal "
                   "calibration of the intervals.")
@_fail_nicely
def predict(data, model_path, out, pool, n_samples, steps, sampler, batch_size, consistency,
            no_consistency, report_dir, report_genes, resume, resume_dir, device, autocast,
            seed, eta, calibration, calibrate_on) -> None:
    """Super-resolve DATA with a trained model (mean, std, 5%/95% quantile maps)."""
    from diffst.api import predict as api_predict

    result = api_predict(
        _read(data), model_path, out, pool=pool, n_samples=n_samples, steps=steps,
        sampler=sampler, batch_size=batch_size, seed=seed,
        consistency="off" if no_consistency else consistency, resume=resume,
        resume_dir=resume_dir, report_dir=report_dir,
        report_genes=report_genes.split(",") if report_genes else None, device=device,
        autocast=autocast, eta=eta, calibration=calibration,
        calibrate_on=_read(calibrate_on) if calibrate_on else None,
    )
    click.echo(f"wrote {out}: {len(result.genes)} genes on a {result.mean.shape[1]}x"
               f"{result.mean.shape[2]} raster of {result.cell_um:g} µm cells")
    from diffst.calibration import describe

    click.echo(f"intervals: {describe(result.meta['calibration'])}")
    if report_dir:
        click.echo(f"report: {Path(report_dir) / 'report.html'}")


# ---------------------------------------------------------------------------- evaluate
@main.command()
@click.option("--truth", required=True, type=click.Path(exists=True), help="HR truth sample.")
@click.option("--pred", "pred_path", required=True, type=click.Path(exists=True),
              help="Prediction written by `diffst predict`.")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Per-gene metrics CSV.")
@_fail_nicely
def evaluate(truth: str, pred_path: str, out: str | None) -> None:
    """Score a prediction against HR truth: RMSE, SSIM, PCC, PSNR per gene."""
    from diffst.api import evaluate as api_evaluate

    table, summary = api_evaluate(_read(truth), _read(pred_path))
    if out:
        table.to_csv(out)
    for key in ("rmse", "ssim", "pcc", "psnr"):
        click.echo(f"{key:>5}: {summary[key]:.4f}")
    click.echo(f"({int(summary['n_valid'])} of {int(summary['n_genes'])} genes scored)")


# ---------------------------------------------------------------------------- benchmark
@main.command()
@click.option("--dataset", default="simulated", show_default=True,
              help="'simulated', 'her2st' or comma-separated sample paths.")
@click.option("--factors", default=None,
              help="Comma-separated scale factors (default 5,10; 2,3 for spot data).")
@click.option("--split", default="holdout", show_default=True,
              help="holdout | loo (leave-one-section-out) | seeds (simulated) | a section.")
@click.option("--preset", default="default", show_default=True,
              type=click.Choice(["quick", "default", "full"]))
@click.option("--out", "out_dir", default="benchmark_out", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--methods", default=None, help="Comma-separated subset of the methods.")
@click.option("--ablations/--no-ablations", default=True, show_default=True,
              help="Also train Diff-ST with each part switched off.")
@click.option("--steps", default=None, type=int, help="Override the preset's training steps.")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="HER2ST folder (default ../shared/data/her2st).")
@click.option("--seed", default=0, show_default=True)
@_fail_nicely
def benchmark(dataset, factors, split, preset, out_dir, methods, ablations, steps, data_root,
              seed) -> None:
    """Train and score Diff-ST and the baselines on held-out data; write tables and figures."""
    from diffst.benchmark import run_benchmark

    summary = run_benchmark(
        dataset, [int(f) for f in factors.split(",")] if factors else None, split, preset,
        out_dir, methods=methods.split(",") if methods else None, ablations=ablations,
        seed=seed, data_root=data_root, overrides={"steps": steps} if steps else None,
    )
    click.echo(summary["table"])


# ---------------------------------------------------------------------------- helpers
def _read(path: str):
    from diffst.io import read_sample

    return read_sample(path)


def _write_sample(sample, path: Path) -> None:
    if path.suffix == ".h5ad":
        from diffst.io import write_anndata

        write_anndata(sample, path)
    elif path.suffix == ".npz":
        sample.save_npz(path)
    else:
        raise click.ClickException(f"{path}: use a .npz or .h5ad file name")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

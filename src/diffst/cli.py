"""The ``diffst`` command line: demo, simulate, inspect, train, predict, evaluate, benchmark."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click

from diffst.cli_options import check_ranges, check_writable, reader_kwargs, reader_options
from diffst.config import (
    DEPTH_MIX,
    LR_SCHEDULES,
    PAPER_PARTS,
    PATCH_PER_FACTOR,
    PRESET_NAMES,
    SELF_TUNE_LR,
    TOP_GENES,
    SchedulerConfig,
    TrainConfig,
    default,
    parse_mix,
)
from diffst.data.sample import SampleError
from diffst.model.config import PREDICTIONS, SAMPLERS, parse_model_setting


def _fail_nicely(fn):
    """Turn expected user errors into a one-line message and exit code 2; Ctrl-C outside the
    parts that keep their work (training steps, tile batches) says that nothing was kept."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (SampleError, OSError, EOFError, ValueError) as exc:  # OSError: files, permissions
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            click.echo("\ninterrupted before any work was kept (reading or preparing the "
                       "data); rerun the same command to start again", err=True)
            sys.exit(130)

    return wrapper


DATA_FORMATS = (
    "a Space Ranger 'outs' folder (Visium, v1/v2+/parquet), Visium HD binned outputs, a Xenium "
    "bundle, legacy ST files (SECTION.counts.tsv.gz with SECTION.spots.tsv and SECTION.HE.jpg "
    "beside it, e.g. HER2ST), an iStar folder, an AnnData .h5ad, or a diffst .npz"
)
"""What a DATA argument may be (shown in the help of every verb that reads data)."""

THREADS_HELP = (
    "CPU threads for PyTorch. Default: the DIFFST_THREADS environment variable, else the "
    "usable cores minus one (at most 8): all cores on a shared machine can make every step "
    "several times slower (see README, 'Threads')."
)


def _set_threads(ctx: click.Context, _param: click.Parameter, value: int | None) -> int | None:
    """Apply ``--threads`` (or DIFFST_THREADS / the default when ``value`` is None)."""
    from diffst.threads import apply_threads

    try:
        apply_threads(value)
    except ValueError as exc:
        raise click.UsageError(str(exc), ctx=ctx) from exc
    return value


def _verb_threads(_ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
    """A verb's ``--threads`` overrides the group's (applied only when given)."""
    if value is not None:
        from diffst.threads import apply_threads

        apply_threads(value)


threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, expose_value=False,
    callback=_verb_threads, help=THREADS_HELP,
)
"""``--threads`` on every verb (``diffst train ... --threads 1``)."""


def _model_settings(_ctx: click.Context, _param: click.Parameter,
                    value: tuple[str, ...]) -> dict:
    """``--model KEY=VALUE`` texts -> ``{key: typed value}`` (:func:`parse_model_setting`)."""
    try:
        return dict(parse_model_setting(text) for text in value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from None


def model_settings_option(help_text: str) -> Callable[[Callable], Callable]:
    """``--model KEY=VALUE`` (repeatable) as a dict ``model_settings``; keys are the fields of
    :class:`~diffst.model.config.DiffSTConfig`."""
    return click.option("--model", "model_settings", multiple=True, metavar="KEY=VALUE",
                        callback=_model_settings,
                        help=help_text + " Keys: the fields of diffst.model.config.DiffSTConfig.")


@click.group()
@click.version_option(package_name="diffst")
@click.option("--threads", type=click.IntRange(min=1), default=None, callback=_set_threads,
              expose_value=False, is_eager=True, help=THREADS_HELP)
def main() -> None:
    """Histology-guided super-resolution of spatial transcriptomics (Diff-ST).

    Every verb also takes --threads; `diffst --threads 1 VERB` and `diffst VERB --threads 1`
    are the same.
    """


# ---------------------------------------------------------------------------- demo
@main.command()
@click.option("--out", "out_dir", default="diffst_out", show_default=True,
              type=click.Path(file_okay=False), help="Output folder.")
@click.option("--steps", default=None, type=int,
              help="Training steps (default 800; 20 with --quick).")
@click.option("--seed", default=0, show_default=True, help="Seed of the tissue and training.")
@click.option("--quick", is_flag=True,
              help="A much shorter run (0.8 mm tissue, 8 genes, 20 steps) to check the install; "
                   "its numbers mean nothing.")
@check_ranges(steps=1)
@check_writable(folders=("out_dir",))
@threads_option
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
               f"{settings.factor}, {settings.n_genes} genes, {settings.steps} training steps, "
               f"{_threads_text()}")
    report = run_demo(out_dir, settings)
    click.echo("\nHeld-out strip, mean over genes (per-gene min-max of the truth):")
    click.echo(format_summary(report))
    click.echo(f"\nwrote {', '.join(report['files'])}")


# ---------------------------------------------------------------------------- data
@main.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of the simulated tissue.")
@click.option("--size-um", default=1600.0, show_default=True, help="Side of the tissue in µm.")
@click.option("--cell-um", default=8.0, show_default=True, help="HR raster cell in µm.")
@click.option("--genes", "n_genes", default=20, show_default=True, help="Number of genes.")
@check_ranges(positive=("size_um", "cell_um"), n_genes=1)
@check_writable(files=("out",))
@threads_option
@_fail_nicely
def simulate(out: str, seed: int, size_um: float, cell_um: float, n_genes: int) -> None:
    """Write a simulated tissue with HR truth to OUT (.npz or .h5ad)."""
    from diffst.data.simulate import simulate_tissue

    sample = simulate_tissue(seed=seed, size_um=size_um, cell_um=cell_um, n_genes=n_genes)
    _write_sample(sample, Path(out))
    click.echo(f"wrote {out}: {sample.n_genes} genes, raster {sample.shape}, "
               f"{sample.cell_um:g} µm cells (simulated)")


@main.command(help="Show what diffst finds at PATH: format, spots, genes, image size, µm/px. "
                   f"PATH may be {DATA_FORMATS}.")
@click.argument("path", type=click.Path(exists=True))
@click.option("--overlay", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG of the tissue spot centres over the image to this file "
                   "(nothing is written without it).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@reader_options
@check_writable(files=("overlay",))
@threads_option
@_fail_nicely
def inspect(path: str, overlay: str | None, as_json: bool) -> None:
    from diffst.io import format_inspection, inspect_path

    info = inspect_path(path, overlay_png=overlay, **reader_kwargs(path))
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_inspection(info))


# ---------------------------------------------------------------------------- train
TRAIN_HELP = f"""Train Diff-ST on DATA and write the model file --out.

DATA (one or more) may be {DATA_FORMATS}.

With HR truth (Xenium cells, Visium HD 8 µm bins, a simulated .npz) the model learns HR from
HR pooled by --factor. Spot data (cells of 50 µm or more: Visium, legacy ST) has no finer truth:
diffst then trains spots-only (training pairs pool the spots once more) and says so;
--spots-only makes that explicit, --hr-truth overrides the detection.

Before training it prints the plan (genes, factor, patch, image resolution, device, threads) and,
after the first steps, a time estimate. Ctrl-C saves the training state and prints the command
that resumes.
"""


@main.command(help=TRAIN_HELP)
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--factor", required=True, type=int,
              help="Integer scale factor: 2 or 3 for 100-200 µm spots (Visium, legacy ST), "
                   "5 to 10 for 8 µm bins or cells (Visium HD, Xenium).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Model file to write (.pt).")
@click.option("--genes", default=None,
              help="Comma-separated genes to model (default: the --top-genes most expressed "
                   "genes shared by all DATA).")
@click.option("--top-genes", default=TOP_GENES, show_default=True, type=int,
              help="How many of the most expressed genes to model when --genes is not given.")
@click.option("--steps", default=default(TrainConfig, "steps"), show_default=True, type=int,
              help="Training steps (optimiser updates). The time per step is printed after "
                   "the first steps.")
@click.option("--batch-size", default=default(TrainConfig, "batch_size"), show_default=True,
              type=int, help="Patches per training step.")
@click.option("--lr", "learning_rate", default=default(TrainConfig, "lr"), show_default=True,
              type=float,
              help="AdamW learning rate (1e-4 as in the Diff-ST release; short CPU runs such as "
                   "the benchmark presets and the demo train faster with 1e-3).")
@click.option("--grid-shifts", default=default(TrainConfig, "grid_shifts"), show_default=True,
              type=click.IntRange(min=1),
              help="Pool each training section on this many grids per axis (n x n shifted "
                   "copies, at most the factor): more distinct training pairs from the same "
                   "data.")
@click.option("--patch", default=None, type=int,
              help=f"Training patch side in HR cells, a multiple of --factor (default "
                   f"{PATCH_PER_FACTOR} x factor; with spots-only training the HR cells are the "
                   "spots).")
@click.option("--work-um-per-px", default=None, type=float,
              help="Image resolution the model works at, in µm per pixel (default: 8 px per HR "
                   "cell, but never coarser than 2 µm/px nor finer than the image; 200 µm spots "
                   "thus get 100 px per spot). Coarser is faster: e.g. 8 for spot data.")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
              help="Resumable training state; training resumes from it when it exists "
                   "(Ctrl-C writes one to OUT.ckpt when this is not given).")
@click.option("--spots-only", is_flag=True,
              help="DATA has no HR truth: train on spots pooled by --factor (spot x factor -> "
                   "spot), then apply spot -> spot / factor. Chosen automatically for cells of "
                   "50 µm or more.")
@click.option("--hr-truth", is_flag=True,
              help="DATA is HR truth even though its cells are 50 µm or larger (switches the "
                   "spot detection off).")
@click.option("--ablate", multiple=True,
              type=click.Choice(["disentangle", "modulation", "attention", "graph"]),
              help="Switch a Diff-ST part off (repeatable).")
@model_settings_option("Change one architecture setting, e.g. --model upsampler=istar_like "
                       "(README 'The model'); repeat for several.")
@click.option("--prediction", default=default(SchedulerConfig, "prediction"), show_default=True,
              type=click.Choice(list(PREDICTIONS)),
              help="What the denoiser predicts (the paper uses epsilon; see README).")
@click.option("--paper-variant", "paper_variants", multiple=True,
              type=click.Choice(list(PAPER_PARTS)),
              help="Use the Diff-ST paper's variant of a part (repeatable; README 'Where diffst "
                   "differs from the paper'). 'loss' means noise prediction with learned "
                   "variance: sample such a model with --sampler ddim.")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast (GPUs, CPUs with bf16 support).")
@click.option("--log1p/--no-log1p", default=default(TrainConfig, "log1p"), show_default=True,
              help="Learn log1p counts instead of counts (min-max scaled per gene either way).")
@click.option("--disentangle-weight", default=default(TrainConfig, "disentangle_weight"),
              show_default=True, type=click.FloatRange(min=0.0),
              help="Weight of the disentangling loss (shared vs distinct features; see README "
                   "for the validation that chose the default).")
@click.option("--device", default=default(TrainConfig, "device"), show_default=True,
              help="auto, cpu or cuda[:N].")
@click.option("--seed", default=default(TrainConfig, "seed"), show_default=True,
              help="Seed of the model initialisation and the patch sampling.")
@click.option("--preset", default=None, type=click.Choice(list(PRESET_NAMES)),
              help="Train with a benchmark preset's settings for this kind of data (spots or "
                   "cells) at --factor: training length, lr, EMA, patch, image resolution and "
                   "architecture; the model file also keeps the preset's sampling settings "
                   "(sampler, samples, turns, self-tuning, iStar-like mix), which `diffst "
                   "predict` then uses. Flags given here override the preset's values.")
@reader_options
@check_ranges(positive=("learning_rate", "work_um_per_px"), factor=2, top_genes=1, steps=1,
              batch_size=1, patch=1)
@check_writable(files=("out", "checkpoint"))
@threads_option
@_fail_nicely
def train(data, factor, out, genes, top_genes, steps, batch_size, learning_rate, grid_shifts,
          patch, work_um_per_px, checkpoint, spots_only, hr_truth, ablate, model_settings,
          prediction, paper_variants, bf16, log1p, disentangle_weight, device, seed,
          preset) -> None:
    from diffst.api import TrainingInterrupted, model_config_for, spot_data_message, train_model

    if spots_only and hr_truth:
        raise click.UsageError("--spots-only and --hr-truth contradict each other; pass one")
    if patch is not None and (patch < factor or patch % factor):
        raise click.BadParameter(f"{patch} is not a multiple of --factor {factor} "
                                 f"(e.g. {PATCH_PER_FACTOR * factor})", param_hint="--patch")
    if grid_shifts > factor:
        raise click.BadParameter(f"{grid_shifts} grids per axis, more than --factor {factor}",
                                 param_hint="--grid-shifts")
    samples = [_read(p) for p in data]
    if not spots_only and not hr_truth:
        note = spot_data_message(samples, factor)
        if note:
            click.echo(note)
            spots_only = True
    gene_list = genes.split(",") if genes else None
    settings = dict(steps=steps, batch_size=batch_size, lr=learning_rate,
                    grid_shifts=grid_shifts, patch=patch,
                    work_um_per_px=work_um_per_px, paper_variants=paper_variants, log1p=log1p,
                    disentangle_weight=disentangle_weight)
    if preset is not None:
        settings, model_settings = _with_preset(preset, samples, factor, spots_only, settings,
                                                model_settings)
    try:
        path = train_model(
            samples, factor, out, genes=gene_list, top_genes=top_genes, checkpoint=checkpoint,
            spots_only=spots_only, seed=seed,
            model_config=model_config_for(list(ablate), **model_settings),
            prediction=prediction, bf16=bf16, device=device, log=_log,
            save_on_interrupt=True, **settings,
        )
    except TrainingInterrupted as exc:
        again = _command_line()
        if checkpoint is None:
            again += f" --checkpoint {exc.checkpoint}"
        click.echo(f"\n{exc}\nresume with: {again}", err=True)
        sys.exit(130)
    click.echo(f"wrote {path}")


TRAIN_PARAMETERS = {"lr": "learning_rate"}
"""``train_model`` keywords whose `diffst train` parameter has another name (for --preset)."""


def _given(name: str) -> bool:
    """Whether the current command's parameter ``name`` was set by the user (not a default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def _with_preset(name: str, samples: list, factor: int, spots_only: bool, settings: dict,
                 model_settings: dict) -> tuple[dict, dict]:
    """``train_model`` keywords and architecture settings with the preset ``name`` applied
    where the user gave no flag, plus ``predict_settings``; prints what the preset set."""
    from diffst.benchmark.presets import data_size_note, small_data_note, training_settings

    preset, chosen = training_settings(name, samples, factor, spots_only)
    out = {**chosen, **{key: value for key, value in settings.items()
                        if _given(TRAIN_PARAMETERS.get(key, key))}}
    model = {**preset.model, **model_settings}
    note = small_data_note(preset, samples, factor) if out["patch"] == chosen["patch"] else ""
    sized, size_note = data_size_note(preset, samples)
    noted: list[str] = []

    def why(key: str) -> str:
        """The data-size note where the preset's small- or large-data rule changed ``key``
        (in full the first time, then by reference)."""
        changed = key in sized and sized[key] != getattr(preset, key)
        if not changed or _given(key):
            return ""
        noted.append(key)
        return f" ({size_note})" if len(noted) == 1 else " (the same data-size rule)"

    click.echo(f"preset {name} ({preset.profile} data, x{factor}): {out['steps']} steps"
               f"{why('steps')} of "
               f"batch {out['batch_size']}{why('batch_size')} at lr {out['lr']:g}, "
               f"EMA {out['ema_decay']:g}, patch "
               f"{out['patch']} cells" + (f" ({note})" if note else "")
               + f", image at {out['work_um_per_px']:g} µm/px"
               + (f", {out['grid_shifts']} x {out['grid_shifts']} pooling grids"
                  if out["grid_shifts"] != 1 else "")
               + (f", {out['t_focus']:.0%} of examples at the last noise step{why('t_focus')}"
                  if out["t_focus"] else "")
               + (f", EMA warm-up {out['ema_warmup']:g}"
                  if out["ema_warmup"] != default(TrainConfig, "ema_warmup") else "")
               + "".join(f", {k}={v}" for k, v in model.items())
               + (f", paper variants {', '.join(out['paper_variants'])}"
                  if out["paper_variants"] else ""))
    click.echo(f"  diffst predict will use: {describe_predict_settings(out['predict_settings'])}")
    return out, model


PREDICT_FLAGS = {"sampler": "--sampler", "n_samples": "--samples", "steps": "--steps",
                 "turns": "--turns", "self_tune": "--self-tune",
                 "self_tune_lr": "--self-tune-lr", "istar_mix": "--istar-mix",
                 "match_depth": "--match-depth"}
"""``diffst predict`` flag of each key of :data:`diffst.config.PREDICT_SETTING_KEYS`."""


def describe_predict_settings(settings: dict) -> str:
    """``settings`` (keys of PREDICT_SETTING_KEYS) as the `diffst predict` flags that set them."""
    parts = []
    for key, value in settings.items():
        flag = PREDICT_FLAGS[key]
        if isinstance(value, bool):
            parts.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


# ---------------------------------------------------------------------------- predict
PREDICT_HELP = f"""Super-resolve DATA with a trained model (mean, std, 5%/95% quantile maps).

DATA may be {DATA_FORMATS}. Its genes must include the model's, and its cells must be the
size the model expects (e.g. the measured spots for a spots-only model).

The slide is cut into overlapping tiles; each tile is denoised --steps times for each of
--samples draws, so the progress bar counts tile-steps (tiles x sampler steps). Finished
batches of tiles are kept in OUT.tiles: a rerun of the same command resumes and says how many
were done; Ctrl-C keeps them.

A model trained with `diffst train --preset` keeps that preset's sampling settings (--sampler,
--samples, --steps, --turns, --self-tune, --self-tune-lr, --istar-mix, --match-depth): they
replace the defaults shown below, and the flags given here replace them.
"""


@main.command(help=PREDICT_HELP)
@click.argument("data", type=click.Path(exists=True))
@click.option("--model", "model_path", required=True, type=click.Path(exists=True),
              help="Model file written by `diffst train` (.pt).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Result: .h5ad (layers mean/std/q05/q95) or .npz (mean map).")
@click.option("--pool", is_flag=True,
              help="DATA is HR truth: pool it by the model's factor first (for evaluation).")
@click.option("--samples", "n_samples", default=8, show_default=True, type=int,
              help="Diffusion samples per tile (mean, std and quantiles; 2 or more for std).")
@click.option("--steps", default=20, show_default=True, type=int,
              help="Sampler steps per sample.")
@click.option("--sampler", default="ddim", show_default=True,
              type=click.Choice(list(SAMPLERS)),
              help="Diffusion sampler (mean: one-step posterior mean; its std and quantiles "
                   "come from the start noise only).")
@click.option("--batch-size", default=8, show_default=True, type=int,
              help="Tiles per batch (memory grows with batch size x samples; also fixes the "
                   "noise seeds, so a resumed run must use the same value).")
@click.option("--consistency", default="draws", show_default=True,
              type=click.Choice(["draws", "steps", "off"]),
              help="Make the output sum-pool back to the measured counts (draws: rescale each "
                   "draw within each measured cell; steps: project at every sampler step).")
@click.option("--no-consistency", is_flag=True, help="Same as --consistency off.")
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False),
              help="Also write a per-gene PNG gallery and report.html to this folder.")
@click.option("--report-genes", default=None, help="Comma-separated genes for the gallery.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Keep finished tile batches beside OUT so an interrupted run continues.")
@click.option("--resume-dir", default=None, type=click.Path(file_okay=False),
              help="Folder for the finished tile batches (default OUT.tiles; removed once OUT "
                   "is written).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--autocast", is_flag=True, help="bfloat16 autocast while sampling.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sampler noise.")
@click.option("--eta", default=0.0, show_default=True,
              help="DDIM stochasticity (0: deterministic steps; 1: DDPM variance).")
@click.option("--match-depth/--no-match-depth", default=False,
              help="Scale the counts to the training data's depth (counts per µm² of tissue, "
                   "the training sections pooled by the factor) while sampling, and the maps "
                   "back: for a slide sequenced much shallower or deeper than the training data.")
@click.option("--turns/--no-turns", default=False,
              help="Sample k sees each tile rotated/mirrored (k mod 8) and is turned back "
                   "(test-time augmentation; with --sampler mean the most accurate mean map).")
@click.option("--calibration", default="auto", show_default=True,
              help="How q05/q95 are calibrated: auto (split-conformal on --calibrate-on, else "
                   "self-calibration for a spots-only model on spots of its size, else none), "
                   "self, none (raw sampler quantiles), or a saved calibration .json.")
@click.option("--calibrate-on", default=None, type=click.Path(exists=True),
              help="A sample with HR truth the model did not train on, for split-conformal "
                   "calibration of the intervals.")
@click.option("--self-tune", default=0, show_default=True, type=click.IntRange(min=0),
              help="First fine-tune the model this many steps on DATA itself (its spots "
                   "pooled once more -> its spots; no finer truth needed). The model file is "
                   "not changed.")
@click.option("--self-tune-lr", default=SELF_TUNE_LR, show_default=True,
              type=click.FloatRange(min=0.0, min_open=True),
              help="Learning rate of --self-tune.")
@click.option("--istar-mix", default="0", show_default=True, callback=lambda c, p, v: _mix(v),
              help="Weight (0 to 1) of DATA's own iStar-like map mixed into the maps, or "
                   f"'{DEPTH_MIX}': max(0, 1 - 1/r) for a slide r times shallower than the "
                   "training data.")
@reader_options
@check_ranges(n_samples=1, steps=1, batch_size=1)
@check_writable(files=("out",), folders=("report_dir", "resume_dir"))
@threads_option
@_fail_nicely
def predict(data, model_path, out, pool, n_samples, steps, sampler, batch_size, consistency,
            no_consistency, report_dir, report_genes, resume, resume_dir, device, autocast,
            seed, eta, match_depth, turns, calibration, calibrate_on, self_tune,
            self_tune_lr, istar_mix) -> None:
    from diffst.api import predict as api_predict
    from diffst.api import recorded_predict_settings
    from diffst.tilestore import SamplingInterrupted

    given = dict(n_samples=n_samples, steps=steps, sampler=sampler, turns=turns,
                 self_tune=self_tune, self_tune_lr=self_tune_lr, istar_mix=istar_mix,
                 match_depth=match_depth)
    recorded = {key: value for key, value in recorded_predict_settings(model_path).items()
                if key in given and not _given(key)}
    if recorded:
        click.echo(f"sampling settings kept in the model (diffst train --preset): "
                   f"{describe_predict_settings(recorded)}")
        given.update(recorded)
    try:
        result = api_predict(
            _read(data), model_path, out, pool=pool, batch_size=batch_size, seed=seed,
            consistency="off" if no_consistency else consistency, resume=resume,
            resume_dir=resume_dir, report_dir=report_dir,
            report_genes=report_genes.split(",") if report_genes else None, device=device,
            autocast=autocast, eta=eta, calibration=calibration,
            calibrate_on=_read(calibrate_on) if calibrate_on else None, log=_log, **given,
        )
    except SamplingInterrupted as exc:
        click.echo(f"\n{exc}", err=True)
        if exc.folder is not None and exc.done > 0:
            click.echo(f"resume with: {_command_line()}", err=True)
        sys.exit(130)
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
@reader_options
@check_writable(files=("out",))
@threads_option
@_fail_nicely
def evaluate(truth: str, pred_path: str, out: str | None) -> None:
    """Score a prediction against HR truth: RMSE, SSIM, PCC, PSNR per gene."""
    from diffst.api import evaluate as api_evaluate

    table, summary = api_evaluate(_read(truth), _read(pred_path, options=False))
    if out:
        table.to_csv(out)
    for key in ("rmse", "ssim", "pcc", "psnr"):
        click.echo(f"{key:>5}: {summary[key]:.4f}")
    click.echo(f"({int(summary['n_valid'])} of {int(summary['n_genes'])} genes scored)")


# ---------------------------------------------------------------------------- benchmark
@main.command()
@click.option("--dataset", default="simulated", show_default=True,
              help="'simulated', 'her2st', 'xenium_crop' or comma-separated sample paths.")
@click.option("--data-root", default=None, type=click.Path(file_okay=False),
              help="Folder of a real dataset (required for her2st and xenium_crop), e.g. "
                   "../shared/data/her2st.")
@click.option("--factors", default=None,
              help="Comma-separated scale factors (default 5,10; 2,3 for spot data).")
@click.option("--split", default="holdout", show_default=True,
              help="holdout | loo (leave-one-section-out) | seeds (simulated) | a section.")
@click.option("--stage", default="test", show_default=True,
              type=click.Choice(["test", "validation"]),
              help="'validation' never touches the test sections: choose settings there.")
@click.option("--preset", default="default", show_default=True,
              type=click.Choice(list(PRESET_NAMES)),
              help="Training budget: quick (smoke test, minutes), short (the README's "
                   "tables on 2 CPU cores), default, full (longer training); paper: short's "
                   "budget with every part as the Diff-ST paper describes it.")
@click.option("--out", "out_dir", default="benchmark_out", show_default=True,
              type=click.Path(file_okay=False), help="Output folder (tables, figures, JSON).")
@click.option("--methods", default=None, help="Comma-separated subset of the methods.")
@click.option("--ablations/--no-ablations", default=True, show_default=True,
              help="Also train Diff-ST with each part switched off.")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Override the preset's training steps.")
@click.option("--seeds", default="0", show_default=True,
              help="Comma-separated training seeds; every fold is run once per seed.")
@click.option("--samples", "n_samples", default=None, type=click.IntRange(min=1),
              help="Override the preset's Diff-ST samples per tile (their mean is scored).")
@click.option("--match-depth", is_flag=True,
              help="Diff-ST samples with the input scaled to its training depth.")
@click.option("--log1p/--no-log1p", default=None,
              help="Override the count scaling Diff-ST and the regression learn (default: the "
                   "training default, no log1p).")
@click.option("--turns/--no-turns", default=None,
              help="Override whether Diff-ST's k-th sample sees each tile rotated/mirrored "
                   "(k mod 8) and turned back: test-time augmentation.")
@click.option("--disentangle-weight", default=None, type=click.FloatRange(min=0.0),
              help="Override the weight of Diff-ST's disentangling loss (default: the training "
                   f"default, {default(TrainConfig, 'disentangle_weight'):g}).")
@click.option("--sampler", default=None, type=click.Choice(list(SAMPLERS)),
              help="Override the preset's Diff-ST sampler (mean: one-step posterior mean).")
@click.option("--consistency-weight", default=None, type=click.FloatRange(min=0.0),
              help="Override the weight of Diff-ST's loss on the spot-consistent map (default: "
                   f"the training default, {default(TrainConfig, 'consistency_weight'):g}).")
@click.option("--patch-um", default=None, type=click.FloatRange(min=0.0, min_open=True),
              help="Override the preset's training patch side in µm (rounded to whole LR "
                   "cells): the context Diff-ST and the regression see.")
@click.option("--self-tune", default=None, type=click.IntRange(min=0),
              help="Fine-tune Diff-ST on each test slide's own LR map (pooled once more) for "
                   "this many steps before super-resolving it (default: the preset's: 30 for "
                   "`spots` data but 0 at x3, 0 for `cells`); a value given here holds at "
                   "every factor.")
@click.option("--self-tune-lr", default=None, type=click.FloatRange(min=0.0, min_open=True),
              help=f"Learning rate of --self-tune (default {SELF_TUNE_LR:g}).")
@click.option("--istar-mix", default=None,
              callback=lambda c, p, v: None if v is None else _mix(v),
              help="Weight (0 to 1) of each test slide's own iStar-like map mixed into "
                   f"Diff-ST's maps, or '{DEPTH_MIX}' (max(0, 1 - 1/r) for a slide r times "
                   "shallower than the training data; default: the preset's); a value given "
                   "here holds at every factor.")
@click.option("--lr-schedule", default=None, type=click.Choice(list(LR_SCHEDULES)),
              help="Override the learning-rate schedule of Diff-ST's (and the regression's) "
                   "training (default: the training default, "
                   f"{default(TrainConfig, 'lr_schedule')}).")
@click.option("--lr", default=None, type=click.FloatRange(min=0.0, min_open=True),
              help="Override the preset's learning rate of Diff-ST's (and the regression's) "
                   "training.")
@click.option("--ema-warmup", default=None, type=click.FloatRange(min=1.0, min_open=True),
              help="Override the EMA warm-up w of training (decay (1+n)/(w+n) at step n, "
                   "capped by the EMA decay; smaller w averages more of a short run's steps; "
                   f"default {default(TrainConfig, 'ema_warmup'):g}).")
@click.option("--t-focus", default=None, type=click.FloatRange(min=0.0, max=1.0, max_open=True),
              help="Probability that a training example's noise step is the last one, the "
                   "step `--sampler mean` queries, instead of uniform (default "
                   f"{default(TrainConfig, 't_focus'):g}).")
@click.option("--grid-shifts", default=None, type=click.IntRange(min=1),
              help="Pool each training section on this many grids per axis (n x n shifted "
                   "copies; at most the factor): more distinct training pairs from the same "
                   f"truth (default {default(TrainConfig, 'grid_shifts')}: one grid).")
@click.option("--thin-inputs", default=None,
              type=click.FloatRange(min=0.0, max=1.0, min_open=True, max_open=True),
              help="Also train on every section with its input thinned to this fraction of "
                   "its counts and depth-matched (the target unchanged), e.g. 0.1 (default: "
                   "none).")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Override the preset's training batch size (patches per step).")
@click.option("--work-um-per-px", default=None, type=click.FloatRange(min=0.0, min_open=True),
              help="Override the preset's image resolution (µm per pixel) the model sees.")
@click.option("--size-um", default=None, type=click.FloatRange(min=0.0, min_open=True),
              help="Override the preset's side (µm) of the simulated tissue, which sets how "
                   "much training data a simulated benchmark has (simulated dataset only).")
@click.option("--models", "n_models", default=None, type=click.IntRange(min=1),
              help="Diff-ST (and each ablation) as an ensemble of this many models trained "
                   "with different seeds, their maps averaged (default: the preset's, 1).")
@model_settings_option("Change one architecture setting of Diff-ST (and of the regression, "
                       "which shares its encoders), e.g. --model channels=48; repeat for "
                       "several. A setting given here holds at every factor (the `spots` "
                       "presets use upsampler=istar_like at x3).")
@click.option("--paper-variant", "paper_variants", default=None,
              help="Comma-separated parts switched to the Diff-ST paper's variant (of "
                   f"{', '.join(PAPER_PARTS)}; the `paper` preset switches all).")
@click.option("--thin", default=1.0, show_default=True,
              type=click.FloatRange(min=0.0, max=1.0, min_open=True),
              help="Depth-shift test: thin the test sections' counts to this fraction "
                   "(binomially; training sections untouched), e.g. 0.1.")
@check_writable(folders=("out_dir",))
@threads_option
@_fail_nicely
def benchmark(dataset, data_root, factors, split, stage, preset, out_dir, methods, ablations,
              steps, seeds, n_samples, match_depth, turns, log1p, disentangle_weight, sampler,
              consistency_weight, patch_um, self_tune, self_tune_lr, istar_mix, lr_schedule, lr,
              ema_warmup, t_focus, grid_shifts, thin_inputs, batch_size, work_um_per_px,
              size_um, n_models, model_settings, paper_variants, thin) -> None:
    """Train and score Diff-ST and the baselines on held-out data; write tables and figures."""
    from diffst.benchmark import run_benchmark

    # preset fields given on the command line (every option is None when not given; the
    # ranges exclude 0 where 0 is no setting, so None is the only "not given")
    parts = tuple(paper_variants.split(",")) if paper_variants else None
    if parts and set(parts) - set(PAPER_PARTS):
        raise click.BadParameter(f"{paper_variants!r}: choose parts from {', '.join(PAPER_PARTS)}",
                                 param_hint="--paper-variant")
    if size_um is not None and dataset != "simulated":
        raise click.BadParameter(f"sets the simulated tissue's side; --dataset is {dataset!r}",
                                 param_hint="--size-um")
    given = dict(steps=steps, n_samples=n_samples, match_depth=match_depth or None, turns=turns,
                 sampler=sampler, log1p=log1p, disentangle_weight=disentangle_weight,
                 consistency_weight=consistency_weight, patch_um=patch_um, self_tune=self_tune,
                 self_tune_lr=self_tune_lr, istar_mix=istar_mix, lr_schedule=lr_schedule, lr=lr,
                 ema_warmup=ema_warmup, t_focus=t_focus, grid_shifts=grid_shifts,
                 thin_inputs=thin_inputs, batch_size=batch_size,
                 work_um_per_px=work_um_per_px, size_um=size_um, n_models=n_models,
                 paper_variants=parts,
                 model=model_settings or None)
    summary = run_benchmark(
        dataset, _int_list(factors, "--factors") if factors else None, split, preset, out_dir,
        methods=methods.split(",") if methods else None, ablations=ablations,
        seeds=_int_list(seeds, "--seeds"), stage=stage, data_root=data_root,
        overrides={key: value for key, value in given.items() if value is not None} or None,
        thin=thin,
    )
    click.echo(summary["table"])


def _mix(text: str) -> float | str:
    """An ``--istar-mix`` value: a weight in [0, 1] or 'depth'."""
    try:
        return parse_mix(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--istar-mix") from exc


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}",
                                 param_hint=option) from exc


# ---------------------------------------------------------------------------- helpers
def _log(message: str) -> None:
    """Print a line without breaking a progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message)


def _threads_text() -> str:
    import torch

    n = torch.get_num_threads()
    return f"{n} CPU thread{'s' if n != 1 else ''}"


def _command_line() -> str:
    """The command as the user typed it (to repeat it in messages)."""
    import shlex

    return " ".join(["diffst", *(shlex.quote(a) for a in sys.argv[1:])])


def _read(path: str, options: bool = True):
    """Read ``path`` with the command's reader options (``options=False``: without them)."""
    from diffst.io import read_sample

    return read_sample(path, **(reader_kwargs(path) if options else {}))


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

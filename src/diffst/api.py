"""The Python API, with the same verbs as the command line: train, predict, evaluate."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from diffst.calibration import Calibration, calibrate_prediction, describe
from diffst.config import (
    PATCH_PER_FACTOR,
    PREDICT_SETTING_KEYS,
    SELF_TUNE_LR,
    TOP_GENES,
    TrainConfig,
    default,
    paper_variant,
)
from diffst.data.lr import simulate_lr
from diffst.data.sample import SampleError, STSample
from diffst.infer import SRResult, load_model, super_resolve
from diffst.metrics import evaluate as score_maps
from diffst.metrics import summarize
from diffst.model.config import SCHEDULER_KEYS, TRAINING_KEYS, DiffSTConfig, SchedulerConfig
from diffst.pipeline import DiffSTPipeline
from diffst.selftune import self_tune as self_tune_on
from diffst.threads import use_default_threads
from diffst.train import Trainer

ABLATIONS = {
    "disentangle": "use_disentangle",
    "modulation": "use_modulation",
    "attention": "use_dynamic_attention",
    "graph": "use_gene_graph",
}
"""Ablation names -> the :class:`DiffSTConfig` switch they turn off."""


def default_work_um_per_px(sample: STSample) -> float:
    """Working image resolution: 8 px per HR cell, never coarser than 2 µm/px nor finer than
    the image itself."""
    return max(sample.image_um_per_px, min(sample.cell_um / 8.0, 2.0))


def shared_top_genes(samples: list[STSample], n: int,
                     among: set[str] | None = None) -> list[str]:
    """The ``n`` genes present in every sample (and in ``among``, when given) with the highest
    total counts in tissue, summed over ``samples``."""
    common = set(samples[0].genes).intersection(*(s.genes for s in samples[1:]))
    if among is not None:
        common &= among
    totals: dict[str, float] = dict.fromkeys(common, 0.0)
    for s in samples:
        sums = s.expr[:, s.mask].sum(axis=1)
        for g, v in zip(s.genes, sums, strict=True):
            if g in totals:
                totals[g] += float(v)
    ranked = sorted(totals, key=lambda g: (-totals[g], g))
    if not ranked:
        raise SampleError("the training samples share no gene")
    return ranked[:n]


def model_config_for(ablate: list[str] | None = None, **overrides) -> DiffSTConfig:
    """A :class:`DiffSTConfig` with the named parts switched off (see :data:`ABLATIONS`);
    ``overrides`` are architecture fields."""
    moved = sorted(set(overrides) & set(SCHEDULER_KEYS + TRAINING_KEYS))
    if moved:
        raise ValueError(f"{moved} are no longer model (architecture) settings: pass "
                         "prediction= to train_model, or a SchedulerConfig / TrainConfig")
    for name in ablate or []:
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}: choose from {sorted(ABLATIONS)}")
    return DiffSTConfig(**{**overrides, **{ABLATIONS[name]: False for name in ablate or []}})


SPOT_UM = 50.0
"""Cells at least this large (µm) are measured spots (Visium 55-100 µm, legacy ST 100-200 µm),
never HR truth: :func:`spot_data_message` then suggests spots-only training."""


def spot_data_message(samples: list[STSample], factor: int) -> str | None:
    """Why ``samples`` look like spot data without HR truth, or None when they do not.

    Spot-sized cells (:data:`SPOT_UM` or larger) cannot be HR truth for ``factor``: the model
    would learn ``cell_um * factor`` µm -> ``cell_um`` µm and could only be applied to
    ``cell_um * factor`` µm input. The message names the command-line flags involved.
    """
    sizes = sorted({round(s.cell_um, 1) for s in samples})
    if not samples or min(sizes) < SPOT_UM:
        return None
    cell = sizes[0]
    text = (
        f"DATA has {'/'.join(f'{x:g}' for x in sizes)} µm cells: measured spots without finer "
        f"truth, so training spots-only (as with --spots-only): training pairs pool the spots "
        f"{factor}x{factor}, and the model then turns {cell:g} µm spots into "
        f"{cell / factor:g} µm cells. Pass --hr-truth if these cells really are the HR truth."
    )
    if factor > 3:
        text += (f" Note: --factor {factor} pools {factor}x{factor} spots "
                 f"({cell * factor:g} µm) for training; 2 or 3 usually fits spot data.")
    return text


class TrainingInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C); the state was saved to ``checkpoint``."""

    def __init__(self, step: int, total: int, checkpoint: Path) -> None:
        self.step, self.total, self.checkpoint = step, total, Path(checkpoint)
        super().__init__(f"interrupted at step {step} of {total}; training state saved to "
                         f"{checkpoint}")


def default_checkpoint(out: str | Path) -> Path:
    """Where an interrupted :func:`train_model` without a checkpoint saves its state."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def describe_plan(trainer: Trainer, samples: list[STSample]) -> str:
    """What a training run will do, in words: genes, factor, patch, image resolution, device.

    Patch sizes are given in HR cells, µm and image pixels at the working resolution.
    """
    import torch

    tc, f, cell = trainer.tc, trainer.factor, trainer.cell_um
    genes = trainer.genes
    shown = ", ".join(genes[:6]) + (", ..." if len(genes) > 6 else "")
    if trainer.spots_only:
        mode = (f"spots-only: trains {cell * f:g} -> {cell:g} µm (spots pooled {f}x{f}), "
                f"applied {cell:g} -> {cell / f:g} µm")
    else:
        mode = f"HR truth: {cell * f:g} µm LR cells -> {cell:g} µm HR cells"
    px = tc.patch * trainer.k
    threads = torch.get_num_threads()
    lines = [
        f"plan: {len(samples)} sample(s) ({', '.join(s.name for s in samples)}), "
        f"{len(genes)} genes ({shown})",
        f"      factor {f}, {mode}",
        f"      patch {tc.patch} x {tc.patch} cells = {tc.patch * cell:g} µm = {px} x {px} px "
        f"at {tc.work_um_per_px:g} µm/px ({trainer.k} px per cell)",
        f"      {tc.steps} steps of batch {tc.batch_size} on {trainer.device}"
        + (f", {threads} CPU thread{'s' if threads != 1 else ''}"
           if trainer.device.type == "cpu" else ""),
    ]
    return "\n".join(lines)


class _Timer:
    """Prints a time estimate after the first steps and a summary at the end."""

    def __init__(self, log: Callable[[str], None], target: int, start_step: int,
                 n_first: int = 5) -> None:
        self.log, self.target, self.start = log, target, start_step
        self.n_first = n_first
        self.t0 = time.perf_counter()
        self.t_warm: float | None = None

    def __call__(self, trainer: Trainer) -> None:
        done = trainer.step - self.start
        if done == 1:  # the first step includes one-off set-up: time from here on
            self.t_warm = time.perf_counter()
        elif self.t_warm is not None and done == 1 + self.n_first:
            per = (time.perf_counter() - self.t_warm) / self.n_first
            left = self.target - trainer.step
            self.log(f"first steps: {per:.2f} s/step -> about {_duration(per * left)} for the "
                     f"remaining {left} steps")

    def summary(self, trainer: Trainer) -> str:
        """One line: steps, wall time, time per step and the recent loss."""
        done = trainer.step - self.start
        took = time.perf_counter() - self.t0
        recent = trainer.history[-50:]
        loss = f", loss {sum(recent) / len(recent):.4f} (mean of the last {len(recent)})" \
            if recent else ""
        return (f"trained {done} steps in {_duration(took)} "
                f"({took / max(done, 1):.2f} s/step){loss}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def train_model(
    samples: list[STSample],
    factor: int,
    out: str | Path,
    *,
    genes: list[str] | None = None,
    top_genes: int = TOP_GENES,
    steps: int = default(TrainConfig, "steps"),
    batch_size: int = default(TrainConfig, "batch_size"),
    lr: float = default(TrainConfig, "lr"),
    ema_decay: float = default(TrainConfig, "ema_decay"),
    ema_warmup: float = default(TrainConfig, "ema_warmup"),
    t_focus: float = default(TrainConfig, "t_focus"),
    grid_shifts: int = default(TrainConfig, "grid_shifts"),
    patch: int | None = None,
    work_um_per_px: float | None = None,
    checkpoint: str | Path | None = None,
    spots_only: bool = False,
    ablate: list[str] | None = None,
    seed: int = default(TrainConfig, "seed"),
    model_config: DiffSTConfig | None = None,
    bf16: bool = default(TrainConfig, "bf16"),
    device: str = default(TrainConfig, "device"),
    log1p: bool = default(TrainConfig, "log1p"),
    disentangle_weight: float = default(TrainConfig, "disentangle_weight"),
    prediction: str | None = None,
    scheduler_config: SchedulerConfig | None = None,
    paper_variants: list[str] | tuple[str, ...] = (),
    progress: bool = True,
    trainer_cls: type[Trainer] = Trainer,
    trainer_kwargs: dict | None = None,
    log: Callable[[str], None] | None = None,
    save_on_interrupt: bool = False,
    predict_settings: dict | None = None,
) -> Path:
    """Train Diff-ST and write the model file ``out``; returns its path.

    Args:
        samples: training samples with HR truth (``(G, H, W)`` counts per HR cell). With
            ``spots_only`` they are measured spot maps instead: training pairs are made by
            pooling them one level further (spot/s -> spot), and the model is later applied at
            spot -> spot/s. This assumes the relation between histology and expression looks the
            same one scale down (self-similarity); it is an assumption, not a guarantee.
        factor: integer scale factor s.
        genes: genes to model (default: ``top_genes`` most expressed shared genes).
        patch: training patch side in HR cells (default ``PATCH_PER_FACTOR * factor``).
        ema_warmup, t_focus: the EMA's warm-up and the share of training examples at the
            last noise step (:class:`TrainConfig`).
        grid_shifts: pool each training sample on this many grids per axis
            (:class:`TrainConfig`).
        work_um_per_px: image resolution of the model (default
            :func:`default_work_um_per_px` of the first sample).
        model_config: the architecture (default :class:`DiffSTConfig` with ``ablate``
            parts switched off).
        prediction, scheduler_config: the denoiser's prediction target (default
            :class:`SchedulerConfig`'s), or the whole scheduler config.
        paper_variants: parts switched to the Diff-ST paper's variant
            (:data:`diffst.config.PAPER_PARTS`, :func:`diffst.config.paper_variant`); they
            override the matching fields of ``model_config``, the scheduler and training.
        checkpoint: resumable checkpoint path; when it exists training resumes from it.
        bf16: bfloat16 autocast (faster on GPUs and CPUs with bf16 instructions).
        log1p: learn log1p counts instead of counts (see :class:`TrainConfig`).
        disentangle_weight: weight of the disentangling loss (see :class:`TrainConfig`).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
        trainer_cls, trainer_kwargs: the trainer class and its extra keyword arguments (e.g.
            :class:`diffst.distributed.DistributedTrainer`).
        log: called with lines of text: the plan (:func:`describe_plan`), whether training
            resumes, a time estimate after the first steps and a summary at the end.
        predict_settings: sampling settings kept in the model file (keys of
            :data:`diffst.config.PREDICT_SETTING_KEYS`, e.g. a preset's:
            :func:`diffst.benchmark.presets.predict_settings`); ``diffst predict`` uses them
            for this model unless its flags say otherwise (:func:`recorded_predict_settings`).
        save_on_interrupt: on Ctrl-C save the state to ``checkpoint`` (default
            :func:`default_checkpoint`) and raise :class:`TrainingInterrupted`. The state is
            that of the last finished step or, if the interrupt hit inside a step, of a step
            that is partly applied; resuming from it is not bit-identical.
    """
    use_default_threads()
    gene_list = list(genes) if genes else shared_top_genes(samples, top_genes)
    cfg = model_config or model_config_for(ablate)
    sc = scheduler_config or SchedulerConfig()
    if prediction is not None:
        sc = replace(sc, prediction=prediction)
    model_variant, scheduler_variant, train_variant = paper_variant(paper_variants)
    cfg, sc = replace(cfg, **model_variant), replace(sc, **scheduler_variant)
    unknown = sorted(set(predict_settings or {}) - set(PREDICT_SETTING_KEYS))
    if unknown:
        raise ValueError(f"unknown predict settings {unknown}: choose from "
                         f"{list(PREDICT_SETTING_KEYS)}")
    tc = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, seed=seed,
                     ema_warmup=ema_warmup, t_focus=t_focus, grid_shifts=grid_shifts,
                     bf16=bf16, device=device, log1p=log1p,
                     disentangle_weight=disentangle_weight,
                     patch=patch or PATCH_PER_FACTOR * factor,
                     work_um_per_px=work_um_per_px or default_work_um_per_px(samples[0]),
                     **train_variant)
    trainer = trainer_cls(samples, gene_list, factor, cfg, tc, spots_only=spots_only,
                          scheduler_config=sc, **(trainer_kwargs or {}))
    trainer.predict_settings = dict(predict_settings) if predict_settings else None
    say = log or (lambda _msg: None)
    say(describe_plan(trainer, samples))
    if checkpoint is not None and Path(checkpoint).exists():
        trainer.load_checkpoint(checkpoint)
        say(f"resuming from {checkpoint}: {trainer.step} of {steps} steps done")
    timer = _Timer(say, steps, trainer.step)
    try:
        extra = {"callback": timer} if log is not None else {}
        trainer.fit(checkpoint=checkpoint, progress=progress, **extra)
    except KeyboardInterrupt:
        if not save_on_interrupt:
            raise
        keep = Path(checkpoint) if checkpoint is not None else default_checkpoint(out)
        trainer.save_checkpoint(keep)
        raise TrainingInterrupted(trainer.step, steps, keep) from None
    say(timer.summary(trainer))
    return trainer.export_model(out)


def default_resume_dir(out: str | Path) -> Path:
    """Where :func:`predict` keeps finished tiles of a run writing ``out``: ``<out>.tiles``."""
    out = Path(out)
    return out.with_name(out.name + ".tiles")


def predict(
    sample: STSample,
    model: str | Path | DiffSTPipeline,
    out: str | Path | None = None,
    *,
    pool: bool = False,
    n_samples: int = 8,
    steps: int = 20,
    sampler: str = "ddim",
    batch_size: int = 8,
    seed: int = 0,
    consistency: bool | str = True,
    resume: bool = True,
    resume_dir: str | Path | None = None,
    report_dir: str | Path | None = None,
    report_genes: list[str] | None = None,
    device: str = "auto",
    autocast: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    eta: float = 0.0,
    match_depth: bool = False,
    turns: bool = False,
    calibration: str | Path | Calibration | None = "auto",
    calibrate_on: STSample | None = None,
    self_tune: int = 0,
    self_tune_lr: float = SELF_TUNE_LR,
    istar_mix: float | str = 0.0,
) -> SRResult:
    """Super-resolve ``sample`` with the model file ``model``; optionally write ``out``.

    Args:
        sample: the measured sample (counts per LR cell) with its H&E. With ``pool`` it is HR
            truth and is sum-pooled by the model's factor first; the output covers the HR
            cells of the pooled LR tissue cells (the truth's own mask is used only to score).
        model: a model file from :func:`train_model`, or a loaded
            :class:`~diffst.pipeline.DiffSTPipeline` (genes and cell size are checked).
        out: ``.h5ad`` (X = mean; layers mean/std/q05/q95) or ``.npz`` (mean map), written
            atomically.
        n_samples: diffusion samples per tile (uncertainty maps need at least 2).
        consistency: ``True``/``"draws"`` (default), ``"steps"`` or ``False``: make the mean
            sum-pool back to the measured counts (:mod:`diffst.infer`).
        resume: keep finished tile batches in ``resume_dir`` (default ``<out>.tiles``) so an
            interrupted run continues where it stopped; the folder is removed once ``out`` is
            written.
        report_dir: also write a per-gene PNG gallery and ``report.html`` there.
        report_genes: genes for the gallery (default: the most expressed, at most 24).
        autocast: bfloat16/float16 autocast while sampling (see ``benchmarks/README.md``).
        log: called with a line of text before sampling (what will be done, how the model was
            trained) and one after it (tiles and time).
        eta: DDIM stochasticity (0 deterministic steps, 1 DDPM variance).
        match_depth: scale the input to the training data's depth while sampling
            (:func:`diffst.infer.super_resolve`); for slides sequenced much shallower or deeper.
        turns: sample ``k`` sees each tile rotated/mirrored by dihedral transform ``k mod 8``
            and is turned back (test-time augmentation, :func:`diffst.infer.super_resolve`).
        calibration: how ``q05``/``q95`` are calibrated (:mod:`diffst.calibration`):
            ``"auto"`` (split-conformal on ``calibrate_on`` if given, else self-calibration
            when the model is spots-only and the sample has spots of its size, else
            uncalibrated), ``"self"``, ``"none"`` (the raw sampler quantiles), a
            :class:`diffst.calibration.Calibration` or the path of a saved one. The ``.h5ad``
            records it in ``uns["diffst_calibration"]``.
        calibrate_on: a sample with HR truth the model did not train on, for split-conformal
            calibration (pooled by the factor and super-resolved with the same settings).
        self_tune: first fine-tune (a copy of) the model for this many steps on ``sample``
            itself, its measured map pooled once more by the factor -> the measured map
            (:func:`diffst.selftune.self_tune`, learning rate ``self_tune_lr``); 0: off. The
            model file is not changed.
        istar_mix: weight in [0, 1] of the sample's own iStar-like map mixed into the maps,
            or ``"depth"``: a weight that grows as the sample is shallower than the training
            data (:func:`diffst.infer.istar_mix_weight`); 0: off.
    """
    from diffst.tilestore import remove_store

    use_default_threads()
    if out is not None and Path(out).suffix not in (".h5ad", ".npz"):
        raise ValueError(f"{out}: result files must end in .h5ad or .npz")
    lm = model.to(device) if isinstance(model, DiffSTPipeline) else load_model(model, device)
    unknown = [g for g in report_genes or [] if g not in lm.genes]
    if unknown:  # checked before the (long) sampling
        raise ValueError(f"report genes {unknown[:10]} are not genes of the model {model} "
                         f"(it predicts {len(lm.genes)}: {', '.join(lm.genes[:10])}"
                         f"{', ...' if len(lm.genes) > 10 else ''})")
    if pool:  # the HR mask is then made from the pooled LR mask, as for measured data
        sample = simulate_lr(sample, lm.factor)
    tiles = None
    if resume and (resume_dir is not None or out is not None):
        tiles = Path(resume_dir) if resume_dir is not None else default_resume_dir(out)
    if log is not None:
        log(_predict_plan(lm, sample, model, n_samples, steps, sampler))
    if self_tune:
        t0 = time.perf_counter()
        lm = self_tune_on(lm, sample, self_tune, self_tune_lr, seed=seed, progress=progress,
                          match_depth=match_depth)
        if log is not None:
            log(f"self-tuned on this slide: {self_tune} steps at lr {self_tune_lr:g} in "
                f"{_duration(time.perf_counter() - t0)}")
    t0 = time.perf_counter()
    result = super_resolve(lm, sample, steps=steps, sampler=sampler, n_samples=n_samples,
                           batch_size=batch_size, seed=seed,
                           consistency=consistency, resume_dir=tiles, progress=progress,
                           autocast=autocast, eta=eta, match_depth=match_depth,
                           turns=turns, istar_mix=istar_mix)
    timings = {"sampling_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    result = calibrate_prediction(lm, sample, result, calibration, calibrate_on, dict(
        steps=steps, sampler=sampler, n_samples=n_samples, batch_size=batch_size, seed=seed,
        consistency=consistency, autocast=autocast, eta=eta, match_depth=match_depth,
        turns=turns, istar_mix=istar_mix))
    timings["calibration_s"] = time.perf_counter() - t0
    if log is not None:
        log(f"sampled {result.meta['n_tiles']} tiles in {_duration(timings['sampling_s'])}")
    result.meta["timings_s"] = timings
    if out is not None:
        t0 = time.perf_counter()
        write_result(result, sample, out)
        timings["write_s"] = time.perf_counter() - t0
    if report_dir is not None:
        from diffst.report import write_report

        settings = {"model": model_name(model), "model training": training_summary(model),
                    "device": str(lm.device), "pool": pool,
                    "output": str(out) if out is not None else "-"}
        write_report(result, sample, report_dir, settings=settings, timings=timings,
                     genes=report_genes)
    if tiles is not None and out is not None:
        remove_store(tiles)
    return result


def training_summary(model: str | Path | DiffSTPipeline) -> str:
    """How the model (a model file or a pipeline) was trained, in one line (for reports)."""
    from diffst.pipeline import read_model_file

    state = model.metadata() if isinstance(model, DiffSTPipeline) else read_model_file(model)
    f, cell = int(state["factor"]), float(state["cell_um"])
    if state["spots_only"]:
        how = (f"spots-only on {cell:g} µm spots (pooled {f}x{f} for training pairs), applied "
               f"{cell:g} -> {cell / f:g} µm")
    else:
        how = f"on {cell:g} µm HR truth pooled {f}x{f}, applied {cell * f:g} -> {cell:g} µm"
    steps = state.get("trained_steps")
    budget = (f"{steps} steps of batch {state.get('batch_size', '?')}" if steps is not None
              else "steps not recorded")
    return (f"{how}; factor {f}, {len(state['genes'])} genes, patch {state['patch']} cells at "
            f"{float(state['work_um_per_px']):g} µm/px; {budget}")


def recorded_predict_settings(model: str | Path | DiffSTPipeline) -> dict:
    """The sampling settings a model keeps (``diffst train --preset``; keys of
    :data:`diffst.config.PREDICT_SETTING_KEYS`), or ``{}`` for a model trained without one."""
    from diffst.pipeline import read_model_file

    state = model.metadata() if isinstance(model, DiffSTPipeline) else read_model_file(model)
    return dict(state.get("predict_settings") or {})


def _predict_plan(lm, sample: STSample, model: str | Path, n_samples: int, steps: int,
                  sampler: str) -> str:
    import torch

    threads = torch.get_num_threads()
    where = str(lm.device) + (f", {threads} CPU thread{'s' if threads != 1 else ''}"
                              if lm.device.type == "cpu" else "")
    return (f"plan: {len(lm.genes)} genes, {sample.cell_um:g} µm cells -> "
            f"{sample.cell_um / lm.factor:g} µm (factor {lm.factor}), {n_samples} samples x "
            f"{'1 posterior-mean step' if sampler == 'mean' else f'{steps} {sampler} steps'} "
            f"per tile, on {where}\n"
            f"      model {model_name(model)}: trained {training_summary(model)}")


def model_name(model: str | Path | DiffSTPipeline) -> str:
    """The model's file name, or ``"(a pipeline in memory)"``."""
    return "(a pipeline in memory)" if isinstance(model, DiffSTPipeline) else str(model)


def write_result(result: SRResult, lr: STSample, out: str | Path) -> Path:
    """Write a super-resolution result as ``.h5ad`` (all layers) or ``.npz`` (mean map).

    Both are written atomically: an interrupted write leaves no file under ``out``.
    """
    out = Path(out)
    if out.suffix not in (".h5ad", ".npz"):
        raise ValueError(f"{out}: result files must end in .h5ad or .npz")
    hr = result.as_sample(lr)
    if out.suffix == ".h5ad":
        from diffst.io import write_anndata

        uns = None
        if "calibration" in result.meta:
            rec = result.meta["calibration"]
            uns = {"diffst_calibration": {
                "method": rec["method"], "output_level": float(rec["output_level"]),
                "description": describe(rec), "record_json": json.dumps(rec)}}
        return write_anndata(hr, out, layers=result.layers(), uns=uns)
    return hr.save_npz(out)


def evaluate(truth: STSample, pred: STSample) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-gene metrics of ``pred`` against ``truth`` on the truth's raster and mask."""
    if not np.isclose(truth.cell_um, pred.cell_um, rtol=0.02):
        raise SampleError(
            f"truth '{truth.name}' has {truth.cell_um:g} µm cells but prediction '{pred.name}' "
            f"has {pred.cell_um:g} µm cells"
        )
    h, w = truth.shape
    if pred.shape[0] < h or pred.shape[1] < w:
        raise SampleError(f"prediction raster {pred.shape} is smaller than the truth's {(h, w)}")
    truth = truth.select_genes(pred.genes)
    table = score_maps(truth.expr, pred.expr[:, :h, :w], truth.mask, truth.genes)
    return table, summarize(table)


__all__ = [
    "ABLATIONS",
    "SPOT_UM",
    "TrainingInterrupted",
    "default_checkpoint",
    "default_resume_dir",
    "describe_plan",
    "default_work_um_per_px",
    "evaluate",
    "model_config_for",
    "model_name",
    "predict",
    "shared_top_genes",
    "spot_data_message",
    "training_summary",
    "train_model",
    "write_result",
]

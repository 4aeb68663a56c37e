"""Training of the Diff-ST denoiser: data preparation, the loss, EMA, curriculum, checkpoints.

Checkpoints hold everything needed to resume exactly (model, EMA, optimiser, step, the patch
sampler's and torch's random states) and are written atomically; they load with
``torch.load(weights_only=True)``. :meth:`Trainer.pipeline` gives the EMA model with what
inference needs (genes, scaler, factor, image resolution) as a
:class:`~diffst.pipeline.DiffSTPipeline`; :meth:`Trainer.export_model` saves it as a model file.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from diffst.config import (  # noqa: F401 - TrainConfig etc.: re-exported
    CURRICULUM_ORDERS,
    DATA_PIPELINES,
    LOSSES,
    LR_SCALINGS,
    LR_SCHEDULES,
    PATCH_PER_FACTOR,
    REFERENCE_BATCH,
    TrainConfig,
)
from diffst.consistency import redistribute
from diffst.data.device_patches import DevicePatchSampler
from diffst.data.image import px_per_cell_for
from diffst.data.lr import (
    grid_shifted,
    grids_within,
    pool_sum,
    raster_cells,
    simulate_lr,
    tissue_depth,
)
from diffst.data.normalize import GeneScaler
from diffst.data.patches import PatchBatch, PatchSampler, PreparedSample, prepare_training_sample
from diffst.data.sample import SampleError, STSample
from diffst.diffusion.schedule import NoiseSchedule
from diffst.diffusion.vlb import vlb_terms
from diffst.model.config import DiffSTConfig, SchedulerConfig
from diffst.model.diffst import DiffST
from diffst.model.gene_graph import gene_adjacency
from diffst.model.upsampler import upsampler_for
from diffst.pipeline import (  # noqa: F401 - MODEL_FORMAT, safe_load: re-exported
    MODEL_FORMAT,
    DiffSTPipeline,
    atomic_torch_save,
    resolve_device,
    safe_load,
)

CHECKPOINT_FORMAT = "diffst.checkpoint/1"
CHARBONNIER_EPS = 1e-3
"""``eps`` of the Charbonnier loss ``sqrt(d^2 + eps^2)`` (``TrainConfig(loss="charbonnier")``)."""
CONSISTENT_EPS = 1e-3
"""Added to the predicted map (scaled units) before the consistency step of
:meth:`Trainer.consistent_mse`, so that no LR cell's predicted total is zero."""


def batch_scaled_lr(lr: float, batch_size: int, rule: str = "sqrt",
                    reference_batch: int = REFERENCE_BATCH) -> float:
    """Learning rate for ``batch_size`` from one tuned at ``reference_batch``.

    ``rule``: ``"none"`` (unchanged), ``"sqrt"`` (``lr * sqrt(batch_size / reference_batch)``)
    or ``"linear"`` (``lr * batch_size / reference_batch``).
    """
    if rule not in LR_SCALINGS:
        raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, got {rule!r}")
    ratio = batch_size / reference_batch
    return lr * {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[rule]


def check_training_samples(samples: list[STSample], genes: list[str], factor: int,
                           patch: int) -> list[STSample]:
    """Select ``genes`` in every sample and check units and sizes agree."""
    if not samples:
        raise SampleError("no training samples given")
    if patch % factor:
        raise SampleError(f"patch {patch} must be a multiple of the factor {factor}")
    out = [s.select_genes(genes) for s in samples]
    cell = out[0].cell_um
    for s in out:
        if not math.isclose(s.cell_um, cell, rel_tol=0.05):
            raise SampleError(
                f"sample '{s.name}' has {s.cell_um} µm cells but '{out[0].name}' has {cell} µm"
            )
        if s.image is None:
            raise SampleError(f"sample '{s.name}' has no H&E image; Diff-ST needs one")
    return out


def residual_scale(prepared: list[PreparedSample]) -> float:
    """Scale so the diffusion variable ``(hr - lr_up) / scale`` has std about 0.5 in tissue."""
    res = np.concatenate([(p.hr - p.lr_up)[:, p.mask].ravel() for p in prepared])
    return float(max(2.0 * res.std(), 1e-3))


class DenoisingStep(nn.Module):
    """The conditioning encoder and the denoiser in one ``forward`` call.

    Training goes through this wrapper so that a
    :class:`torch.nn.parallel.DistributedDataParallel` around it sees exactly one forward pass
    per step (see :mod:`diffst.distributed`). It owns no parameters of its own.
    """

    def __init__(self, model: DiffST) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: PatchBatch, keep: torch.Tensor, z_t: torch.Tensor,
                t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, G, P, P)`` denoiser output for noisy residuals ``z_t`` at steps ``t`` ``(B,)``
        (``(B, 2G, P, P)`` with the variance values for a model that learns its variance), and
        the scalar disentangling loss; ``keep`` ``(B, N)`` marks the visible cell tiles."""
        cond = self.model.encode_batch(batch, keep)
        return self.model(z_t, t, cond, variance=True), cond.aux_loss


class Trainer:
    """Holds model, EMA, optimiser and data sampler; one object per training run.

    ``train_module``, when set (by :mod:`diffst.distributed`: a DistributedDataParallel around
    a :class:`DenoisingStep` of ``model``), is what :meth:`train_step` passes to :meth:`loss`
    instead of ``model``. ``model`` always stays the plain denoiser that EMA, checkpoints and
    exports use. ``predict_settings``, when set (keys of
    :data:`diffst.config.PREDICT_SETTING_KEYS`), goes into the model file's record: the
    sampling settings that ``diffst predict`` uses for that model unless told otherwise.

    With ``start`` (a trained :class:`~diffst.pipeline.DiffSTPipeline`) training continues
    from its weights, gene graph, gene scaler and scheduler (``model_config`` and
    ``scheduler_config`` are then ignored): fine-tuning, e.g. :func:`diffst.selftune.self_tune`.
    """

    def __init__(self, samples: list[STSample], genes: list[str], factor: int,
                 model_config: DiffSTConfig | None = None,
                 train_config: TrainConfig | None = None, spots_only: bool = False,
                 scheduler_config: SchedulerConfig | None = None,
                 start: DiffSTPipeline | None = None) -> None:
        tc = train_config or TrainConfig()
        check_choices(tc)
        if tc.patch is None:
            tc = replace(tc, patch=PATCH_PER_FACTOR * int(factor))
        self.tc = tc
        self.spots_only = spots_only
        self.genes = list(genes)
        self.factor = int(factor)
        samples = check_training_samples(samples, self.genes, self.factor, self.tc.patch)
        self.k = px_per_cell_for(samples[0].cell_um, self.tc.work_um_per_px)
        self.cell_um = samples[0].cell_um
        self.scaler = start.scaler if start is not None else GeneScaler.fit(
            [s.expr for s in samples], [s.mask for s in samples], log1p=self.tc.log1p)
        self.counts_per_um2 = training_depth(samples)
        self.lr_counts_per_um2 = training_depth(samples, self.factor)
        self.predict_settings: dict | None = None  # kept in the model file when set
        if start is None:
            mc = replace(model_config or DiffSTConfig(), n_genes=len(self.genes),
                         factor=self.factor)
        else:  # fine-tuning: the start's weights, gene graph, scaling and diffusion variable
            mc = start.model.config
        upsampler = upsampler_for(mc.upsampler)
        self.grid_shifts = grids_for(samples, self.tc)
        samples = grid_shifted(samples, self.factor, self.grid_shifts)
        full_depth = [prepare_training_sample(s, factor, self.scaler, self.k, upsampler)
                      for s in samples]
        # shallow copies (thinned, depth-matched inputs, the same targets); the gene graph and
        # the diffusion variable's scale come from the sections as they are
        shallow = [prepare_training_sample(s, factor, self.scaler, self.k, upsampler,
                                           self.tc.thin_inputs, self.tc.seed + i)
                   for i, s in enumerate(samples)] if self.tc.thin_inputs else []
        prepared = full_depth + shallow
        self.device = resolve_device(self.tc.device)
        torch.manual_seed(self.tc.seed)
        if start is None:
            adjacency = gene_adjacency([p.hr for p in full_depth],
                                       [p.mask for p in full_depth], mc.graph_edges)
            self.scheduler_config = replace(scheduler_config or SchedulerConfig(),
                                            residual_scale=residual_scale(full_depth))
            self.model = DiffST(mc, adjacency).to(self.device)
        else:
            self.scheduler_config = start.scheduler
            self.model = copy.deepcopy(start.model).to(self.device).requires_grad_(True).train()
        self.model_config = mc
        if tc.consistency_weight and self.scheduler_config.prediction != "sample":
            raise ValueError("consistency_weight needs prediction='sample' (the denoiser's clean "
                             f"estimate), not {self.scheduler_config.prediction!r}")
        self.train_module: nn.Module | None = None
        self.ema = copy.deepcopy(self.model).requires_grad_(False)  # the usual layout
        if trains_channels_last(self.tc, self.device):
            self.model.to(memory_format=torch.channels_last)
        self.base_lr = batch_scaled_lr(self.tc.lr, self.tc.batch_size, self.tc.lr_scaling)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.base_lr,
                                     weight_decay=self.tc.weight_decay)
        self.schedule = NoiseSchedule.from_config(self.scheduler_config)
        self.sampler = self._make_sampler(prepared)
        if self.tc.compile and self.device.type == "cuda" and type(self).loss is Trainer.loss:
            self.train_module = torch.compile(DenoisingStep(self.model))
        self.step = 0
        self.history: list[float] = []

    def _make_sampler(self, prepared: list[PreparedSample]) -> PatchSampler | DevicePatchSampler:
        """The patch sampler of ``TrainConfig.data_pipeline``."""
        tc = self.tc
        if tc.data_pipeline not in DATA_PIPELINES:
            raise ValueError(f"data_pipeline must be one of {DATA_PIPELINES}, "
                             f"got {tc.data_pipeline!r}")
        if tc.data_pipeline == "numpy":
            return PatchSampler(prepared, tc.patch, tc.min_tissue, tc.seed)
        mc = self.model_config
        return DevicePatchSampler(prepared, tc.patch, tc.min_tissue, tc.seed, self.device,
                                  image_products=(mc.tissue_px_per_cell, mc.tile_px))

    # ------------------------------------------------------------------ one step
    def draw_batch(self) -> PatchBatch:
        """Next random training batch (augmented), on the training device."""
        mc = self.model_config
        batch = self.sampler.draw(self.tc.batch_size, mc.tissue_px_per_cell, mc.tile_px,
                                  mc.n_tiles)
        return batch.to(self.device, non_blocking=True)

    def loss(self, model: DiffST | nn.Module, batch: PatchBatch,
             tile_fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Masked denoising loss on the configured target (``TrainConfig.loss``: MSE or
        Charbonnier) plus the weighted disentangling loss; for a model that learns its variance
        also the weighted bound term (:func:`diffst.diffusion.vlb.vlb_terms`), and with
        ``consistency_weight`` the loss of :meth:`consistent_mse`.

        ``model`` is a :class:`DiffST` or a module with :class:`DenoisingStep`'s ``forward``
        (e.g. ``train_module``); the latter is called exactly once.
        """
        sc = self.scheduler_config
        b = batch.hr.shape[0]
        keep = curriculum_keep(batch.tile_valid, tile_fraction, self.tc.curriculum_order)
        step = DenoisingStep(model) if isinstance(model, DiffST) else model
        z0 = (batch.hr - batch.lr_up) / sc.residual_scale
        if generator is None and z0.is_cuda:  # no host RNG and copy per step on a GPU
            t = torch.randint(0, sc.num_train_timesteps, (b,), device=z0.device)
            noise = torch.randn_like(z0)
            if self.tc.t_focus:
                focus = torch.rand(b, device=z0.device) < self.tc.t_focus
                t = t.masked_fill(focus, sc.num_train_timesteps - 1)
        else:  # CPU: the host RNG, so a fixed seed gives the same losses as before
            t = torch.randint(0, sc.num_train_timesteps, (b,), generator=generator).to(z0.device)
            noise = torch.randn(z0.shape, generator=generator).to(z0.device)
            if self.tc.t_focus:  # drawn after the others: t_focus=0 keeps the stream
                focus = torch.rand(b, generator=generator) < self.tc.t_focus
                t = t.masked_fill(focus.to(t.device), sc.num_train_timesteps - 1)
        z_t = self.schedule.add_noise(z0, noise, t)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.tc.bf16):
            out, aux_loss = step(batch, keep, z_t, t)
        g = len(self.genes)
        out, var_values = out[:, :g].float(), out[:, g:].float()
        target = self.schedule.training_target(z0, noise, t, sc.prediction)
        if self.tc.loss == "charbonnier":
            fit = masked_mean(((out - target) ** 2 + CHARBONNIER_EPS ** 2).sqrt(), batch.mask)
        else:
            fit = masked_mse(out, target, batch.mask)
        loss = fit + self.tc.disentangle_weight * aux_loss.float()
        if self.model_config.learn_variance:
            eps_hat = self.schedule.to_epsilon(out, z_t, t, sc.prediction)
            bound = vlb_terms(self.schedule, z0, z_t, t, eps_hat, var_values)
            loss = loss + (self.tc.vlb_weight * sc.num_train_timesteps
                           * masked_mean(bound, batch.mask))
        if self.tc.consistency_weight:
            loss = loss + self.tc.consistency_weight * self.consistent_mse(out, batch)
        return loss

    def consistent_mse(self, z0_hat: torch.Tensor, batch: PatchBatch) -> torch.Tensor:
        """Masked MSE (scaled units) of the clean HR map implied by the predicted residual
        ``z0_hat`` ``(B, G, P, P)`` after the spot-consistency step, against ``batch.hr``."""
        pred = batch.lr_up + z0_hat * self.scheduler_config.residual_scale
        pred = F.relu(pred) + CONSISTENT_EPS  # positive LR totals: a bounded redistribution
        totals = pool_sum(batch.hr * batch.mask, self.factor)
        return masked_mse(redistribute(pred, totals, batch.mask, self.factor), batch.hr,
                          batch.mask)

    def train_step(self) -> float:
        """One optimiser step on a fresh batch; returns the loss."""
        self.model.train()
        batch = self.draw_batch()
        model = self.model if self.train_module is None else self.train_module
        loss = self.loss(model, batch, self.tc.tile_fraction(self.step))
        for group in self.opt.param_groups:
            group["lr"] = self.base_lr * self.tc.lr_factor(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.opt.step()
        self._update_ema()
        self.step += 1
        value = float(loss.detach())
        self.history.append(value)
        return value

    def _update_ema(self) -> None:
        decay = self.tc.ema_decay_at(self.step)
        with torch.no_grad():  # one fused kernel per list on a GPU, not one per tensor
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()),
                                 1 - decay)
            ema_buffers = list(self.ema.buffers())
            if ema_buffers:
                torch._foreach_copy_(ema_buffers, list(self.model.buffers()))

    # ------------------------------------------------------------------ loop
    def fit(self, steps: int | None = None, checkpoint: str | Path | None = None,
            progress: bool = True,
            callback: Callable[[Trainer], None] | None = None) -> list[float]:
        """Train until ``steps`` total steps (default ``TrainConfig.steps``); returns losses.

        With ``checkpoint`` set, a resumable checkpoint is written every
        ``checkpoint_every`` steps and at the end. ``callback(trainer)`` runs after every step
        (e.g. to print a time estimate, :mod:`diffst.api`).
        """
        target = self.tc.steps if steps is None else steps
        bar = tqdm(total=target, initial=self.step, desc="train", disable=not progress,
                   dynamic_ncols=True)
        while self.step < target:
            self.train_step()
            bar.update(1)
            if callback is not None:
                callback(self)
            if self.step % 10 == 0 or self.step == target:
                recent = self.history[-50:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            if checkpoint is not None and (self.step % self.tc.checkpoint_every == 0
                                           or self.step == target):
                self.save_checkpoint(checkpoint)
        bar.close()
        return self.history

    # ------------------------------------------------------------------ persistence
    def pipeline(self) -> DiffSTPipeline:
        """The EMA model with everything inference needs (shares the EMA module, in eval mode)."""
        return DiffSTPipeline(
            model=self.ema.eval(), scheduler=self.scheduler_config, scaler=self.scaler,
            genes=self.genes, factor=self.factor, k=self.k, cell_um=self.cell_um,
            patch=self.tc.patch, device=self.device, work_um_per_px=self.tc.work_um_per_px,
            spots_only=self.spots_only,
            record={"trained_steps": self.step, "batch_size": self.tc.batch_size,
                    "counts_per_um2": self.counts_per_um2,
                    "lr_counts_per_um2": self.lr_counts_per_um2,
                    **({"predict_settings": dict(self.predict_settings)}
                       if self.predict_settings else {})})

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write a resumable checkpoint atomically."""
        state = {
            "format": CHECKPOINT_FORMAT,
            **self.pipeline().metadata(),
            "train_config": _plain(asdict(self.tc)),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "history": list(self.history),
            "sampler_rng": self.sampler.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            **self.checkpoint_extras(),
        }
        return atomic_torch_save(state, path)

    def checkpoint_extras(self) -> dict:
        """Further checkpoint entries (plain types and tensors); none here, subclasses add."""
        return {}

    def load_checkpoint(self, path: str | Path) -> dict:
        """Restore a checkpoint written by :meth:`save_checkpoint` for the same data.

        Returns the checkpoint's contents (for callers that stored extra entries).
        """
        state = safe_load(path, CHECKPOINT_FORMAT)
        if state["genes"] != self.genes or state["factor"] != self.factor:
            raise SampleError(f"{path}: checkpoint genes/factor differ from this training run")
        was_log = bool(state.get("train_config", {}).get("log1p", True))
        if was_log != self.tc.log1p:
            kind, flag = ("log1p", "--log1p") if was_log else ("linear", "--no-log1p")
            raise SampleError(f"{path}: checkpoint was trained with {kind} count scaling; "
                              f"resume with {flag} (or start a new checkpoint)")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.sampler.rng.bit_generator.state = state["sampler_rng"]
        torch.set_rng_state(state["torch_rng"])
        return state

    def export_model(self, path: str | Path) -> Path:
        """Write :meth:`pipeline` as a model file (atomic)."""
        return self.pipeline().save(path)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B, G, P, P)`` values over the tissue ``mask`` ``(B, 1, P, P)`` and all
    genes."""
    return (values * mask).sum() / (mask.sum() * values.shape[1]).clamp_min(1)


def masked_mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of ``(B, G, P, P)`` maps over the tissue ``mask`` ``(B, 1, P, P)``
    and all genes."""
    return masked_mean((x - y) ** 2, mask)


def trains_channels_last(tc: TrainConfig, device: torch.device) -> bool:
    """Whether the model trains with channels-last weights (``TrainConfig.channels_last``;
    None: on the CPU in float32, not with bf16 autocast)."""
    if tc.channels_last is None:
        return device.type == "cpu" and not tc.bf16
    return bool(tc.channels_last)


def grids_for(samples: list[STSample], tc: TrainConfig) -> int:
    """Pooling grids per axis that training uses: ``tc.grid_shifts``, or fewer (with a
    warning) where its copies of ``samples`` would exceed ``tc.grid_cells_max`` HR cells
    (each copy counts twice with ``thin_inputs``, which adds a shallow copy of each)."""
    cells = raster_cells(samples) * (2 if tc.thin_inputs else 1)
    n = grids_within(cells, tc.grid_shifts, tc.grid_cells_max)
    if n < tc.grid_shifts:
        warnings.warn(
            f"training on {n} x {n} pooling grids instead of {tc.grid_shifts} x "
            f"{tc.grid_shifts}: the training data hold {cells:,} HR cells and "
            f"{tc.grid_shifts ** 2} copies would exceed TrainConfig.grid_cells_max = "
            f"{tc.grid_cells_max:,} cells (memory)", stacklevel=3)
    return n


def check_choices(tc: TrainConfig) -> None:
    """Refuse unknown ``curriculum_order``, ``loss`` and ``lr_schedule`` names of a
    :class:`TrainConfig`, an ``ema_warmup`` of 1 or less, a ``t_focus`` or ``thin_inputs``
    outside ``[0, 1)`` and a ``grid_cells_max`` below 1."""
    if tc.curriculum_order not in CURRICULUM_ORDERS:
        raise ValueError(f"curriculum_order must be one of {CURRICULUM_ORDERS}, "
                         f"got {tc.curriculum_order!r}")
    if tc.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {tc.loss!r}")
    if tc.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {tc.lr_schedule!r}")
    if not tc.ema_warmup > 1:
        raise ValueError(f"ema_warmup must be > 1, got {tc.ema_warmup!r}")
    if not 0 <= tc.t_focus < 1:
        raise ValueError(f"t_focus must be in [0, 1), got {tc.t_focus!r}")
    if not 0 <= tc.thin_inputs < 1:
        raise ValueError(f"thin_inputs must be in [0, 1), got {tc.thin_inputs!r}")
    if not tc.grid_cells_max >= 1:
        raise ValueError(f"grid_cells_max must be >= 1, got {tc.grid_cells_max!r}")


def training_depth(samples: list[STSample], factor: int = 1) -> float:
    """Sequencing depth of the training data: counts of the modelled genes per µm² of tissue,
    all samples pooled, each first sum-pooled by ``factor`` as the model's LR input is
    (:func:`~diffst.data.lr.simulate_lr`; ``factor=1``: the HR samples as given).

    The depth of a measured LR slide is read the same way (:func:`diffst.infer.depth_ratio`),
    so with ``factor`` set it is compared like with like: an LR tissue cell at the edge
    counts in full on both sides.
    """
    totals = [tissue_depth(simulate_lr(s, factor) if factor > 1 else s) for s in samples]
    area = sum(a for _, a in totals)
    return sum(c for c, _ in totals) / max(area, 1e-12)


def curriculum_keep(valid: torch.Tensor, fraction: float,
                    order: str = "descending") -> torch.Tensor:
    """``(B, N)`` mask of visible tiles, ``ceil(fraction * N)`` of them (at least one).

    Tiles are ranked by descending entropy with the padding (``valid`` False) last.
    ``order="descending"``: the first ranked tiles are visible; ``"ascending"``: the last
    valid ones, i.e. the lowest-entropy tiles first (easy to hard).
    """
    n = valid.shape[1]
    visible = max(1, math.ceil(fraction * n))
    rank = torch.arange(n, device=valid.device).expand_as(valid)
    if order == "ascending":
        n_valid = valid.sum(1, keepdim=True)
        return (rank >= n_valid - visible) & valid
    return (rank < visible) & valid


def _plain(d: dict) -> dict:
    return {k: [list(x) for x in v] if k == "curriculum" else v for k, v in d.items()}

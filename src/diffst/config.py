"""Training settings and the defaults the command line, the API and the DDP launcher share.

:class:`TrainConfig` holds the optimisation settings; the architecture and the diffusion process
are :class:`diffst.model.config.DiffSTConfig` and :class:`diffst.model.config.SchedulerConfig`.
Every default is defined once, in these dataclasses (plus :data:`TOP_GENES` and
:data:`PATCH_PER_FACTOR`); ``diffst train``, :func:`diffst.api.train_model` and
``python -m diffst.distributed`` take theirs from here (``tests/test_defaults.py`` checks it).
This module does not import torch, so the command line starts fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from diffst.model.config import DiffSTConfig, SchedulerConfig

TOP_GENES = 25
"""Genes modelled by default: the most expressed ones shared by the training samples."""
PATCH_PER_FACTOR = 8
"""Default training patch side, in multiples of the factor (40 HR cells at factor 5)."""


@dataclass
class TrainConfig:
    """Optimisation settings. ``lr`` 1e-4 and AdamW follow the Diff-ST release.

    ``curriculum`` lists ``(fraction of training, fraction of cell tiles visible)`` stages:
    the model first sees only the most informative (highest-entropy) tiles and then all.
    ``patch`` is the HR patch side in raster cells (a multiple of the factor; None, the
    default: :data:`PATCH_PER_FACTOR` x the factor, set by the trainer).
    ``work_um_per_px`` is the image resolution the model works at.

    ``data_pipeline`` chooses how batches are cut: ``"device"`` (default,
    :class:`diffst.data.device_patches.DevicePatchSampler`: sections stored once as tensors on
    the training device, batches cut with batched tensor ops) or ``"numpy"`` (the per-item
    :class:`diffst.data.patches.PatchSampler`, kept for comparison). Both give batches with
    the same keys, shapes and meaning; their random streams differ.

    ``lr_scaling`` is the learning-rate rule for batch sizes other than 8 (the batch ``lr``
    was tuned at): ``"none"`` uses ``lr`` as given, ``"sqrt"`` uses
    ``lr * sqrt(batch_size / 8)`` (square-root scaling, the usual rule for Adam-type
    optimisers: it keeps the noise of the updates about constant, Malladi et al. 2022; the
    recommended choice for larger GPU batches, not yet validated by a long run of this
    model) and ``"linear"`` ``lr * batch_size / 8``. See :func:`diffst.train.batch_scaled_lr`.

    ``disentangle_weight`` weighs the disentangling loss against the denoising MSE. It was 0.1
    until diffst 0.1; on the HER2ST validation folds (x2, seed 0, linear counts, one-step
    posterior mean) Diff-ST + C RMSE was 0.1243 at 0.1, 0.1229 at 0.01, 0.1206 at 0.001 and
    0.1203 at 0 (``benchmarks/results/validation/levers/``). 0.001 keeps the disentangling
    objective in training at the accuracy of switching it off.

    ``log1p`` scales counts by ``log1p`` before the per-gene min-max (the model then learns,
    and averages, log counts). The default is False: plain per-gene min-max of counts, as in
    the Diff-ST release. Chosen on HER2ST validation folds (x2, ``--stage validation``, seed 0,
    one-step posterior mean): Diff-ST + C RMSE 0.1243 linear vs 0.1336 log1p
    (``benchmarks/results/validation/levers/``). Models record their scaling, so models
    trained with log1p keep working.

    ``consistency_weight`` adds that weight times the masked MSE of the predicted clean map
    *after* the spot-consistency step (each LR cell's truth total redistributed in proportion
    to the prediction, :func:`diffst.consistency.redistribute`): the map users get and the
    benchmark scores is the consistent one. Needs ``prediction="sample"``. 0 (default): off.

    ``ema_warmup`` (``w``, > 1) sets the EMA's decay at step ``n`` to
    ``min(ema_decay, (1 + n) / (w + n))`` (:meth:`TrainConfig.ema_decay_at`). Until that
    reaches ``ema_decay`` (about ``w / (1 - ema_decay)`` steps: all of a short run) the EMA
    weighs the weights of step ``k`` by about ``(k + w)^(w - 2)``: the default 10 averages
    about the last tenth of the steps, 4 about the last third, 3 weighs steps linearly.

    ``t_focus`` (in ``[0, 1)``) is the probability that a training example's noise step is
    the last one, ``T - 1``, instead of uniform over all ``T`` steps: the step at which the
    one-step posterior-mean sampler (``sampler="mean"``) queries the denoiser. 0 (default):
    uniform, as in DDPM training.

    ``grid_shifts`` (``n``, 1 to the factor) pools every training section on ``n`` grids per
    axis instead of one: ``n * n`` copies of the section, cropped by ``round(i * factor / n)``
    HR cells (``i < n``) at the top and left, so that the LR cells of each copy straddle those
    of the others (:func:`diffst.data.lr.grid_shifted`). Same truth, more distinct LR inputs:
    data augmentation for small training sets. 1 (default): one grid. Every copy is held in
    memory while training, so ``grid_cells_max`` caps the HR raster cells of all copies
    together: where ``n * n`` copies would exceed it, fewer grids per axis are used (the
    largest count that fits, at least 1; :func:`diffst.data.lr.grids_within`) and a warning
    says so. The default, 3 million cells (about 1.7 GB of stored training tensors with the
    default model, more while they are prepared), leaves the training data of every benchmark
    uncapped and a 6.5 mm section of 8 µm cells on 2 x 2 grids.

    ``thin_inputs`` (``p`` in ``(0, 1)``; 0, the default: none) adds a shallow copy of every
    training section (after ``grid_shifts``): its LR input is pooled from counts binomially
    thinned to ``p`` (:func:`diffst.data.lr.thin_counts`) and multiplied by ``1 / p``, its HR
    target is the section's own. These are the inputs ``--match-depth`` feeds the model for a
    slide ``1 / p`` times shallower than the training data; the model learns to map them to the
    full-depth map (augmentation for the depth shift; integer counts only).

    ``lr_schedule``: ``"constant"`` (default) or ``"cosine"``: the learning rate follows
    ``lr * (1 + cos(pi * step / steps)) / 2`` from ``lr`` down to 0 at ``steps``
    (:meth:`TrainConfig.lr_factor`; it depends on the step only, so a resumed run continues
    the same curve).

    ``curriculum_order``: which ranked cell tiles the curriculum shows first: ``"descending"``
    (default: the highest-entropy, most informative tiles) or ``"ascending"`` (the paper's
    easy-to-hard order: the lowest-entropy tiles first; :func:`diffst.train.curriculum_keep`).

    ``loss`` is the denoising loss on the prediction target: ``"mse"`` (default) or
    ``"charbonnier"`` (``sqrt(d^2 + 1e-6)``, the paper's). For a model that learns its variance
    (``DiffSTConfig.learn_variance``) ``vlb_weight`` times the variational bound term (a KL per
    step, nats per value, times the number of diffusion steps, as Nichol & Dhariwal 2021's
    hybrid loss; :mod:`diffst.diffusion.vlb`) is added; it trains the variance only.

    ``channels_last`` stores the weights of the model being trained channels-last (NHWC), so
    that oneDNN runs the convolutions in that layout; None (default): on the CPU in float32
    only, where it made a training step 1.07x to 1.22x faster than NCHW in five of the six
    committed runs of ``benchmarks/speed.py`` (batch 8, one thread; table "Training
    throughput"; 0.99x in the sixth). With ``bf16`` autocast the CPU default stays NCHW: bf16
    with NCHW weights was faster than bf16 with channels-last weights in five of those six runs
    (1.09x to 1.28x against 1.01x to 1.26x over float32 NCHW; in the sixth 1.14x against
    1.16x). The losses are the same up to float rounding (test) and the averaged (EMA) weights
    that training returns stay NCHW.

    ``compile`` wraps the training forward pass (:class:`diffst.train.DenoisingStep`) in
    ``torch.compile`` on CUDA; it is ignored on the CPU and by trainers that override
    :meth:`diffst.train.Trainer.loss`, and off by default: on an H200 it raised sustained
    training throughput at batch 128 from 19.7 to 27.1 steps/s, but its first step took 66 s
    (``benchmarks/results/speed_cuda.md``), which pays off only for runs of thousands of steps.
    """

    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    ema_warmup: float = 10.0
    t_focus: float = 0.0
    grid_shifts: int = 1
    grid_cells_max: int = 3_000_000
    thin_inputs: float = 0.0
    grad_clip: float = 1.0
    patch: int | None = None
    min_tissue: float = 0.3
    work_um_per_px: float = 1.0
    seed: int = 0
    curriculum: list[tuple[float, float]] = field(
        default_factory=lambda: [(0.0, 0.25), (1 / 3, 0.5), (2 / 3, 1.0)]
    )
    checkpoint_every: int = 500
    bf16: bool = False
    device: str = "auto"
    data_pipeline: str = "device"
    lr_scaling: str = "none"
    compile: bool = False
    channels_last: bool | None = None
    disentangle_weight: float = 0.001
    log1p: bool = False
    consistency_weight: float = 0.0
    curriculum_order: str = "descending"
    lr_schedule: str = "constant"
    loss: str = "mse"
    vlb_weight: float = 0.001

    def ema_decay_at(self, step: int) -> float:
        """Decay of the weights' EMA after optimiser step ``step`` (0-based; ``ema_warmup``)."""
        return min(self.ema_decay, (1 + step) / (self.ema_warmup + step))

    def lr_factor(self, step: int) -> float:
        """Multiplier of the learning rate at ``step`` (``lr_schedule``)."""
        if self.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step / max(self.steps, 1), 1.0)))
        return 1.0

    def tile_fraction(self, step: int) -> float:
        """Fraction of cell tiles visible at ``step`` (curriculum, easy to hard)."""
        progress = step / max(self.steps, 1)
        frac = self.curriculum[0][1]
        for start, f in self.curriculum:
            if progress >= start:
                frac = f
        return frac


LR_SCALINGS = ("none", "sqrt", "linear")
CURRICULUM_ORDERS = ("descending", "ascending")
LR_SCHEDULES = ("constant", "cosine")
LOSSES = ("mse", "charbonnier")
PAPER_PARTS = ("modulation", "curriculum", "graph", "loss")
"""Parts whose Diff-ST paper variant :func:`paper_variant` can switch on (README table
"Where diffst differs from the paper")."""
DEPTH_MIX = "depth"
"""``istar_mix`` setting whose weight follows the slide's sequencing depth
(:func:`diffst.infer.istar_mix_weight`)."""


def parse_mix(value: float | str) -> float | str:
    """An ``istar_mix`` setting: :data:`DEPTH_MIX` or a number in [0, 1] (text is parsed)."""
    if value == DEPTH_MIX:
        return DEPTH_MIX
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = float("nan")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"istar_mix must be a number between 0 and 1 or {DEPTH_MIX!r}, "
                         f"got {value!r}")
    return weight


PRESET_NAMES = ("quick", "short", "default", "full", "paper")
"""Names of the benchmark presets (:mod:`diffst.benchmark.presets`), which ``diffst train
--preset`` also offers."""
PREDICT_SETTING_KEYS = ("sampler", "n_samples", "steps", "turns", "self_tune", "self_tune_lr",
                        "istar_mix", "match_depth")
"""Sampling settings a model file can carry (``record["predict_settings"]``, written by
``diffst train --preset``): the keyword arguments of :func:`diffst.api.predict` that
``diffst predict`` then uses unless its own flags say otherwise."""


SELF_TUNE_LR = 3e-5
"""Default learning rate of :func:`diffst.selftune.self_tune` (AdamW, batch 8). Chosen on the
HER2ST validation folds (``--stage validation``, x2): 30 steps at 3e-5 improved Diff-ST + C on
every metric (seeds 0 and 1); 60 steps at 3e-5 and 100 at 1e-4 made it worse."""
DATA_PIPELINES = ("device", "numpy")
REFERENCE_BATCH = 8


def default(cls: type, name: str):
    """The default of the dataclass field ``cls.name`` (for option declarations)."""
    for f in fields(cls):
        if f.name == name:
            return f.default
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


__all__ = ["DATA_PIPELINES", "LR_SCALINGS", "PATCH_PER_FACTOR", "REFERENCE_BATCH", "TOP_GENES",
           "DiffSTConfig", "SchedulerConfig", "TrainConfig", "default"]


def paper_variant(parts: tuple[str, ...] | list[str]) -> tuple[dict, dict, dict]:
    """Settings that switch the named :data:`PAPER_PARTS` to the Diff-ST paper's variant.

    Returns ``(model, scheduler, train)`` keyword overrides for :class:`DiffSTConfig`,
    :class:`SchedulerConfig` and :class:`TrainConfig`: ``modulation`` -> window-wise
    cross-modal affinity; ``curriculum`` -> tiles in ascending entropy; ``graph`` -> the fused
    expression-ratio gene graph; ``loss`` -> noise prediction with learned variance,
    Charbonnier loss plus the VLB term (sample it with a multi-step sampler, e.g. DDIM: the
    one-step ``mean`` sampler divides the noise estimate by ``sqrt(abar_T)``).
    """
    unknown = sorted(set(parts) - set(PAPER_PARTS))
    if unknown:
        raise ValueError(f"unknown paper variant parts {unknown}: choose from {list(PAPER_PARTS)}")
    model, scheduler, train = {}, {}, {}
    if "modulation" in parts:
        model["modulation"] = "window"
    if "graph" in parts:
        model["graph_edges"] = "paper"
    if "curriculum" in parts:
        train["curriculum_order"] = "ascending"
    if "loss" in parts:
        model["learn_variance"] = True
        scheduler["prediction"] = "epsilon"
        train["loss"] = "charbonnier"
    return model, scheduler, train


ARCHITECTURE_PARTS = tuple(part for part in PAPER_PARTS
                           if not any(paper_variant([part])[1:]))
"""The :data:`PAPER_PARTS` whose paper variant changes only :class:`DiffSTConfig` settings
(``modulation`` and ``graph``): a variant that is one architecture setting."""

"""Configuration of the Diff-ST denoiser (plain data, stored in model files and checkpoints).

:class:`DiffSTConfig` is the network's architecture; :class:`SchedulerConfig` the diffusion
process it is trained for (noise schedule, prediction target, scale of the diffusion variable).
Optimisation settings and loss weights are :class:`diffst.config.TrainConfig`. Model files
written before this split kept all of them in one dict: :func:`split_legacy_config` separates
them. Both dataclasses are frozen and validated at construction; values the trainer derives
from the data are set with ``dataclasses.replace``. This module does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

PREDICTIONS = ("epsilon", "v", "sample")
"""What a denoiser may output (:attr:`SchedulerConfig.prediction`)."""
SAMPLERS = ("ddim", "ddpm", "dpmpp", "mean")
"""Sampler names :func:`diffst.diffusion.samplers.make_sampler` accepts."""
MODULATIONS = ("cell", "window")
"""Kinds of cross-modal adaptive modulation (:attr:`DiffSTConfig.modulation`)."""
GRAPH_EDGES = ("cosine", "paper")
"""Edge weights of the CIGC-Graph (:attr:`DiffSTConfig.graph_edges`)."""
UPSAMPLERS = ("bicubic", "istar_like")
"""Base maps the denoiser refines (:attr:`DiffSTConfig.upsampler`)."""
SCHEDULE_KINDS = ("linear", "scaled_linear")
"""Beta schedules of :class:`diffst.diffusion.schedule.NoiseSchedule`."""

SCHEDULER_KEYS = ("prediction", "num_train_timesteps", "beta_start", "beta_end",
                  "residual_scale")
"""Keys of a pre-split model config that belong to the scheduler config."""

TRAINING_KEYS = ("disentangle_weight",)
"""Keys of a pre-split model config that belong to the training config."""

_POSITIVE = ("n_genes", "factor", "channels", "time_dim", "cond_channels", "tissue_px_per_cell",
             "tile_px", "n_tiles", "attn_dim", "attn_heads", "graph_dim", "graph_layers")


@dataclass(frozen=True)
class DiffSTConfig:
    """Architecture of :class:`diffst.model.diffst.DiffST`; validated at construction.

    Shapes: an HR patch is ``patch`` x ``patch`` raster cells with ``n_genes`` channels; the
    tissue-level image has ``tissue_px_per_cell`` pixels per cell edge; cell-level tiles are
    ``tile_px`` pixels square at the working image resolution. ``n_genes`` and ``factor`` are
    set by the trainer from the data (``dataclasses.replace``: the config is frozen).

    The four Diff-ST parts can be switched off for ablations:
    ``use_disentangle`` (multi-modal disentangling), ``use_modulation`` (cross-modal adaptive
    modulation), ``use_dynamic_attention`` (dynamic cross-attention over histology scales) and
    ``use_gene_graph`` (CIGC-Graph).

    Variants of the parts (the defaults are diffst's; the others are our reading of the Diff-ST
    paper's description, ``--preset paper``):
    ``modulation`` ``"cell"`` (an affinity gate per raster cell on a FiLM scale/shift) or
    ``"window"`` (window-wise cross-modal affinity: within each LR cell's window of HR cells,
    ST features attend to histology features, :class:`~diffst.model.modulation.
    WindowModulation`); ``graph_edges`` ``"cosine"`` (co-expression intensity, top-8
    partners) or ``"paper"`` (shared-expression ratio, max-symmetrised, fused 0.98/0.02 with the
    co-expression intensity, all pairs; :func:`diffst.model.gene_graph.gene_adjacency`);
    ``learn_variance``: the U-Net also outputs, per gene and cell, the interpolation between
    the DDPM's two variance bounds (Nichol & Dhariwal 2021), trained by the VLB term of
    :class:`diffst.config.TrainConfig` (``vlb_weight``); samplers use the mean prediction only.

    ``upsampler`` is the HR base map ``lr_up`` that the model takes as input and refines (the
    diffusion variable is the residual to it): ``"bicubic"`` (bicubic interpolation of the
    scaled LR map) or ``"istar_like"`` (the iStar-like histology regression fitted on the slide's
    own LR map, redistributed to its LR counts; :mod:`diffst.model.upsampler`). Training
    sections get the same base from their own pooled maps, so it never sees HR truth.
    """

    n_genes: int = 20
    factor: int = 5
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    time_dim: int = 64
    cond_channels: int = 32
    tissue_px_per_cell: int = 4
    tile_px: int = 16
    n_tiles: int = 32
    attn_dim: int = 64
    attn_heads: int = 4
    graph_dim: int = 16
    graph_layers: int = 2
    use_disentangle: bool = True
    use_modulation: bool = True
    use_dynamic_attention: bool = True
    use_gene_graph: bool = True
    modulation: str = "cell"
    graph_edges: str = "cosine"
    learn_variance: bool = False
    upsampler: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        if self.modulation not in MODULATIONS:
            raise ValueError(f"model config: modulation must be one of {MODULATIONS}, got "
                             f"{self.modulation!r}")
        if self.graph_edges not in GRAPH_EDGES:
            raise ValueError(f"model config: graph_edges must be one of {GRAPH_EDGES}, got "
                             f"{self.graph_edges!r}")
        if self.upsampler not in UPSAMPLERS:
            raise ValueError(f"model config: upsampler must be one of {UPSAMPLERS}, got "
                             f"{self.upsampler!r}")
        for name in _POSITIVE:
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r}")
        if not self.channel_mults or any(int(m) != m or m < 1 for m in self.channel_mults):
            raise ValueError("model config: channel_mults must be positive integers, got "
                             f"{self.channel_mults!r}")
        if self.attn_dim % self.attn_heads:
            raise ValueError(f"model config: attn_dim {self.attn_dim} must be a multiple of "
                             f"attn_heads {self.attn_heads}")

    def to_dict(self) -> dict:
        """Plain-Python form for model files (tuples become lists)."""
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DiffSTConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


FROM_DATA = ("n_genes", "factor")
"""Architecture fields the trainer sets from the data, never a user's setting."""


def parse_model_setting(text: str) -> tuple[str, object]:
    """``"KEY=VALUE"`` -> ``(key, value)``, typed like :class:`DiffSTConfig`'s field ``key``:
    integers, ``true``/``false``, comma-separated integers for ``channel_mults``, words for the
    variant names. The value itself is checked when the config is built.

    Raises:
        ValueError: no ``=``, an unknown field, one set from the data (:data:`FROM_DATA`), or a
            value of the wrong kind; the message names the setting.
    """
    key, sep, raw = (part.strip() for part in text.partition("="))
    if not sep or not key or not raw:
        raise ValueError(f"model setting {text!r}: expected KEY=VALUE, e.g. channels=48")
    if key in FROM_DATA:
        raise ValueError(f"model setting {key!r} is set from the data, not by hand")
    defaults = {f.name: f.default for f in fields(DiffSTConfig)}
    if key not in defaults:
        choices = ", ".join(k for k in defaults if k not in FROM_DATA)
        raise ValueError(f"unknown model setting {key!r}: choose from {choices}")
    default = defaults[key]
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false"):
                raise ValueError
            return key, raw.lower() == "true"
        if isinstance(default, int):
            return key, int(raw)
        if isinstance(default, tuple):
            return key, tuple(int(x) for x in raw.split(","))
    except ValueError:
        kind = {bool: "true or false", int: "an integer"}.get(type(default),
                                                             "comma-separated integers")
        raise ValueError(f"model setting {key}: expected {kind}, got {raw!r}") from None
    return key, raw


@dataclass(frozen=True)
class SchedulerConfig:
    """The diffusion process a denoiser is trained for; validated at construction.

    ``schedule``, ``num_train_timesteps``, ``beta_start`` and ``beta_end`` define the
    :class:`~diffst.diffusion.schedule.NoiseSchedule` (``NoiseSchedule.from_config``). The
    diffusion variable is the scaled HR residual ``z0 = (hr - lr_up) / residual_scale``
    (per-gene scaled units); the trainer sets ``residual_scale`` from the data.

    ``prediction`` is what the U-Net outputs: ``"sample"`` (the clean residual, default),
    ``"epsilon"`` (the noise, as in DDPM and the Diff-ST paper) or ``"v"`` (velocity,
    ``sqrt(abar) eps - sqrt(1 - abar) x0``). All three train with the same MSE and use the same
    samplers. ``sample`` is the default because ST truth at sub-spot resolution is dominated by
    count noise that no model can predict; an epsilon-predicting network then learns slowly and
    its samples reproduce that noise, while a clean-sample network learns the conditional mean
    first (measured on the demo tissue, 500 CPU training steps: PCC 0.54 with ``sample``, 0.29
    with ``v``; ``epsilon`` reached 0.13 after 1000 steps; bicubic 0.36).
    """

    prediction: str = "sample"
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    residual_scale: float = 0.5

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"schedule must be one of {SCHEDULE_KINDS}, got {self.schedule!r}")
        steps = self.num_train_timesteps
        if isinstance(steps, bool) or int(steps) != steps or steps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {steps!r}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, "
                             f"{self.beta_end}")
        if not self.residual_scale > 0:
            raise ValueError(f"residual_scale must be positive, got {self.residual_scale!r}")

    def to_dict(self) -> dict:
        """Plain-Python form for model files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SchedulerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing ones take defaults."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown scheduler config keys: {sorted(unknown)}")
        return cls(**d)


def split_legacy_config(d: dict) -> tuple[dict, dict, dict]:
    """A model config dict of any version -> ``(architecture, scheduler, training)`` dicts.

    Model files of format version 1 hold the scheduler keys (:data:`SCHEDULER_KEYS`) and the
    disentangling loss weight in the model config; newer ones hold the architecture only.
    """
    arch = {k: v for k, v in d.items() if k not in SCHEDULER_KEYS + TRAINING_KEYS}
    sched = {k: d[k] for k in SCHEDULER_KEYS if k in d}
    train = {k: d[k] for k in TRAINING_KEYS if k in d}
    return arch, sched, train

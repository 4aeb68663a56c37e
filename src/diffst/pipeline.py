"""A trained Diff-ST model with everything inference needs, and its one model-file format.

:class:`DiffSTPipeline` holds the denoiser (network and architecture), the scheduler config
(noise schedule, prediction target, scale of the diffusion variable), the gene scaler and gene
list, the scale factor and the pixel geometry (HR cell size, image pixels per cell, working
image resolution, training patch) and whether it was trained spots-only. Training produces one
(:meth:`diffst.train.Trainer.pipeline`); :meth:`DiffSTPipeline.load` reads a model file and
:meth:`DiffSTPipeline.save` writes one; calling it super-resolves a whole sample
(:func:`diffst.infer.super_resolve`).

Model files are ``torch.save`` dicts read with ``torch.load(weights_only=True)`` (plain types
and tensors only) and written atomically. ``format`` is ``"diffst.model/N"``:

* version 1 (diffst 0.1): the model config holds the architecture, the scheduler keys
  (``prediction``, ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``residual_scale``)
  and the training loss weight ``disentangle_weight`` in one dict;
* version 2: ``model_config`` holds the architecture only and ``scheduler`` the scheduler.

Both versions also hold ``state_dict`` (EMA weights), ``scaler``, ``genes``, ``factor``, ``k``
(image pixels per HR cell), ``cell_um``, ``patch``, ``work_um_per_px``, ``spots_only`` and,
as a record of the training run (:data:`RECORD_KEYS`), ``trained_steps``, ``batch_size``,
from diffst 0.2 on ``counts_per_um2``, the training data's depth, and in newer files
``lr_counts_per_um2``, that depth with the data pooled by the factor (what
:func:`diffst.infer.depth_ratio` compares a slide with), and for a model trained with a
preset ``predict_settings``, the sampling settings of that preset
(:data:`diffst.config.PREDICT_SETTING_KEYS`). Files of an unknown or
newer version, and files lacking a key, raise :class:`ModelFileError` naming the problem.

This module imports nothing from :mod:`diffst.train` or :mod:`diffst.infer` at import time:
both build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from diffst.data.normalize import GeneScaler
from diffst.data.sample import SampleError
from diffst.io.atomic import atomic_path
from diffst.model.config import DiffSTConfig, SchedulerConfig, split_legacy_config
from diffst.model.diffst import DiffST
from diffst.tilestore import fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from diffst.data.sample import STSample
    from diffst.infer import SRResult

MODEL_FORMAT_NAME = "diffst.model"
MODEL_FORMAT_VERSION = 2
MODEL_FORMAT = f"{MODEL_FORMAT_NAME}/{MODEL_FORMAT_VERSION}"
"""The format string this diffst writes into model files."""

RECORD_KEYS = ("trained_steps", "batch_size", "counts_per_um2", "lr_counts_per_um2",
               "predict_settings")
_GEOMETRY_KEYS = ("genes", "factor", "k", "cell_um", "patch", "work_um_per_px", "spots_only")
MODEL_KEYS = {
    1: ("model_config", "state_dict", "scaler", *_GEOMETRY_KEYS),
    2: ("model_config", "state_dict", "scaler", "scheduler", *_GEOMETRY_KEYS),
}
"""The keys a model file of each format version must hold."""


class ModelFileError(SampleError):
    """A model file that cannot be used: foreign, damaged, of an unknown version or incomplete."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def safe_load(path: str | Path, expected_format: str, required: tuple[str, ...] = ()) -> dict:
    """``torch.load(weights_only=True)`` with clear errors for missing, foreign or damaged files.

    The file's ``format`` must equal ``expected_format``; ``required`` lists keys the file must
    hold (a missing one raises :class:`ModelFileError`).
    """
    state = _load_dict(path)
    if state.get("format") != expected_format:
        raise ModelFileError(f"{path}: expected a {expected_format} file, "
                             f"found {state.get('format')!r}")
    _check_keys(path, state, required)
    return state


def read_model_file(path: str | Path) -> dict:
    """The contents of a model file of any version this diffst reads (checked, not converted).

    Raises :class:`ModelFileError` for files of another kind, of a newer or unknown version
    and for files lacking a key of their version (:data:`MODEL_KEYS`).
    """
    state = _load_dict(path)
    version = model_format_version(path, state.get("format"))
    _check_keys(path, state, MODEL_KEYS[version])
    return state


def model_format_version(path: str | Path, fmt: Any) -> int:
    """The version number of the model format string ``fmt`` (error when not readable here)."""
    name, _, number = str(fmt).partition("/")
    if name != MODEL_FORMAT_NAME or not isinstance(fmt, str):
        raise ModelFileError(f"{path}: expected a {MODEL_FORMAT} file, found {fmt!r}")
    try:
        version = int(number)
    except ValueError:
        raise ModelFileError(f"{path}: unknown model format {fmt!r}") from None
    if version > MODEL_FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version} is newer than this diffst reads (up to "
            f"{MODEL_FORMAT_VERSION}); upgrade diffst to use this model")
    if version not in MODEL_KEYS:
        raise ModelFileError(f"{path}: unknown model format {fmt!r} (this diffst reads "
                             f"versions {sorted(MODEL_KEYS)})")
    return version


def atomic_torch_save(obj: dict, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (the file appears only once complete)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def _load_dict(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ModelFileError(f"{path}: not a readable diffst file ({exc})") from exc
    if not isinstance(state, dict):
        raise ModelFileError(f"{path}: not a diffst file (found {type(state).__name__!r})")
    return state


def _check_keys(path: str | Path, state: dict, required: tuple[str, ...]) -> None:
    missing = [k for k in required if k not in state]
    if missing:
        raise ModelFileError(f"{path}: the {state.get('format')} file lacks {missing}; it is "
                             "damaged or was written by an incompatible diffst version: train "
                             "or export it again")


@dataclass(kw_only=True)
class DiffSTPipeline:
    """A trained denoiser with everything inference needs (module docstring).

    Attributes:
        model: the denoiser (its architecture is ``model.config``), in eval mode on ``device``.
        scheduler: noise schedule, prediction target and ``residual_scale``.
        scaler: the per-gene scaler fitted on the training data.
        genes: the modelled genes, in the model's channel order.
        factor: the integer scale factor.
        k: image pixels per HR cell at ``work_um_per_px``.
        cell_um: the HR cell size of training, µm (the spot size for a spots-only model).
        patch: the training patch side in HR cells (the default tile size of inference).
        device: where the model runs.
        work_um_per_px: the image resolution the model works at, µm per pixel.
        spots_only: trained on spots pooled by the factor (no finer truth).
        record: how it was trained (``trained_steps``, ``batch_size``, ``counts_per_um2``: the
            training data's counts of the modelled genes per µm² of tissue, and
            ``lr_counts_per_um2``: the same with the data pooled by the factor), stored in the
            file.
    """

    model: DiffST
    scheduler: SchedulerConfig
    scaler: GeneScaler
    genes: list[str]
    factor: int
    k: int
    cell_um: float
    patch: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    work_um_per_px: float = 1.0
    spots_only: bool = False
    record: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.genes = list(self.genes)
        self.device = torch.device(self.device)
        if self.factor < 1 or self.k < 1 or self.patch < 1:
            raise ValueError(f"factor ({self.factor}), px per cell ({self.k}) and patch "
                             f"({self.patch}) must be positive")
        if self.patch % self.factor:
            raise ValueError(f"patch {self.patch} must be a multiple of the factor {self.factor}")
        if not (self.cell_um > 0 and self.work_um_per_px > 0):
            raise ValueError("cell_um and work_um_per_px must be positive")
        if len(self.genes) != self.model.config.n_genes:
            raise ValueError(f"{len(self.genes)} genes for a model of "
                             f"{self.model.config.n_genes}")

    @property
    def config(self) -> DiffSTConfig:
        """The denoiser's architecture."""
        return self.model.config

    def fingerprint(self) -> str:
        """Digest of the weights, genes, scaler and geometry (identifies the model in resumes)."""
        parts: list = [t.detach().cpu().contiguous().numpy() for t in
                       self.model.state_dict().values()]
        parts += [",".join(self.genes), self.scaler.lo, self.scaler.hi,
                  f"{self.scaler.log1p}{self.scaler.clip_max}{self.factor}{self.cell_um}"]
        return fingerprint(*parts)

    def to(self, device: str | torch.device) -> DiffSTPipeline:
        """Move the model to ``device`` (``"auto"``: CUDA when available); returns self."""
        self.device = resolve_device(device)
        self.model.to(self.device)
        return self

    # ------------------------------------------------------------------ model files
    def metadata(self) -> dict:
        """Everything of the model file except the format and the weights (plain types)."""
        return {
            "model_config": self.config.to_dict(),
            "scheduler": self.scheduler.to_dict(),
            "scaler": self.scaler.state_dict(),
            "genes": list(self.genes),
            "factor": int(self.factor),
            "k": int(self.k),
            "cell_um": float(self.cell_um),
            "work_um_per_px": float(self.work_um_per_px),
            "patch": int(self.patch),
            "spots_only": bool(self.spots_only),
            **self.record,
        }

    def save(self, path: str | Path) -> Path:
        """Write the model file (current format version, atomic); returns its path."""
        state = {"format": MODEL_FORMAT, **self.metadata(),
                 "state_dict": self.model.state_dict()}
        return atomic_torch_save(state, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> DiffSTPipeline:
        """Read a model file of any readable version (module docstring), weights only."""
        state = read_model_file(path)
        dev = resolve_device(device)
        try:
            arch, sched, _training = split_legacy_config(dict(state["model_config"]))
            if "scheduler" in state:
                sched = dict(state["scheduler"])
            config = DiffSTConfig.from_dict(arch)
            model = DiffST(config, np.eye(config.n_genes, dtype=np.float32))
            model.load_state_dict(state["state_dict"])
            record = {k: state[k] for k in RECORD_KEYS if k in state}
            return cls(model=model.to(dev).eval(), scheduler=SchedulerConfig.from_dict(sched),
                       scaler=GeneScaler.from_state_dict(state["scaler"]),
                       genes=list(state["genes"]), factor=int(state["factor"]),
                       k=int(state["k"]), cell_um=float(state["cell_um"]),
                       patch=int(state["patch"]), device=dev,
                       work_um_per_px=float(state["work_um_per_px"]),
                       spots_only=bool(state["spots_only"]), record=record)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{path}: the model file is damaged or inconsistent ({exc!r}); "
                                 "train or export it again") from exc

    # ------------------------------------------------------------------ inference
    def super_resolve(self, lr: STSample, **kwargs: Any) -> SRResult:
        """Super-resolve the whole sample ``lr``; keyword arguments as
        :func:`diffst.infer.super_resolve` (steps, sampler, n_samples, consistency, ...)."""
        from diffst.infer import super_resolve

        return super_resolve(self, lr, **kwargs)

    __call__ = super_resolve


__all__ = ["MODEL_FORMAT", "MODEL_FORMAT_VERSION", "DiffSTPipeline", "ModelFileError",
           "atomic_torch_save", "read_model_file", "resolve_device", "safe_load"]

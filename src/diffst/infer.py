"""Super-resolution of a whole sample with a trained Diff-ST model.

The HR raster is covered by overlapping ``P`` x ``P`` tiles (origins on the LR grid). For each
tile the conditioning is computed once, ``n_samples`` HR maps are drawn with the chosen sampler,
and per-tile statistics (mean, standard deviation, 5% and 95% quantiles, in counts per HR cell)
are blended into the slide with weights that fall off linearly towards tile borders, so
overlaps leave no seams. Only tiles that touch tissue are sampled; outside the mask the output
is 0. Memory is bounded by one batch of tiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffst.data.image import px_per_cell_for
from diffst.data.lr import hr_frame_affine
from diffst.data.normalize import GeneScaler
from diffst.data.patches import (
    PreparedSample,
    collate,
    extract_patch,
    pad_prepared,
    prepare_inference_sample,
)
from diffst.data.sample import SampleError, STSample
from diffst.diffusion.samplers import make_sampler
from diffst.diffusion.schedule import NoiseSchedule
from diffst.model.config import DiffSTConfig
from diffst.model.diffst import DiffST
from diffst.train import MODEL_FORMAT, Trainer, resolve_device, safe_load


@dataclass
class LoadedModel:
    """A trained denoiser with everything inference needs."""

    model: DiffST
    scaler: GeneScaler
    genes: list[str]
    factor: int
    k: int
    cell_um: float
    patch: int
    device: torch.device
    work_um_per_px: float = 1.0
    spots_only: bool = False

    @property
    def config(self) -> DiffSTConfig:
        """The denoiser's configuration."""
        return self.model.config


def load_model(path: str | Path, device: str = "auto") -> LoadedModel:
    """Load a model file written by :meth:`diffst.train.Trainer.export_model` (weights only)."""
    state = safe_load(path, MODEL_FORMAT)
    dev = resolve_device(device)
    config = DiffSTConfig.from_dict(state["model_config"])
    g = config.n_genes
    model = DiffST(config, np.eye(g, dtype=np.float32))
    model.load_state_dict(state["state_dict"])
    return LoadedModel(model.to(dev).eval(), GeneScaler.from_state_dict(state["scaler"]),
                       list(state["genes"]), int(state["factor"]), int(state["k"]),
                       float(state["cell_um"]), int(state["patch"]), dev,
                       float(state["work_um_per_px"]), bool(state["spots_only"]))


def model_from_trainer(trainer: Trainer) -> LoadedModel:
    """The EMA model of a training run, ready for inference."""
    return LoadedModel(trainer.ema.eval(), trainer.scaler, trainer.genes, trainer.factor,
                       trainer.k, trainer.cell_um, trainer.tc.patch, trainer.device,
                       trainer.tc.work_um_per_px, trainer.spots_only)


@dataclass
class SRResult:
    """Super-resolved maps on the HR raster, counts per HR cell, ``(G, H, W)`` each."""

    mean: np.ndarray
    std: np.ndarray
    q05: np.ndarray
    q95: np.ndarray
    mask: np.ndarray
    genes: list[str]
    cell_um: float
    affine: np.ndarray
    meta: dict = field(default_factory=dict)

    def layers(self) -> dict[str, np.ndarray]:
        """The maps by name (for writers)."""
        return {"mean": self.mean, "std": self.std, "q05": self.q05, "q95": self.q95}

    def as_sample(self, lr: STSample, name: str | None = None) -> STSample:
        """The mean map as an :class:`STSample` on the HR raster with ``lr``'s image."""
        return STSample(expr=self.mean, genes=self.genes, cell_um=self.cell_um, mask=self.mask,
                        image=lr.image, image_um_per_px=lr.image_um_per_px, affine=self.affine,
                        name=name or f"{lr.name}_sr", meta=dict(self.meta))


def tile_origins(length: int, patch: int, stride: int, factor: int) -> list[int]:
    """Tile starts along one axis covering ``[0, length)``; all multiples of ``factor``."""
    if length <= patch:
        return [0]
    stride = max(factor, (stride // factor) * factor)
    starts = list(range(0, length - patch + 1, stride))
    last = ((length - patch) // factor) * factor
    if starts[-1] != last:
        starts.append(last)
    return starts


def blend_window(patch: int, overlap: int) -> np.ndarray:
    """``(P, P)`` blending weights: 1 in the middle, falling linearly over ``overlap`` cells."""
    ramp = np.ones(patch)
    if overlap > 0:
        edge = (np.arange(overlap) + 0.5) / overlap
        ramp[:overlap] = np.minimum(ramp[:overlap], edge)
        ramp[-overlap:] = np.minimum(ramp[-overlap:], edge[::-1])
    return np.outer(ramp, ramp)


@torch.no_grad()
def sample_tiles(lm: LoadedModel, batch: dict[str, torch.Tensor], n_samples: int,
                 steps: int, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n_samples`` scaled HR maps per tile: ``(B, K, G, P, P)``."""
    cfg = lm.config
    batch = {k: v.to(lm.device) for k, v in batch.items()}
    cond = lm.model.encode(batch["lr"], batch["lr_up"], batch["mask"], batch["tissue_image"],
                           batch["tiles"], batch["tile_centres"], batch["tile_valid"])
    cond = cond.repeat(n_samples)
    schedule = NoiseSchedule(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)
    lr_up = batch["lr_up"].repeat_interleave(n_samples, 0)
    rs, top = cfg.residual_scale, lm.scaler.clip_max

    def project(z0: torch.Tensor) -> torch.Tensor:
        """Keep the HR estimate ``lr_up + rs * z0`` inside the scaled data range."""
        return ((lr_up + rs * z0).clamp(0, top) - lr_up) / rs

    solver = make_sampler(sampler, schedule, steps, clip_x0=project)
    b, g, p, _ = batch["lr_up"].shape
    z = solver.sample(lambda x, t: lm.model(x, t, cond), (b * n_samples, g, p, p),
                      generator=generator, device=lm.device)
    hr = (lr_up + rs * z).clamp(0, top)
    return hr.view(b, n_samples, g, p, p).float().cpu()


def super_resolve(
    lm: LoadedModel,
    lr: STSample,
    *,
    steps: int = 20,
    sampler: str = "ddim",
    n_samples: int = 1,
    patch: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    hr_mask: np.ndarray | None = None,
    seed: int = 0,
    progress: bool = True,
) -> SRResult:
    """Super-resolve an LR sample by the model's factor.

    Args:
        lm: a loaded model.
        lr: the measured LR sample (counts per LR cell) with its H&E image; must contain the
            model's genes (others are ignored).
        steps: sampler steps (respaced from the training schedule).
        sampler: ``ddim`` (default), ``dpmpp`` or ``ddpm``.
        n_samples: samples per tile for the mean/std/quantile maps.
        patch: tile side in HR cells (default: the training patch size); ``overlap`` HR cells
            shared by neighbouring tiles
            (default a quarter of the tile, rounded to the factor).
        hr_mask: ``(H, W)`` HR tissue mask; default the LR mask repeated.
        seed: seeds the sampler noise (each tile gets ``seed + tile index``).

    Returns:
        An :class:`SRResult` on the HR raster ``(lr.H * factor, lr.W * factor)``.
    """
    f = lm.factor
    if not lm.spots_only and not np.isclose(lr.cell_um, lm.cell_um * f, rtol=0.05):
        raise SampleError(
            f"sample '{lr.name}': LR cells are {lr.cell_um:g} µm but the model expects "
            f"{lm.cell_um * f:g} µm (HR {lm.cell_um:g} µm x factor {f})"
        )
    lr = lr.select_genes(lm.genes)
    patch = patch or lm.patch
    overlap = (patch // 4 // f) * f if overlap is None else overlap
    k = px_per_cell_for(lr.cell_um / f, lm.work_um_per_px) if lm.spots_only else lm.k
    prep = prepare_inference_sample(lr, f, lm.scaler, k, hr_mask=hr_mask)
    return _blend(lm, prep, lr, patch, overlap, steps, sampler, n_samples, batch_size, seed,
                  progress)


def _blend(lm: LoadedModel, prep: PreparedSample, lr: STSample, patch: int, overlap: int,
           steps: int, sampler: str, n_samples: int, batch_size: int, seed: int,
           progress: bool) -> SRResult:
    cfg = lm.config
    h, w = prep.shape
    padded = pad_prepared(prep, patch)
    ph, pw = padded.shape
    origins = [(r, c) for r in tile_origins(ph, patch, patch - overlap, prep.factor)
               for c in tile_origins(pw, patch, patch - overlap, prep.factor)]
    origins = [(r, c) for r, c in origins if padded.mask[r : r + patch, c : c + patch].any()]
    window = blend_window(patch, overlap)
    g = len(lm.genes)
    acc = {k: np.zeros((g, ph, pw), np.float64) for k in ("mean", "std", "q05", "q95")}
    weight = np.zeros((ph, pw), np.float64)
    bar = tqdm(total=len(origins) * steps, desc="sample", disable=not progress,
               dynamic_ncols=True, unit="step")
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        batch = collate([extract_patch(padded, r, c, patch, cfg.tissue_px_per_cell,
                                       cfg.tile_px, cfg.n_tiles) for r, c in chunk])
        gen = torch.Generator().manual_seed(seed + start)
        draws = sample_tiles(lm, batch, n_samples, steps, sampler, gen).numpy()
        for (r, c), tile in zip(chunk, draws, strict=True):
            counts = lm.scaler.inverse(tile.swapaxes(0, 1)).swapaxes(0, 1)
            stats = tile_statistics(counts)
            for key, val in stats.items():
                acc[key][:, r : r + patch, c : c + patch] += val * window
            weight[r : r + patch, c : c + patch] += window
        bar.update(len(chunk) * steps)
    bar.close()
    inside = prep.mask
    out = {}
    for key, val in acc.items():
        blended = val[:, :h, :w] / np.maximum(weight[:h, :w], 1e-12)
        out[key] = np.where(inside, blended, 0).astype(np.float32)
    affine = hr_frame_affine(lr, prep.factor)
    return SRResult(mean=out["mean"], std=out["std"], q05=out["q05"], q95=out["q95"],
                    mask=inside, genes=list(lm.genes), cell_um=lr.cell_um / prep.factor,
                    affine=affine,
                    meta={"factor": prep.factor, "steps": steps, "sampler": sampler,
                          "n_samples": n_samples, "patch": patch, "overlap": overlap})


def tile_statistics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, std, 5% and 95% quantiles over samples: ``(K, G, P, P)`` -> 4 x ``(G, P, P)``."""
    q05, q95 = np.quantile(counts, [0.05, 0.95], axis=0)
    return {"mean": counts.mean(0), "std": counts.std(0), "q05": q05, "q95": q95}

"""Histology-guided regression baseline: Diff-ST's networks trained with MSE, no diffusion.

This baseline answers "does the diffusion part help, or would the same encoders trained as a
plain regressor do as well?". It uses exactly Diff-ST's conditioning path
(:meth:`diffst.model.diffst.DiffST.encode`: CIGC-Graph, ST encoder, tissue/cell histology
encoders, dynamic cross-attention, disentangling, modulation) and the same conditional U-Net,
but the U-Net is fed zeros for the noisy input and step ``t = 0`` and predicts the scaled HR
residual ``z0 = (hr - lr_up) / residual_scale`` directly. Training reuses
:class:`diffst.train.Trainer` unchanged except for the loss: the same patch sampler and
augmentations, curriculum, AdamW, gradient clipping and EMA, and the same step budget. The
loss is the masked MSE of the residual (per-gene scaled units) plus Diff-ST's weighted
disentangling loss and, where training has one (``TrainConfig.consistency_weight``), the same
weighted spot-consistency loss (:meth:`diffst.train.Trainer.consistent_mse`).

Prediction covers the HR raster with the tiler of :mod:`diffst.infer` (``tissue_tile_origins``,
``tile_batch``, ``TileBlender``: the same tiles and blending as Diff-ST's whole-slide inference)
and one deterministic forward pass per tile instead of a sampler; outside the tissue mask the
output is 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffst.data.patches import PatchBatch, pad_prepared, prepare_inference_sample
from diffst.data.sample import SampleError, STSample
from diffst.infer import TileBlender, default_overlap, tile_batch, tissue_tile_origins
from diffst.model.diffst import Condition, DiffST
from diffst.model.upsampler import upsampler_for
from diffst.train import Trainer, curriculum_keep, masked_mse

__all__ = ["HistologyRegression", "regress"]


def regress(model: DiffST, cond: Condition) -> torch.Tensor:
    """The model's direct residual estimate ``(B, G, P, P)``: U-Net at ``z_t = 0``, ``t = 0``."""
    zeros = torch.zeros_like(cond.lr_refined)
    t = torch.zeros(zeros.shape[0], dtype=torch.long, device=zeros.device)
    return model(zeros, t, cond)


class HistologyRegression(Trainer):
    """Diff-ST's encoders + U-Net trained as a regressor (see the module docstring).

    Constructed like :class:`diffst.train.Trainer` (samples with HR truth, genes, factor,
    :class:`~diffst.model.config.DiffSTConfig`, :class:`~diffst.train.TrainConfig`); train with
    :meth:`fit` and predict whole samples with :meth:`predict`.
    """

    def loss(self, model: DiffST, batch: PatchBatch, tile_fraction: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Masked MSE of the predicted scaled residual plus the disentangling loss and, with
        ``consistency_weight``, the weighted loss of :meth:`consistent_mse` (as Diff-ST's)."""
        keep = curriculum_keep(batch.tile_valid, tile_fraction, self.tc.curriculum_order)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.tc.bf16):
            cond = model.encode_batch(batch, keep)
            out = regress(model, cond)
        z0 = (batch.hr - batch.lr_up) / self.scheduler_config.residual_scale
        w = batch.mask
        out = out.float()
        loss = masked_mse(out, z0, w) + self.tc.disentangle_weight * cond.aux_loss.float()
        if self.tc.consistency_weight:
            loss = loss + self.tc.consistency_weight * self.consistent_mse(out, batch)
        return loss

    def export_model(self, path: str | Path) -> Path:
        """Not supported: a regression model is not a diffusion model file."""
        raise NotImplementedError(
            f"{path}: the regression baseline cannot be exported as a Diff-ST model file; "
            "use HistologyRegression.predict in the same process"
        )

    @torch.no_grad()
    def predict_tiles(self, batch: PatchBatch) -> np.ndarray:
        """HR estimates of a batch of patches: ``(B, G, P, P)`` counts per HR cell (EMA model)."""
        model = self.ema.eval()
        batch = batch.to(self.device)
        cond = model.encode_batch(batch, batch.tile_valid)
        rs, top = self.scheduler_config.residual_scale, self.scaler.clip_max
        hr = (batch.lr_up + rs * regress(model, cond).float()).clamp(0, top).cpu().numpy()
        return self.scaler.inverse(hr, axis=1)

    def predict(self, lr: STSample, hr_mask: np.ndarray | None = None, batch_size: int = 8,
                overlap: int | None = None) -> np.ndarray:
        """Super-resolve an LR sample by the training factor.

        Args:
            lr: LR sample (counts per LR cell, ``factor`` x the training cell size) with its
                H&E image; must contain the trained genes.
            hr_mask: ``(H, W)`` HR tissue mask (``H = lr.H * factor``); default the LR mask
                repeated.
            batch_size: tiles per forward pass.
            overlap: HR cells shared by neighbouring tiles (default a quarter of the patch,
                rounded down to the factor).

        Returns:
            ``(G, H, W)`` float32 counts per HR cell on the padded HR raster; 0 outside the mask.
        """
        f, patch = self.factor, self.tc.patch
        if not np.isclose(lr.cell_um, self.cell_um * f, rtol=0.05):
            raise SampleError(
                f"sample '{lr.name}': LR cells are {lr.cell_um:g} µm but the regression model "
                f"expects {self.cell_um * f:g} µm (HR {self.cell_um:g} µm x factor {f})"
            )
        lr = lr.select_genes(self.genes)
        overlap = default_overlap(patch, f) if overlap is None else overlap
        prep = prepare_inference_sample(lr, f, self.scaler, self.k, hr_mask=hr_mask,
                                        upsampler=upsampler_for(self.model_config.upsampler))
        padded = pad_prepared(prep, patch)
        origins = tissue_tile_origins(padded.mask, patch, overlap, f)
        blender = TileBlender(("mean",), len(self.genes), padded.shape, patch, overlap,
                              np.float64)
        for start in range(0, len(origins), batch_size):
            chunk = origins[start : start + batch_size]
            batch = tile_batch(padded, chunk, patch, self.model_config)
            for (r, c), tile in zip(chunk, self.predict_tiles(batch), strict=True):
                blender.add(r, c, {"mean": tile})
        return blender.pop("mean", prep.mask).astype(np.float32)

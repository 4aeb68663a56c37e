"""Spot consistency: make a super-resolved map sum-pool back to the measured LR counts.

Every LR cell (a measured spot or pooled bin) covers ``s`` x ``s`` HR cells. A map ``x`` of
non-negative counts per HR cell is *consistent* with LR counts ``y`` when, for every LR cell that
contains at least one HR tissue cell, the HR tissue cells inside it add up to ``y``.

The projection used here is a redistribution within each LR cell: the HR values are multiplied by
``y / sum`` so the cell's pattern is kept and its total matches the measurement. An LR cell whose
predicted sum is 0 but whose count is positive gets its count spread evenly over its HR tissue
cells. LR cells with count 0 become 0. Per LR cell this is the affine map ``x -> a x + b`` with
``a >= 0`` (see :func:`consistency_maps`), so applying the same map to a mean and its quantiles
keeps their order. Counts of LR cells without any HR tissue cell cannot be placed (they lie
outside the output mask); :func:`unplaced_counts` reports them.
"""

from __future__ import annotations

import numpy as np
import torch

from diffst.data.lr import pool_sum, upsample_nearest


def pool_cells(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Sum-pool the last two axes by ``factor``: ``(..., H, W)`` -> ``(..., H/s, W/s)``
    (:func:`diffst.data.lr.pool_sum`)."""
    return pool_sum(x, factor)


def spread_cells(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Repeat each LR value over its HR cells: ``(..., h, w)`` -> ``(..., h*s, w*s)``
    (:func:`diffst.data.lr.upsample_nearest`)."""
    return upsample_nearest(x, factor)


def consistency_maps(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-LR-cell ``(scale, fill)`` so that ``scale * x + fill`` (on tissue) pools to ``target``.

    Args:
        x: ``(..., G, H, W)`` non-negative counts per HR cell (values off ``mask`` are ignored).
        target: ``(..., G, H/s, W/s)`` measured counts per LR cell.
        mask: HR tissue mask broadcastable to ``x`` (e.g. ``(H, W)`` or ``(B, 1, H, W)``).
        factor: the scale factor s.

    Returns:
        ``scale`` and ``fill``, both shaped like ``target``: ``scale = target / sum`` where the
        predicted sum is positive (else 0), ``fill = target / n_tissue`` where the sum is 0 and
        the LR cell has tissue (else 0).
    """
    m = mask.to(x.dtype)
    total = pool_cells(x * m, factor)
    n_tissue = pool_cells(m, factor)
    target = target.to(x.dtype)
    positive = total > 0
    scale = torch.where(positive, target / torch.where(positive, total, 1), 0)
    empty = ~positive & (n_tissue > 0)
    fill = torch.where(empty, target / n_tissue.clamp_min(1), 0)
    return scale, fill


def apply_maps(x: torch.Tensor, scale: torch.Tensor, fill: torch.Tensor, mask: torch.Tensor,
               factor: int, add_fill: bool = True) -> torch.Tensor:
    """``spread(scale) * x + spread(fill)`` on tissue, 0 off it (``add_fill=False`` for spreads
    such as a standard deviation, which are only rescaled)."""
    m = mask.to(x.dtype)
    out = spread_cells(scale, factor) * x * m
    if add_fill:
        out = out + spread_cells(fill, factor) * m
    return out


def redistribute(x: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                 factor: int) -> torch.Tensor:
    """Project ``x`` ``(..., G, H, W)`` onto maps that sum-pool to ``target`` (module docstring)."""
    scale, fill = consistency_maps(x, target, mask, factor)
    return apply_maps(x, scale, fill, mask, factor)


def redistribute_np(x: np.ndarray, target: np.ndarray, mask: np.ndarray,
                    factor: int) -> np.ndarray:
    """NumPy form of :func:`redistribute` (computed in float64, returned as float64)."""
    out = redistribute(torch.from_numpy(np.asarray(x, np.float64)),
                       torch.from_numpy(np.asarray(target, np.float64)),
                       torch.from_numpy(np.asarray(mask, bool)), factor)
    return out.numpy()


def unplaced_counts(target: np.ndarray, mask: np.ndarray, factor: int) -> float:
    """Total LR counts ``(G, h, w)`` in LR cells with no HR tissue cell (``mask`` ``(H, W)``)."""
    n_tissue = pool_cells(torch.from_numpy(np.asarray(mask, np.float64)), factor).numpy()
    return float(np.asarray(target, np.float64)[:, n_tissue == 0].sum())


def max_relative_error(x: np.ndarray, target: np.ndarray, mask: np.ndarray, factor: int) -> float:
    """Largest ``|pool(x) - target| / max(target, 1)`` over LR cells that contain tissue."""
    pooled = pool_cells(torch.from_numpy(np.asarray(x, np.float64) * mask), factor).numpy()
    has_tissue = pool_cells(torch.from_numpy(np.asarray(mask, np.float64)), factor).numpy() > 0
    t = np.asarray(target, np.float64)
    err = np.abs(pooled - t) / np.maximum(np.abs(t), 1.0)
    return float(err[:, has_tissue].max()) if has_tissue.any() else 0.0

"""TESLA-style baseline: histology-aware weighted mean of nearby LR cells.

Each HR cell takes a weighted mean of the densities (``count / s**2``) of the tissue LR cells whose
centres lie within ``radius`` LR cells of the HR cell centre. The weight of LR cell ``j`` for HR
cell ``i`` is

    ``w_ij = exp(-d_ij**2 / (2 * distance_sigma**2)
                 - colour_weight * c_ij**2 / (2 * colour_sigma**2))``

with ``d_ij`` the centre distance in LR cell units and ``c_ij`` the Euclidean distance between
the mean RGB (in [0, 1]) of the H&E under HR cell ``i`` and under LR cell ``j``. Defaults:
``radius = 2`` LR cells, ``distance_sigma = 1`` LR cell, ``colour_sigma = 0.1`` (about 25 grey
levels per channel), ``colour_weight = 1``; ``colour_weight = 0`` gives a purely spatial Gaussian
mean. The computation loops over the ``(2R+1)**2`` neighbour offsets and is vectorised over genes
and HR cells.
"""

from __future__ import annotations

import math

import numpy as np

from diffst.baselines.interpolation import hr_centres_in_lr, lr_density
from diffst.data.features import hr_colours
from diffst.data.lr import check_geometry, finish
from diffst.data.sample import STSample


def tesla_like(
    lr_sample: STSample,
    factor: int,
    hr_shape: tuple[int, int],
    *,
    radius: float = 2.0,
    distance_sigma: float = 1.0,
    colour_sigma: float = 0.1,
    colour_weight: float = 1.0,
    px_per_hr_cell: int = 4,
    hr_rgb: np.ndarray | None = None,
) -> np.ndarray:
    """Histology-weighted neighbour mean of LR densities at every HR cell.

    Args:
        lr_sample: LR sample with an H&E image (``expr`` ``(G, h, w)`` counts per LR cell).
        factor: s, HR cells per LR cell edge.
        hr_shape: ``(H, W)`` HR raster.
        radius: neighbourhood radius in LR cells (centre distance).
        distance_sigma: spatial Gaussian bandwidth in LR cells.
        colour_sigma: colour Gaussian bandwidth (RGB distance, channels in [0, 1]).
        colour_weight: multiplier of the colour term (0 = spatial only).
        px_per_hr_cell: image pixels per HR cell used to average colours.
        hr_rgb: optional precomputed ``(h*s, w*s, 3)`` mean colours (from
            :func:`diffst.data.features.hr_colours`); skips reading the image.

    Returns:
        ``(G, H, W)`` float32 counts per HR cell.
    """
    s = check_geometry(lr_sample, factor, hr_shape)
    if radius < 0 or distance_sigma <= 0 or colour_sigma <= 0 or colour_weight < 0:
        raise ValueError(
            "tesla_like: radius, colour_weight must be >= 0 and the sigmas > 0, got "
            f"radius={radius}, distance_sigma={distance_sigma}, colour_sigma={colour_sigma}, "
            f"colour_weight={colour_weight}"
        )
    h, w = lr_sample.shape
    full = (h * s, w * s)
    dens = lr_density(lr_sample, s)
    if colour_weight > 0:
        rgb = hr_colours(lr_sample, s, px_per_hr_cell) if hr_rgb is None else hr_rgb
        rgb = np.asarray(rgb, dtype=np.float64)
        if rgb.shape != (*full, 3):
            raise ValueError(f"tesla_like: hr_rgb must have shape {(*full, 3)}, got {rgb.shape}")
        lr_rgb = rgb.reshape(h, s, w, s, 3).mean(axis=(1, 3))
    rows, cols = hr_centres_in_lr(full, s)
    own_r, own_c = np.arange(full[0]) // s, np.arange(full[1]) // s
    reach = int(math.floor(radius + 0.5))

    terms = []  # (log-weight with -inf where invalid, neighbour rows, neighbour cols)
    for dr in range(-reach, reach + 1):
        nr = own_r + dr
        ok_r = (nr >= 0) & (nr < h)
        nr_c = np.clip(nr, 0, h - 1)
        d2_r = (rows - nr) ** 2
        for dc in range(-reach, reach + 1):
            nc = own_c + dc
            ok_c = (nc >= 0) & (nc < w)
            nc_c = np.clip(nc, 0, w - 1)
            d2 = d2_r[:, None] + ((cols - nc) ** 2)[None, :]
            valid = ok_r[:, None] & ok_c[None, :] & (d2 <= radius**2)
            valid &= lr_sample.mask[nr_c[:, None], nc_c[None, :]]
            if not valid.any():
                continue
            logw = -d2 / (2 * distance_sigma**2)
            if colour_weight > 0:
                diff = rgb - lr_rgb[nr_c[:, None], nc_c[None, :]]
                logw = logw - colour_weight * (diff**2).sum(axis=2) / (2 * colour_sigma**2)
            terms.append((np.where(valid, logw, -np.inf), nr_c, nc_c))
    num = np.zeros((dens.shape[0], *full))
    den = np.zeros(full)
    if terms:
        # subtract the per-cell maximum so strong colour terms cannot underflow every weight
        top = np.max([t[0] for t in terms], axis=0)
        top = np.where(np.isfinite(top), top, 0.0)
        for logw, nr_c, nc_c in terms:
            wgt = np.exp(logw - top)
            num += wgt[None] * dens[:, nr_c[:, None], nc_c[None, :]]
            den += wgt
    out = np.divide(num, den[None], out=np.zeros_like(num), where=den[None] > 0)
    return finish(out, lr_sample, s, hr_shape)

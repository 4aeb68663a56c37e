"""Image-free baselines: nearest LR cell and bicubic interpolation.

Geometry (as produced by :func:`diffst.data.lr.simulate_lr`, checked by
:func:`diffst.data.lr.check_geometry`): LR cell ``(i, j)`` covers HR cells
``(i*s .. i*s+s-1, j*s .. j*s+s-1)``, so HR cell ``(r, c)`` lies in LR cell ``(r // s, c // s)``
and its centre has LR coordinates ``((r + 0.5) / s - 0.5, (c + 0.5) / s - 0.5)``. LR values are
counts per LR cell; the LR *density* ``value / s**2`` is the mean count per HR cell.

Every baseline returns counts per HR cell on the requested HR raster ``hr_shape`` (the padded
raster ``h*s x w*s`` cropped at the bottom/right). HR cells whose LR cell is outside the LR
tissue mask were never measured and are set to 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from diffst.data.lr import check_geometry, finish, upsample_nearest
from diffst.data.sample import SampleError, STSample


def lr_density(lr_sample: STSample, factor: int) -> np.ndarray:
    """LR counts per LR cell ``(G, h, w)`` -> mean counts per HR cell ``(G, h, w)`` float64."""
    return lr_sample.expr.astype(np.float64) / float(factor) ** 2


def fill_outside_tissue(density: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Give non-tissue LR cells the value of the nearest tissue cell (Euclidean), ``(G, h, w)``."""
    if mask.all():
        return density
    if not mask.any():
        raise SampleError("the LR tissue mask is empty; nothing to interpolate")
    _, (ri, ci) = ndimage.distance_transform_edt(~mask, return_indices=True)
    return density[:, ri, ci]


def hr_centres_in_lr(hr_shape: tuple[int, int], factor: int) -> tuple[np.ndarray, np.ndarray]:
    """LR coordinates of HR cell centres: rows ``(H,)`` and columns ``(W,)``."""
    s = float(factor)
    return (np.arange(hr_shape[0]) + 0.5) / s - 0.5, (np.arange(hr_shape[1]) + 0.5) / s - 0.5


def spot_constant(lr_sample: STSample, factor: int, hr_shape: tuple[int, int]) -> np.ndarray:
    """Every HR cell gets its LR cell's count divided by ``s**2``.

    Args:
        lr_sample: LR sample, ``expr`` ``(G, h, w)`` counts per LR cell.
        factor: s, HR cells per LR cell edge.
        hr_shape: ``(H, W)`` HR raster, ``ceil(H/s) == h`` and ``ceil(W/s) == w``.

    Returns:
        ``(G, H, W)`` float32 counts per HR cell; sum-pooling the uncropped result gives the LR
        counts back exactly.
    """
    s = check_geometry(lr_sample, factor, hr_shape)
    return finish(upsample_nearest(lr_density(lr_sample, s), s), lr_sample, s, hr_shape)


def bicubic(lr_sample: STSample, factor: int, hr_shape: tuple[int, int]) -> np.ndarray:
    """Bicubic interpolation of the LR density at HR cell centres.

    The LR density (``count / s**2``) is interpolated separably with the Keys cubic-convolution
    kernel (``a = -0.5``, the usual "bicubic" of image resizing; 4 x 4 LR cells per HR cell, exact
    for linear and quadratic trends) at HR cell centres in LR coordinates ``(r + 0.5)/s - 0.5``.
    Beyond the raster edge the nearest edge cell is repeated. To keep the tissue border from
    being dragged towards zero, non-tissue LR cells are first filled with the value of the nearest
    tissue LR cell. Cubic overshoot below zero is clipped to 0 (counts cannot be negative).

    Args / Returns: as :func:`spot_constant`.
    """
    s = check_geometry(lr_sample, factor, hr_shape)
    dens = fill_outside_tissue(lr_density(lr_sample, s), lr_sample.mask)
    h, w = lr_sample.shape
    rows, cols = hr_centres_in_lr((h * s, w * s), s)
    a_rows, a_cols = cubic_matrix(rows, h), cubic_matrix(cols, w)
    out = np.einsum("ri,gij,cj->grc", a_rows, dens, a_cols, optimize=True)
    return finish(np.maximum(out, 0.0), lr_sample, s, hr_shape)


def cubic_matrix(coords: np.ndarray, n: int, a: float = -0.5) -> np.ndarray:
    """``(len(coords), n)`` Keys cubic-convolution weights for sampling ``n`` cells at ``coords``.

    Taps beyond ``[0, n - 1]`` are folded onto the nearest edge cell (edge replication).
    """
    base = np.floor(coords).astype(int)
    frac = coords - base
    out = np.zeros((len(coords), n))
    rows = np.arange(len(coords))
    for tap in (-1, 0, 1, 2):
        np.add.at(out, (rows, np.clip(base + tap, 0, n - 1)), _keys(frac - tap, a))
    return out


def _keys(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))

"""Low-resolution (LR) simulation by sum-pooling a high-resolution (HR) raster, and the geometry
of the HR raster an LR sample refines (:func:`check_geometry`, :func:`finish`)."""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

import numpy as np

from diffst.data.sample import SampleError, STSample

ArrayLike = TypeVar("ArrayLike")
"""A NumPy array or a torch tensor (the functions that take either return the same type)."""


def pool_sum(expr: ArrayLike, factor: int) -> ArrayLike:
    """Sum-pool the last two axes by an integer ``factor`` (NumPy array or torch tensor).

    This is the one pooling implementation (:func:`diffst.consistency.pool_cells` uses it).

    Args:
        expr: ``(..., H, W)`` counts; H and W must be multiples of ``factor``.
        factor: integer scale s >= 1.

    Returns:
        ``(..., H // s, W // s)`` counts of the input's type; totals are preserved exactly.
    """
    factor = _check_factor(factor)
    h, w = expr.shape[-2:]
    if h % factor or w % factor:
        raise SampleError(f"raster {h}x{w} is not a multiple of the scale factor {factor}")
    shp = tuple(expr.shape[:-2]) + (h // factor, factor, w // factor, factor)
    return expr.reshape(shp).sum(axis=(-3, -1))


def padded_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """``(H, W)`` mask zero-padded (bottom/right) to multiples of ``factor``."""
    factor = _check_factor(factor)
    h, w = mask.shape
    return np.pad(mask, ((0, (-h) % factor), (0, (-w) % factor)))


def pool_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """``(H, W)`` bool -> ``(H/s, W/s)``: an LR cell is tissue when any of its HR cells is."""
    return pool_sum(mask.astype(np.int32), factor) > 0


def pad_to_multiple(sample: STSample, factor: int) -> STSample:
    """Pad the raster (bottom/right, with zeros outside the mask) to multiples of ``factor``."""
    factor = _check_factor(factor)
    h, w = sample.shape
    ph, pw = (-h) % factor, (-w) % factor
    if ph == 0 and pw == 0:
        return sample
    expr = np.pad(sample.expr, ((0, 0), (0, ph), (0, pw)))
    mask = np.pad(sample.mask, ((0, ph), (0, pw)))
    return replace(sample, expr=expr, mask=mask, meta=dict(sample.meta))


def simulate_lr(sample: STSample, factor: int) -> STSample:
    """Simulate the LR measurement of an HR sample: sum-pool counts by ``factor``.

    The raster is first zero-padded to a multiple of ``factor``. The LR sample covers the same
    tissue with cells ``factor`` times larger; its affine maps LR raster coordinates to the
    same image pixels. An LR cell is under tissue when any HR cell inside it is.
    """
    if _check_factor(factor) > max(sample.shape):
        raise SampleError(f"sample '{sample.name}': scale factor {factor} exceeds the raster "
                          f"{sample.shape[0]}x{sample.shape[1]}; choose a factor that fits")
    hr = pad_to_multiple(sample, factor)
    s = float(factor)
    # LR centre (c, r) sits at HR coordinate (s*c + (s-1)/2, s*r + (s-1)/2).
    lr_to_hr = np.array([[s, 0, (s - 1) / 2], [0, s, (s - 1) / 2], [0, 0, 1.0]])
    meta = dict(sample.meta, lr_factor=int(factor), lr_of=sample.name)
    return replace(
        hr,
        expr=pool_sum(hr.expr, factor),
        mask=pool_mask(hr.mask, factor),
        cell_um=sample.cell_um * factor,
        affine=hr.affine @ lr_to_hr,
        name=f"{sample.name}_lr{factor}",
        meta=meta,
    )


def grid_shifted(samples: list[STSample], factor: int, shifts: int) -> list[STSample]:
    """``samples``, each followed by copies whose pooling by ``factor`` falls on other grids.

    With ``shifts`` = n every sample appears n * n times: cropped by ``(dy, dx)`` raster cells
    at the top and left, for ``dy`` and ``dx`` in ``round(i * factor / n)``, ``i < n`` (the
    ``(0, 0)`` copy is the sample itself). Sum-pooling a copy by ``factor`` gives LR cells that
    straddle those of the original: distinct training pairs from the same truth. The crops
    share the sample's image (the affine is shifted). ``shifts`` = 1 returns ``samples``.
    """
    if not 1 <= shifts <= factor:
        raise ValueError(f"grid_shifts must be between 1 and the factor {factor}, got {shifts}")
    offsets = sorted({round(i * factor / shifts) for i in range(shifts)})
    out = []
    for s in samples:
        h, w = s.shape
        out += [s if dy == dx == 0 else s.crop(dy, dx, h - dy, w - dx)
                for dy in offsets for dx in offsets]
    return out


def raster_cells(samples: list[STSample]) -> int:
    """HR raster cells of ``samples`` in all (tissue or not)."""
    return sum(s.shape[0] * s.shape[1] for s in samples)


def grids_within(cells: int, shifts: int, max_cells: int) -> int:
    """The grids per axis (at most ``shifts``, at least 1) whose ``n * n`` copies of training
    data of ``cells`` HR raster cells (:func:`grid_shifted`, :func:`raster_cells`) hold at
    most ``max_cells`` cells in all.

    Every copy is stored in full while training (maps, aligned image, image products: about
    0.6 kB per HR cell with the default model), so the copies of a large section are
    limited; sections as small as the benchmark's training data are never limited.
    """
    n = shifts
    while n > 1 and n * n * cells > max_cells:
        n -= 1
    return n


def tissue_depth(sample: STSample) -> tuple[float, float]:
    """``(counts, area)`` of ``sample``'s tissue: counts of all its genes summed over its
    tissue cells, and the tissue area in µm² (tissue cells x ``cell_um``²).

    An LR cell at the tissue edge counts in full, so a pooled sample (:func:`simulate_lr`)
    reads shallower than the HR sample it came from; compare like with like.
    """
    counts = float(np.asarray(sample.expr)[:, sample.mask].sum())
    area = float(sample.mask.sum()) * sample.cell_um ** 2
    return counts, area


def thin_counts(sample: STSample, fraction: float, seed: int = 0) -> STSample:
    """Binomial thinning: keep each molecule of ``sample`` with probability ``fraction``.

    Simulates a shallower sequencing run of the same tissue (``(G, H, W)`` integer counts in,
    integer counts out, each a ``Binomial(count, fraction)`` draw). Pooling commutes with it:
    thinning HR counts and then pooling them is a thinning of the pooled counts.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"thinning fraction must be in (0, 1], got {fraction}")
    expr = np.asarray(sample.expr)
    counts = np.rint(expr)
    if not np.allclose(expr, counts) or (counts < 0).any():
        raise SampleError(f"sample '{sample.name}': binomial thinning needs non-negative integer "
                          "counts; these are not")
    if fraction == 1.0:
        return sample
    rng = np.random.default_rng(seed)
    thinned = rng.binomial(counts.astype(np.int64), fraction).astype(expr.dtype)
    meta = dict(sample.meta, thinned_to=float(fraction))
    return replace(sample, expr=thinned, name=f"{sample.name}_thin{fraction:g}", meta=meta)


def hr_mask_from_lr(lr_mask: np.ndarray, factor: int) -> np.ndarray:
    """``(h, w)`` LR tissue mask -> ``(h*s, w*s)`` bool HR mask: every HR cell of an LR tissue
    cell. This is the HR mask a user has (no HR truth), used by default at prediction."""
    return upsample_nearest(np.asarray(lr_mask, bool), factor).astype(bool)


def upsample_nearest(expr: ArrayLike, factor: int) -> ArrayLike:
    """``(..., h, w)`` -> ``(..., h*s, w*s)`` repeating each LR value (no rescaling); NumPy
    array or torch tensor (:func:`diffst.consistency.spread_cells` uses it)."""
    factor = _check_factor(factor)
    if hasattr(expr, "repeat_interleave"):  # a torch tensor
        return expr.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return np.repeat(np.repeat(expr, factor, axis=-2), factor, axis=-1)


def _check_factor(factor: int) -> int:
    try:
        ok = int(factor) == factor and factor >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise SampleError(f"scale factor must be a positive integer, got {factor!r}")
    return int(factor)


def upsample_bicubic(lr: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic interpolation ``(G, h, w)`` -> ``(G, h*s, w*s)`` at HR cell centres.

    HR cell ``r`` sits at LR coordinate ``(r + 0.5) / s - 0.5`` (cell-centre alignment, as
    ``align_corners=False``). Values are interpolated as given (no rescaling); negative
    overshoots are clipped to 0.
    """
    import torch
    import torch.nn.functional as F

    factor = _check_factor(factor)
    t = torch.as_tensor(np.asarray(lr, dtype=np.float32))[None]
    up = F.interpolate(t, scale_factor=factor, mode="bicubic", align_corners=False)
    return up[0].clamp_min(0).numpy()


def hr_frame_affine(lr_sample: STSample, factor: int) -> np.ndarray:
    """Affine of the HR raster that refines ``lr_sample`` by ``factor`` (inverse of pooling)."""
    s = float(_check_factor(factor))
    hr_to_lr = np.array([[1 / s, 0, (1 - s) / (2 * s)], [0, 1 / s, (1 - s) / (2 * s)], [0, 0, 1]])
    return lr_sample.affine @ hr_to_lr


def check_geometry(lr_sample: STSample, factor: int, hr_shape: tuple[int, int]) -> int:
    """Validate that ``hr_shape`` is the HR raster of ``lr_sample`` at ``factor``; return s."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"scale factor must be a positive integer, got {factor!r}")
    s = int(factor)
    h, w = lr_sample.shape
    hh, ww = (int(x) for x in hr_shape)
    if hh < 1 or ww < 1 or -(-hh // s) != h or -(-ww // s) != w:
        raise SampleError(
            f"sample '{lr_sample.name}': HR shape {(hh, ww)} does not match the LR raster "
            f"{(h, w)} at factor {s} (expected ceil(H/{s}) = {h} and ceil(W/{s}) = {w}); "
            "pass the shape of the HR raster the LR sample was pooled from"
        )
    return s


def hr_tissue(lr_sample: STSample, factor: int, hr_shape: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: HR cells whose LR cell is under tissue."""
    up = upsample_nearest(lr_sample.mask, int(factor))
    return up[: hr_shape[0], : hr_shape[1]]


def finish(
    hr: np.ndarray, lr_sample: STSample, factor: int, hr_shape: tuple[int, int]
) -> np.ndarray:
    """Crop a padded HR prediction ``(G, h*s, w*s)`` to ``hr_shape``, zero non-tissue LR cells."""
    out = np.asarray(hr, dtype=np.float32)[:, : hr_shape[0], : hr_shape[1]].copy()
    out[:, ~hr_tissue(lr_sample, factor, hr_shape)] = 0.0
    return out

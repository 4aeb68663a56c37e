"""Hand-crafted histology features of HR cells, computed from the H&E image of an LR sample.

The image is resampled with :func:`diffst.data.image.aligned_image` so that each HR cell covers a
``k x k`` pixel block (``k = px_per_hr_cell``). Because the LR sample's affine maps LR cell centres
into the same image, ``aligned_image(lr_sample, factor * k)`` puts HR cell ``(r, c)`` exactly on
pixels ``[r*k:(r+1)*k, c*k:(c+1)*k]``. All maps cover the padded HR raster
``(h * factor, w * factor)`` where ``(h, w)`` is the LR raster shape.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed

from diffst.data.image import aligned_image
from diffst.data.sample import SampleError, STSample

CONTEXT_SCALES = (3, 7, 15)
"""Default box-filter sides (in HR cells) of the context features."""


def hr_pixels(lr_sample: STSample, factor: int, px_per_hr_cell: int) -> np.ndarray:
    """The H&E resampled onto the padded HR raster: ``(h*s*k, w*s*k, 3)`` float32 RGB in [0, 1]."""
    if lr_sample.image is None:
        raise SampleError(
            f"sample '{lr_sample.name}' has no H&E image; image-guided baselines need one "
            "(use spot_constant or bicubic instead)"
        )
    if int(px_per_hr_cell) != px_per_hr_cell or px_per_hr_cell < 1:
        raise ValueError(f"px_per_hr_cell must be a positive integer, got {px_per_hr_cell!r}")
    img = aligned_image(lr_sample, int(factor) * int(px_per_hr_cell))
    return img.astype(np.float32) / 255.0


def block_mean(pixels: np.ndarray, k: int) -> np.ndarray:
    """Mean over ``k x k`` blocks: ``(H*k, W*k, C)`` -> ``(H, W, C)``."""
    hk, wk, ch = pixels.shape
    return pixels.reshape(hk // k, k, wk // k, k, ch).mean(axis=(1, 3))


def hr_colours(lr_sample: STSample, factor: int, px_per_hr_cell: int = 4) -> np.ndarray:
    """Mean RGB of the H&E under every HR cell: ``(h*s, w*s, 3)`` float32 in [0, 1]."""
    return block_mean(hr_pixels(lr_sample, factor, px_per_hr_cell), int(px_per_hr_cell))


def hr_features(
    lr_sample: STSample,
    factor: int,
    px_per_hr_cell: int = 8,
    context_scales: tuple[int, ...] = CONTEXT_SCALES,
) -> tuple[np.ndarray, list[str]]:
    """Multi-scale image features of every HR cell.

    Per HR cell: mean and standard deviation over its pixels of R, G, B, haematoxylin and eosin
    (colour deconvolution, :func:`skimage.color.rgb2hed`), and the mean gradient magnitude of the
    grey image (texture). For each context side ``n`` in ``context_scales`` the mean and standard
    deviation of the five channels over the ``n x n`` HR-cell neighbourhood (box filter, reflected
    at the raster edge) are added.

    Args:
        lr_sample: LR sample with an image.
        factor: HR cells per LR cell edge.
        px_per_hr_cell: image pixels per HR cell edge used for the statistics.
        context_scales: box sides in HR cells.

    Returns:
        ``(features, names)``: ``(F, h*s, w*s)`` float32 (unstandardised) and ``F`` names.
    """
    k = int(px_per_hr_cell)
    rgb = hr_pixels(lr_sample, factor, k)
    hed = rgb2hed(rgb)
    channels = np.concatenate([rgb, hed[..., :2].astype(np.float32)], axis=2)  # R G B H E
    names_ch = ["r", "g", "b", "haem", "eosin"]
    mean = block_mean(channels, k)
    mean_sq = block_mean(channels**2, k)
    grey = rgb.mean(axis=2)
    grad = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))
    texture = block_mean(grad[..., None], k)[..., 0]

    maps = [mean[..., i] for i in range(5)]
    maps += [_std(mean[..., i], mean_sq[..., i]) for i in range(5)]
    names = [f"{c}_mean" for c in names_ch] + [f"{c}_std" for c in names_ch] + ["grad_mean"]
    maps.append(texture)
    for n in context_scales:
        if int(n) < 2:
            raise ValueError(f"context scales must be >= 2 HR cells, got {n}")
        for i, c in enumerate(names_ch):
            m = ndimage.uniform_filter(mean[..., i], size=int(n), mode="reflect")
            m2 = ndimage.uniform_filter(mean_sq[..., i], size=int(n), mode="reflect")
            maps += [m, _std(m, m2)]
            names += [f"{c}_mean_ctx{n}", f"{c}_std_ctx{n}"]
    return np.stack(maps).astype(np.float32), names


def _std(mean: np.ndarray, mean_sq: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(mean_sq - mean**2, 0.0))

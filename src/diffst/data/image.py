"""Resample the H&E image onto the expression raster."""

from __future__ import annotations

import numpy as np
from skimage.transform import AffineTransform, warp

from diffst.data.sample import SampleError, STSample


def px_per_cell_for(cell_um: float, target_um_per_px: float) -> int:
    """Integer image pixels per raster cell edge of ``cell_um`` µm at ``target_um_per_px``."""
    return max(1, int(round(cell_um / target_um_per_px)))


def aligned_image(sample: STSample, px_per_cell: int) -> np.ndarray:
    """The H&E resampled so raster cell ``(r, c)`` covers pixels ``[r*k:(r+1)*k, c*k:(c+1)*k]``.

    Args:
        sample: a sample with an image.
        px_per_cell: k, output pixels per raster cell edge.

    Returns:
        ``(H*k, W*k, 3)`` uint8 RGB. Areas outside the source image are white (255).
    """
    if sample.image is None:
        raise SampleError(f"sample '{sample.name}' has no H&E image")
    k = float(px_per_cell)
    h, w = sample.shape
    # output pixel (xo, yo) -> raster coordinate ((xo + 0.5) / k - 0.5) -> image pixel.
    out_to_raster = np.array([[1 / k, 0, 0.5 / k - 0.5], [0, 1 / k, 0.5 / k - 0.5], [0, 0, 1.0]])
    transform = AffineTransform(matrix=sample.affine @ out_to_raster)
    scale = sample.px_per_cell / k  # source pixels per output pixel
    src = sample.image
    if scale > 1.5:  # pre-blur by area-downsampling to avoid aliasing
        from skimage.transform import rescale

        factor = 1.0 / scale
        src = rescale(
            src, factor, channel_axis=2, anti_aliasing=True, preserve_range=True, order=1
        ).astype(np.float32)
        pre = np.diag(
            [src.shape[1] / sample.image.shape[1], src.shape[0] / sample.image.shape[0], 1]
        )
        transform = AffineTransform(matrix=pre @ sample.affine @ out_to_raster)
    out = warp(
        np.asarray(src, dtype=np.float32),
        inverse_map=transform,
        output_shape=(int(h * k), int(w * k)),
        order=1,
        mode="constant",
        cval=255.0,
        preserve_range=True,
    )
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)

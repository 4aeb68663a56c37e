"""The HR base map a Diff-ST model refines (:attr:`diffst.model.config.DiffSTConfig.upsampler`).

The denoiser gets a base map ``lr_up`` on the HR raster and predicts the residual to it. By
default that is bicubic interpolation of the scaled LR map (computed in
:func:`diffst.data.patches.prepare_inference_sample`). :func:`upsampler_for` returns, for the
other choices, an :data:`~diffst.data.patches.Upsampler`: a function of the LR sample alone (its
counts and H&E image, never HR truth) that gives counts per HR cell, which the data preparation
then scales like the HR maps. Training sections and the slide to be super-resolved get their
base maps the same way, each from its own LR map.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from diffst.consistency import redistribute_np
from diffst.data.patches import Upsampler
from diffst.data.sample import STSample
from diffst.model.config import UPSAMPLERS
from diffst.model.istar_like import istar_like
from diffst.tilestore import fingerprint

ISTAR_SEED = 0
"""Seed of the iStar-like fit of a base map: the same slide always gets the same base map."""

CACHED_MAPS = 8
"""Base maps kept in memory, keyed by their inputs: a benchmark fold fits each training
section's map for Diff-ST and again for the histology regression, which share it."""
_cache: OrderedDict[str, np.ndarray] = OrderedDict()


def istar_like_base(lr: STSample, factor: int, hr_mask: np.ndarray) -> np.ndarray:
    """The iStar-like map of ``lr``, made consistent with its counts.

    Args:
        lr: LR sample with an H&E image; ``expr`` ``(G, h, w)`` counts per LR cell.
        factor: HR cells per LR cell edge.
        hr_mask: ``(h * factor, w * factor)`` bool HR tissue mask.

    Returns:
        ``(G, h * factor, w * factor)`` float32 counts per HR cell; the HR tissue cells of each
        LR cell add up to its count (:func:`diffst.consistency.redistribute_np`), 0 off tissue.
        The same inputs give the same map, from memory after the first fit
        (:data:`CACHED_MAPS`).
    """
    key = fingerprint(lr.expr, lr.mask, hr_mask, lr.affine,
                      b"" if lr.image is None else lr.image,
                      f"{factor} {lr.cell_um!r} {lr.image_um_per_px!r} {ISTAR_SEED}")
    if key not in _cache:
        hr_shape = (lr.shape[0] * factor, lr.shape[1] * factor)
        counts = istar_like(lr, factor, hr_shape, seed=ISTAR_SEED)
        _cache[key] = redistribute_np(counts, lr.expr, hr_mask, factor).astype(np.float32)
        while len(_cache) > CACHED_MAPS:
            _cache.popitem(last=False)
    _cache.move_to_end(key)
    return _cache[key].copy()


def upsampler_for(name: str) -> Upsampler | None:
    """The base-map function of ``name`` (one of :data:`UPSAMPLERS`); None for ``"bicubic"``,
    which the data preparation computes itself in scaled units."""
    if name not in UPSAMPLERS:
        raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {name!r}")
    return {"bicubic": None, "istar_like": istar_like_base}[name]

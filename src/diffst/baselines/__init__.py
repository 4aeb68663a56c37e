"""Super-resolution baselines that map an LR sample to counts per HR cell.

Every entry of :data:`BASELINES` is called as ``fn(lr_sample, factor, hr_shape, seed=0)`` and
returns a ``(G, H, W)`` float32 array of counts per HR cell (HR cell ``(r, c)`` lies in LR cell
``(r // factor, c // factor)``; cells of non-tissue LR cells are 0):

* ``spot_constant``: the LR cell's count spread evenly over its HR cells.
* ``bicubic``: cubic-spline interpolation of the LR density.
* ``tesla``: TESLA-style histology-weighted neighbour mean (needs the H&E image).
* ``istar_like``: iStar-style per-slide image-feature MLP trained on LR sums (needs the image).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diffst.baselines.interpolation import bicubic, spot_constant
from diffst.baselines.tesla import tesla_like
from diffst.data.sample import STSample
from diffst.model.istar_like import IStarLike, istar_like

Baseline = Callable[..., np.ndarray]


def _spot_constant(
    lr_sample: STSample, factor: int, hr_shape: tuple[int, int], seed: int = 0
) -> np.ndarray:
    return spot_constant(lr_sample, factor, hr_shape)


def _bicubic(
    lr_sample: STSample, factor: int, hr_shape: tuple[int, int], seed: int = 0
) -> np.ndarray:
    return bicubic(lr_sample, factor, hr_shape)


def _tesla(
    lr_sample: STSample, factor: int, hr_shape: tuple[int, int], seed: int = 0
) -> np.ndarray:
    return tesla_like(lr_sample, factor, hr_shape)


def _istar_like(
    lr_sample: STSample, factor: int, hr_shape: tuple[int, int], seed: int = 0
) -> np.ndarray:
    return istar_like(lr_sample, factor, hr_shape, seed=seed)


BASELINES: dict[str, Baseline] = {
    "spot_constant": _spot_constant,
    "bicubic": _bicubic,
    "tesla": _tesla,
    "istar_like": _istar_like,
}
"""Name -> ``fn(lr_sample, factor, hr_shape, seed=0) -> (G, H, W)`` counts per HR cell."""

IMAGE_BASELINES = frozenset({"tesla", "istar_like"})
"""Baselines that need the sample's H&E image."""

__all__ = [
    "BASELINES",
    "IMAGE_BASELINES",
    "IStarLike",
    "bicubic",
    "istar_like",
    "spot_constant",
    "tesla_like",
]

"""Per-gene scaling of expression to [0, 1], invertible.

Statistics: for each gene, ``lo`` is 0 and ``hi`` is a high quantile (default the 99.9th
percentile, never below 1 count after the optional ``log1p``) of the HR per-cell values inside
the tissue mask of the training samples. Values are transformed as
``y = clip((f(x) - lo) / (hi - lo), 0, clip_max)`` with ``f = log1p`` or identity. LR maps are
first divided by ``s**2`` (counts per LR cell -> mean counts per HR cell), so HR targets and LR
conditions share one scale. :meth:`GeneScaler.inverse` undoes the transform (up to clipping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GeneScaler:
    """Per-gene min-max scaler with stored statistics.

    Attributes:
        lo: ``(G,)`` per-gene lower bound (transformed units).
        hi: ``(G,)`` per-gene upper bound (transformed units).
        log1p: apply ``log1p`` before scaling.
        clip_max: values above ``hi`` map up to this (1.0 = hard clip; >1 keeps head-room).
    """

    lo: np.ndarray
    hi: np.ndarray
    log1p: bool = True
    clip_max: float = 1.5

    @classmethod
    def fit(
        cls,
        values: list[np.ndarray],
        masks: list[np.ndarray],
        log1p: bool = True,
        quantile: float = 0.999,
        clip_max: float = 1.5,
    ) -> GeneScaler:
        """Fit from HR rasters ``values[i]`` of shape ``(G, H, W)`` with masks ``(H, W)``."""
        if not values or len(values) != len(masks):
            raise ValueError(f"cannot fit gene scaling: {len(values)} rasters for "
                             f"{len(masks)} masks (need one mask per raster, at least one)")
        shapes = {np.shape(v)[0] for v in values}
        for v, m in zip(values, masks, strict=True):
            if np.ndim(v) != 3 or np.shape(m) != np.shape(v)[1:] or len(shapes) != 1:
                raise ValueError(f"cannot fit gene scaling: rasters must be (G, H, W) with one "
                                 f"G and masks (H, W); got {np.shape(v)} and {np.shape(m)}")
        cols = [np.asarray(v)[:, np.asarray(m, bool)] for v, m in zip(values, masks, strict=True)]
        data = np.concatenate(cols, axis=1)
        if data.shape[1] == 0:
            raise ValueError("cannot fit gene scaling: the tissue masks are empty")
        if not np.isfinite(data).all() or (data < 0).any():
            raise ValueError("cannot fit gene scaling: counts in tissue must be finite and >= 0")
        if log1p:
            data = np.log1p(data)
        hi = np.quantile(data, quantile, axis=1)
        floor = np.log1p(1.0) if log1p else 1.0
        hi = np.maximum(hi, floor)
        return cls(lo=np.zeros_like(hi), hi=hi.astype(np.float64), log1p=log1p, clip_max=clip_max)

    def _cols(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if np.ndim(x) < 1 or np.shape(x)[0] != len(self.hi):
            raise ValueError(f"gene scaler fitted on {len(self.hi)} genes got values of shape "
                             f"{np.shape(x)} (genes first)")
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.lo.reshape(shape), self.hi.reshape(shape)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Counts per HR cell ``(G, ...)`` -> scaled values in ``[0, clip_max]``."""
        lo, hi = self._cols(x)
        y = np.log1p(np.maximum(x, 0)) if self.log1p else np.asarray(x, dtype=np.float64)
        return np.clip((y - lo) / (hi - lo), 0.0, self.clip_max).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Scaled values ``(G, ...)`` -> counts per HR cell (negatives clipped to 0)."""
        lo, hi = self._cols(y)
        z = np.asarray(y, dtype=np.float64) * (hi - lo) + lo
        x = np.expm1(z) if self.log1p else z
        return np.maximum(x, 0).astype(np.float32)

    def transform_lr(self, lr: np.ndarray, factor: int) -> np.ndarray:
        """LR counts per LR cell ``(G, h, w)`` -> scaled per-HR-cell values ``(G, h, w)``."""
        return self.transform(np.asarray(lr, dtype=np.float64) / float(factor) ** 2)

    def state_dict(self) -> dict:
        """Plain-Python statistics for checkpoints."""
        return {
            "lo": self.lo.tolist(),
            "hi": self.hi.tolist(),
            "log1p": self.log1p,
            "clip_max": self.clip_max,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> GeneScaler:
        """Inverse of :meth:`state_dict`."""
        missing = {"lo", "hi", "log1p", "clip_max"} - set(state)
        if missing:
            raise ValueError(f"gene scaler state lacks {sorted(missing)}")
        return cls(
            lo=np.asarray(state["lo"], dtype=np.float64),
            hi=np.asarray(state["hi"], dtype=np.float64),
            log1p=bool(state["log1p"]),
            clip_max=float(state["clip_max"]),
        )

"""Per-gene scaling of expression to [0, 1], invertible.

Statistics: for each gene, ``lo`` is 0 and ``hi`` is a high quantile (default the 99.9th
percentile, never below 1 count after the optional ``log1p``) of the HR per-cell values inside
the tissue mask of the training samples. Values are transformed as
``y = clip((f(x) - lo) / (hi - lo), 0, clip_max)`` with ``f = log1p`` or identity. LR maps are
first divided by ``s**2`` (counts per LR cell -> mean counts per HR cell), so HR targets and LR
conditions share one scale. :meth:`GeneScaler.inverse` undoes the transform (up to clipping).

:meth:`GeneScaler.transform` and :meth:`GeneScaler.inverse` are the one implementation for
NumPy arrays and torch tensors (inference rescales tensors on the model's device). With NumPy
the bounds are float64 and results float32; tensors keep their dtype and device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


class _NumpyOps:
    """The array primitives of :class:`GeneScaler` on NumPy arrays (float64 maths)."""

    @staticmethod
    def columns(v: np.ndarray, like: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return v.reshape(shape)

    as_float = staticmethod(lambda x: np.asarray(x, dtype=np.float64))
    nonneg = staticmethod(lambda x: np.maximum(x, 0))
    log1p = staticmethod(np.log1p)
    expm1 = staticmethod(np.expm1)
    clip = staticmethod(np.clip)
    result = staticmethod(lambda x: x.astype(np.float32))


class _TorchOps:
    """The same primitives on torch tensors (in the tensor's dtype, on its device)."""

    @staticmethod
    def columns(v: np.ndarray, like: Any, shape: tuple[int, ...]) -> Any:
        import torch

        return torch.as_tensor(v, dtype=like.dtype, device=like.device).view(shape)

    as_float = staticmethod(lambda x: x)
    nonneg = staticmethod(lambda x: x.clamp_min(0))
    log1p = staticmethod(lambda x: x.log1p())
    expm1 = staticmethod(lambda x: x.expm1())
    clip = staticmethod(lambda x, lo, hi: x.clamp(lo, hi))
    result = staticmethod(lambda x: x)


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
        hi = np.maximum(hi, floor).astype(np.float64)
        return cls(lo=np.zeros_like(hi), hi=hi, log1p=log1p, clip_max=clip_max)

    def _cols(self, x: Any, axis: int) -> tuple[Any, Any, type]:
        """``lo``, ``hi`` shaped to broadcast along ``axis`` of ``x``, and the primitives."""
        ops = _TorchOps if _is_tensor(x) else _NumpyOps
        shape = tuple(x.shape) if ops is _TorchOps else np.shape(x)
        ndim = len(shape)
        if ndim < 1 or not -ndim <= axis < ndim or shape[axis] != len(self.hi):
            raise ValueError(f"gene scaler fitted on {len(self.hi)} genes got values of shape "
                             f"{shape} (genes on axis {axis})")
        cols = [1] * ndim
        cols[axis] = -1
        return (ops.columns(self.lo, x, tuple(cols)), ops.columns(self.hi, x, tuple(cols)), ops)

    def transform(self, x: Any, axis: int = 0) -> Any:
        """Counts per HR cell (genes on ``axis``) -> scaled values in ``[0, clip_max]``.

        NumPy input: float64 bounds, float32 result; a tensor keeps its dtype and device.
        """
        lo, hi, ops = self._cols(x, axis)
        y = ops.log1p(ops.nonneg(x)) if self.log1p else ops.as_float(x)
        return ops.result(ops.clip((y - lo) / (hi - lo), 0.0, self.clip_max))

    def inverse(self, y: Any, axis: int = 0) -> Any:
        """Scaled values (genes on ``axis``) -> counts per HR cell (negatives clipped to 0).

        NumPy input: computed in float64, float32 result; a tensor keeps its dtype and device.
        """
        lo, hi, ops = self._cols(y, axis)
        z = ops.as_float(y) * (hi - lo) + lo
        return ops.result(ops.nonneg(ops.expm1(z) if self.log1p else z))

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

"""Geometry helpers: fitting raster->image affines and placing spots on a raster."""

from __future__ import annotations

import numpy as np

from diffst.data.sample import SampleError


def fit_affine(src_xy: np.ndarray, dst_xy: np.ndarray) -> np.ndarray:
    """Least-squares 3x3 affine mapping ``src_xy`` (N, 2) onto ``dst_xy`` (N, 2).

    Used to map raster ``(col, row)`` coordinates of spots to their image ``(x, y)`` pixels.
    Needs at least 3 non-collinear points.
    """
    src = np.asarray(src_xy, dtype=np.float64)
    dst = np.asarray(dst_xy, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise SampleError(f"fit_affine: need matching (N, 2) arrays, got {src.shape}, {dst.shape}")
    if len(src) < 3:
        raise SampleError(f"fit_affine: need at least 3 points, got {len(src)}")
    design = np.column_stack([src, np.ones(len(src))])
    coef, _, rank, _ = np.linalg.lstsq(design, dst, rcond=None)
    if rank < 3:
        raise SampleError("fit_affine: spot positions are collinear; cannot fit an alignment")
    affine = np.eye(3)
    affine[:2, :] = coef.T
    return affine


def spots_to_raster(
    rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Place per-spot counts on a raster.

    Args:
        rows, cols: ``(N,)`` integer raster indices of each spot.
        counts: ``(N, G)`` counts per spot.
        shape: raster ``(H, W)``; default the bounding box of the indices (from 0).

    Returns:
        ``expr`` ``(G, H, W)`` float32 and ``mask`` ``(H, W)`` bool (True where a spot sits).
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.min(initial=0) < 0 or cols.min(initial=0) < 0:
        raise SampleError("spots_to_raster: negative raster indices")
    if shape is None:
        shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    flat = rows * shape[1] + cols
    if len(np.unique(flat)) != len(flat):
        raise SampleError("spots_to_raster: two spots map to the same raster cell")
    counts = np.asarray(counts, dtype=np.float32)
    expr = np.zeros((counts.shape[1], shape[0], shape[1]), dtype=np.float32)
    expr[:, rows, cols] = counts.T
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return expr, mask

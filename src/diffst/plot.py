"""Pictures of gene maps over the H&E (Pillow only; no plotting stack needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffst.io.atomic import atomic_path

# Anchor colours of a perceptually ordered dark-blue -> green -> yellow map.
_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map ``(H, W)`` values in ``[0, 1]`` (clipped) to ``(H, W, 3)`` uint8 colours."""
    v = np.clip(np.nan_to_num(values), 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (v - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    return rgb.astype(np.uint8)


def overlay(background: np.ndarray, values: np.ndarray, mask: np.ndarray,
            alpha: float = 0.75) -> np.ndarray:
    """Blend a colour-mapped ``(H, W)`` map onto an RGB background of ``(H*k, W*k, 3)`` px.

    Cells outside ``mask`` show the background only.
    """
    k = background.shape[0] // values.shape[0]
    colours = np.repeat(np.repeat(colormap(values), k, 0), k, 1).astype(np.float64)
    weight = np.repeat(np.repeat(mask.astype(np.float64), k, 0), k, 1)[..., None] * alpha
    out = background.astype(np.float64) * (1 - weight) + colours * weight
    return out.astype(np.uint8)


def gene_panel(
    maps: list[tuple[str, np.ndarray]],
    genes: list[str],
    show: list[str],
    background: np.ndarray,
    mask: np.ndarray,
    path: str | Path,
    tile_px: int = 200,
) -> Path:
    """Write a PNG grid: one row per map, one column per gene, over the H&E.

    Args:
        maps: ``(label, (G, H, W) array)`` pairs sharing one colour scale per gene: 0 to the
            largest 99th percentile (inside the mask) among the maps after the first, so smooth
            predictions stay visible next to a noisy truth in the first row.
        genes: names of the G planes; ``show`` the genes to draw.
        background: ``(H*k, W*k, 3)`` H&E aligned to the raster.
        mask: ``(H, W)`` bool tissue mask.
        path: output PNG (written atomically).
    """
    idx = [genes.index(g) for g in show]
    h, w = mask.shape
    scale = max(tile_px / max(h, w), 120 / w)  # columns wide enough for a gene name
    th, tw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    label_w, head_h = 110, 24
    canvas = Image.new("RGB", (label_w + tw * len(idx), head_h + th * len(maps)), "white")
    draw = ImageDraw.Draw(canvas)
    scaled_by = maps[1:] or maps
    for j, gi in enumerate(idx):
        top = max(float(np.quantile(arr[gi][mask], 0.99)) if mask.any() else 1.0
                  for _, arr in scaled_by)
        top = top if top > 0 else 1.0
        draw.text((label_w + j * tw + 4, 6), genes[gi], fill="black")
        for i, (label, arr) in enumerate(maps):
            tile = overlay(background, arr[gi] / top, mask)
            img = Image.fromarray(tile).resize((tw, th), Image.Resampling.BILINEAR)
            canvas.paste(img, (label_w + j * tw, head_h + i * th))
            if j == 0:
                draw.text((4, head_h + i * th + th // 2), label, fill="black")
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path

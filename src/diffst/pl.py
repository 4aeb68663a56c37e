"""Plots in the scanpy style: gene maps of an AnnData over its image, written as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad

from diffst.data.image import aligned_image
from diffst.io.anndata_io import anndata_to_sample
from diffst.plot import gene_panel


def maps(adata: ad.AnnData, genes: Sequence[str] | None = None, *,
         layers: Sequence[str | None] = (None,), path: str | Path = "diffst_maps.png",
         n_genes: int = 4) -> Path:
    """One row per layer (``None`` = ``X``), one column per gene, over the image; returns the
    PNG path. ``genes`` default to the ``n_genes`` most expressed."""
    rows, sample = [], None
    for layer in layers:
        sample = anndata_to_sample(adata, layer=layer, require_integer=False)
        rows.append((layer or "X", sample.expr))
    show = list(genes) if genes else sample.top_genes(n_genes)
    unknown = [g for g in show if g not in sample.genes]
    if unknown:
        raise ValueError(f"genes not in the data: {unknown}")
    k = max(1, min(16, 400 // max(sample.shape)))
    return gene_panel(rows, sample.genes, show, aligned_image(sample, k), sample.mask, path)


__all__ = ["maps"]

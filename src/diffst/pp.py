"""Preprocessing in the scanpy style (``import diffst as ds; ds.pp...``)."""

from __future__ import annotations

from typing import Any

import anndata as ad

from diffst.data.lr import simulate_lr
from diffst.io.anndata_io import anndata_to_sample, sample_to_anndata


def pool(adata: ad.AnnData, factor: int, **read_kw: Any) -> ad.AnnData:
    """Sum-pool a raster AnnData by ``factor`` (``factor`` x ``factor`` cells -> one spot): the
    measurement a coarser assay would make, e.g. to evaluate super-resolution on known truth."""
    return sample_to_anndata(simulate_lr(anndata_to_sample(adata, **read_kw), factor),
                             max_image_px=None)


__all__ = ["pool"]

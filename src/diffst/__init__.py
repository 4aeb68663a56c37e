"""diffst: histology-guided super-resolution of spatial transcriptomics (Diff-ST).

Scanpy-style entry points, imported on first use so ``import diffst`` stays light::

    import diffst as ds
    adata = ds.read("spaceranger/outs")               # AnnData of the measured spots
    sr = ds.tl.super_resolve(adata, "model.pt")       # AnnData of the HR cells
    ds.pl.maps(sr, layers=["mean", "std"], path="maps.png")

``ds.DiffSTPipeline.load("model.pt")`` gives the trained model itself
(:class:`diffst.pipeline.DiffSTPipeline`), which ``ds.tl.super_resolve`` also takes.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import anndata as ad
    from spatialdata import SpatialData

__all__ = ["DiffSTPipeline", "pl", "pp", "read", "tl"]


def read(path: str | Path | SpatialData, **kw: Any) -> ad.AnnData:
    """Read any layout :func:`diffst.io.read_sample` knows into AnnData (one observation per
    raster cell in tissue, the image at the resolution read, scanpy's spatial convention).

    ``path`` may also be a SpatialData object or ``.zarr`` store (extra ``diffst[spatialdata]``;
    options of :func:`diffst.io.spatialdata_io.spatialdata_to_sample`)."""
    from diffst.io import read_sample, sample_to_anndata
    from diffst.io.spatialdata_io import is_spatialdata, spatialdata_to_sample

    sample = spatialdata_to_sample(path, **kw) if is_spatialdata(path) else read_sample(path, **kw)
    return sample_to_anndata(sample, max_image_px=None)


def __getattr__(name: str) -> Any:
    if name in ("pl", "pp", "tl"):
        return import_module(f"diffst.{name}")
    if name == "DiffSTPipeline":
        return import_module("diffst.pipeline").DiffSTPipeline
    raise AttributeError(f"module 'diffst' has no attribute {name!r}")

"""Readers and writers for the formats users already have.

``read_sample(path)`` detects the layout (:func:`detect_format`) and calls the matching reader;
``inspect_path(path)`` summarises a sample; ``write_anndata`` writes results as ``.h5ad``;
SpatialData in and out (optional extra) is :mod:`diffst.io.spatialdata_io`.
"""

from diffst.io.anndata_io import anndata_to_sample, read_anndata, sample_to_anndata, write_anndata
from diffst.io.inspect import (
    detect_format,
    format_inspection,
    inspect_path,
    read_sample,
    write_overlay,
)
from diffst.io.istar import read_istar
from diffst.io.legacy_st import read_her2st, read_legacy_st
from diffst.io.spaceranger import read_10x_matrix, read_spaceranger
from diffst.io.spatialdata_io import read_spatialdata, spatialdata_to_sample
from diffst.io.visium_hd import read_visium_hd
from diffst.io.xenium import pseudo_visium, read_xenium, read_xenium_cells_h5ad

__all__ = [
    "anndata_to_sample",
    "detect_format",
    "format_inspection",
    "inspect_path",
    "pseudo_visium",
    "read_10x_matrix",
    "read_anndata",
    "read_her2st",
    "read_istar",
    "read_legacy_st",
    "read_sample",
    "read_spaceranger",
    "read_spatialdata",
    "read_visium_hd",
    "read_xenium",
    "read_xenium_cells_h5ad",
    "sample_to_anndata",
    "spatialdata_to_sample",
    "write_anndata",
    "write_overlay",
]

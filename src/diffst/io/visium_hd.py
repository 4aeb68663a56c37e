"""Read Visium HD binned outputs (Space Ranger ``binned_outputs/square_XXXum``) into an STSample.

Layout (``outs/binned_outputs/square_008um/``, likewise ``square_002um`` and ``square_016um``):

* ``filtered_feature_bc_matrix.h5`` or the Matrix Market folder ``filtered_feature_bc_matrix/``;
* ``spatial/tissue_positions.parquet`` with ``barcode, in_tissue, array_row, array_col,
  pxl_row_in_fullres, pxl_col_in_fullres`` (one row per bin);
* ``spatial/scalefactors_json.json`` with ``tissue_hires_scalef``, ``tissue_lowres_scalef`` and,
  when present, ``microns_per_pixel`` and ``bin_size_um``;
* ``spatial/tissue_hires_image.png`` / ``tissue_lowres_image.png`` (also looked for in
  ``outs/spatial/``).

Bins form a square grid, so the raster is exact: ``row = array_row - row0``,
``col = array_col - col0`` (cropped to the tissue bins' bounding box, origin in
``meta["raster_origin"]``) and ``cell_um`` is the bin size. 2 µm bins measured directly make a
natural high-resolution truth for 8 or 16 µm inputs (pool them with
:func:`diffst.data.lr.simulate_lr`).

µm per pixel comes from the fitted bin pitch; a ``microns_per_pixel`` in the scale factors that
disagrees with it by more than 5 % raises (the scale factors belong to another run). All genes of
an HD sample rarely fit in memory as a dense raster: above ``max_dense_gb`` the reader asks for
``genes=`` or ``n_top_genes=``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffst.data.sample import SampleError, STSample
from diffst.io.alignment import PositionFix
from diffst.io.spaceranger import (
    choose_genes,
    choose_image,
    find_matrix,
    find_positions,
    finish_sample,
    layout_spots,
    match_spots,
    read_10x_matrix,
    read_positions,
    read_scalefactors,
)

_BIN_DIR = re.compile(r"^square_(\d+)um$")
UM_PER_PX_TOLERANCE = 0.05


def read_visium_hd(
    folder: str | Path,
    bin_um: int | None = 8,
    image: str | Path | None = None,
    genes: Sequence[str] | None = None,
    n_top_genes: int | None = None,
    gene_key: str = "name",
    make_unique: bool = False,
    require_integer: bool = True,
    matrix: str = "filtered",
    image_scale: float = 1.0,
    work_um_per_px: float | None = None,
    max_dense_gb: float = 8.0,
    name: str | None = None,
    fix: PositionFix | None = None,
    alignment_check: bool = True,
) -> STSample:
    """Read one bin size of a Visium HD run.

    Args:
        folder: ``outs``, ``outs/binned_outputs`` or a ``square_XXXum`` folder.
        bin_um: bin size in µm (2, 8, 16, ...); None = the one ``folder`` points at.
        image: ``"hires"``, ``"lowres"`` or a path to the full-resolution image; default hires,
            else lowres with a warning.
        work_um_per_px: reduce images finer than this many µm per pixel on load; default
            ``bin_um / 4`` (4 image pixels per bin edge). Images are never enlarged.
        genes, n_top_genes, gene_key, make_unique, require_integer, matrix, image_scale,
            max_dense_gb, name, fix, alignment_check: as in
            :func:`diffst.io.spaceranger.read_spaceranger`.

    Returns:
        ``expr`` ``(G, H, W)`` counts per bin, ``cell_um`` = bin size in µm.
    """
    bin_dir = locate_bin_folder(folder, bin_um)
    bin_size = int(_BIN_DIR.match(bin_dir.name).group(1))
    spatial = bin_dir / "spatial"
    if not spatial.is_dir():
        raise FileNotFoundError(f"no 'spatial' folder in {bin_dir}")
    outs = bin_dir.parent.parent
    sf_path = spatial / "scalefactors_json.json"
    if not sf_path.is_file():
        raise FileNotFoundError(f"missing scale factors file {sf_path.name} in {spatial}")
    scalefactors = read_scalefactors(sf_path)
    bin_size = _bin_size(scalefactors, bin_size, sf_path)
    chosen = choose_image(
        image, [spatial, outs / "spatial"], scalefactors, sf_path, image_scale, base=outs
    )
    positions_path = find_positions(spatial)
    positions = read_positions(positions_path)
    counts = read_10x_matrix(find_matrix(bin_dir, matrix), gene_key, make_unique, require_integer)
    spot_idx, pos = match_spots(counts, positions, positions_path)

    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    layout = layout_spots(
        pos["array_row"].to_numpy(), pos["array_col"].to_numpy(), xy, bin_size, positions_path
    )
    _check_microns_per_pixel(scalefactors, layout.um_per_px_fullres, sf_path)
    # bins are square: state the cell size exactly and keep cell_um == px_per_cell * µm/px
    layout.cell_um = float(bin_size)
    layout.um_per_px_fullres = bin_size / np.sqrt(abs(np.linalg.det(layout.affine_fullres[:2, :2])))
    gene_idx = choose_genes(counts, spot_idx, genes, n_top_genes)
    meta = {
        "reader": "diffst.io.visium_hd.read_visium_hd",
        "folder": str(bin_dir),
        "bin_um": bin_size,
        "matrix_path": str(counts.path),
        "positions_path": str(positions_path),
        "scalefactors": scalefactors,
        "n_genes_in_file": len(counts.genes),
        "gene_key": gene_key,
        **counts.meta,
        **pos.attrs,
    }
    return finish_sample(
        counts.matrix[spot_idx][:, gene_idx],
        [counts.genes[i] for i in gene_idx],
        layout,
        chosen,
        name or f"{_run_name(outs)}_{bin_size:03d}um",
        meta,
        counts.path,
        work_um_per_px if work_um_per_px is not None else bin_size / 4,
        max_dense_gb,
        fix=fix,
        alignment_check=alignment_check,
        positions=f"pxl_row_in_fullres/pxl_col_in_fullres in {positions_path.name}",
    )


def locate_bin_folder(folder: str | Path, bin_um: int | None) -> Path:
    """The ``square_XXXum`` folder for ``bin_um`` under ``folder`` (see :func:`read_visium_hd`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder; pass the Visium HD 'outs' folder")
    m = _BIN_DIR.match(folder.name)
    if m:
        if bin_um is not None and int(m.group(1)) != int(bin_um):
            raise ValueError(
                f"{folder} holds {int(m.group(1))} µm bins but {bin_um:g} µm bins were asked "
                "for (--bin-um, bin_um= in Python); pass the matching square_XXXum folder or "
                "leave --bin-um out (bin_um=None in Python)"
            )
        return folder
    for candidate in (folder, folder / "binned_outputs", folder / "outs" / "binned_outputs"):
        bins = sorted(p for p in candidate.glob("square_*um") if p.is_dir()) \
            if candidate.is_dir() else []
        if not bins:
            continue
        if bin_um is None:
            raise ValueError(
                f"{candidate} holds several bin sizes ({', '.join(p.name for p in bins)}); "
                "choose one with --bin-um, e.g. --bin-um 8 (bin_um=8 in Python), or pass its "
                "square_XXXum folder"
            )
        wanted = candidate / f"square_{int(bin_um):03d}um"
        if not wanted.is_dir():
            raise FileNotFoundError(
                f"no {wanted.name} in {candidate}; available: {', '.join(p.name for p in bins)}"
            )
        return wanted
    raise FileNotFoundError(
        f"no Visium HD binned outputs under {folder}: looked for binned_outputs/square_XXXum/ "
        "folders; pass the Space Ranger 'outs' folder of a Visium HD run"
    )


def _bin_size(sf: dict, from_name: int, sf_path: Path) -> int:
    value = sf.get("bin_size_um")
    if value is None:
        return from_name
    if not np.isclose(float(value), from_name):
        raise SampleError(
            f"{sf_path}: bin_size_um={value} contradicts the folder name square_{from_name:03d}um"
        )
    return from_name


def _check_microns_per_pixel(sf: dict, fitted: float, sf_path: Path) -> None:
    value = sf.get("microns_per_pixel")
    if value is None:
        return
    if abs(float(value) / fitted - 1) > UM_PER_PX_TOLERANCE:
        raise SampleError(
            f"{sf_path}: microns_per_pixel={float(value):g} contradicts the bin positions, whose "
            f"pitch gives {fitted:.4g} µm per full-resolution pixel; the scale factors belong to "
            "another run"
        )


def _run_name(outs: Path) -> str:
    return outs.parent.name if outs.name == "outs" else outs.name

"""Read 10x Genomics Space Ranger (Visium) output into an :class:`STSample`.

Files (in the ``outs`` folder, or the folder passed):

* counts: ``filtered_feature_bc_matrix.h5`` (10x HDF5: CSC matrix genes x barcodes, with
  ``features/name`` and ``features/id``) or the Matrix Market folder
  ``filtered_feature_bc_matrix/`` (``matrix.mtx[.gz]``, ``features.tsv[.gz]``,
  ``barcodes.tsv[.gz]``). Only features of type "Gene Expression" are kept.
* spot positions: ``spatial/tissue_positions_list.csv`` (Space Ranger 1.x, no header),
  ``spatial/tissue_positions.csv`` (2.0+, header) or ``spatial/tissue_positions.parquet``;
  columns ``barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres``.
* ``spatial/scalefactors_json.json`` and the images ``spatial/tissue_hires_image.png`` /
  ``tissue_lowres_image.png`` (full-res pixel coordinates times ``tissue_{hires,lowres}_scalef``
  give pixels of those images).

Which image: ``image="hires"``, ``"lowres"`` or a path to the full-resolution TIFF/JPEG that
Space Ranger was run with (``image_scale`` = its size relative to the full-res frame, normally 1).
Default: hires, else lowres with a warning naming the missing file. Images finer than
``work_um_per_px`` µm per pixel are reduced on load (see :mod:`diffst.io.imageio`).

Grid geometry
-------------
Visium spots sit on a hexagonal lattice: ``array_row`` 0..77, ``array_col`` 0..127 and only
positions with ``array_row + array_col`` even are used; neighbours in a row are 2 array columns =
100 µm apart and rows are 100·√3/2 ≈ 86.6 µm apart. The raster used here is::

    raster row = array_row - row0,     raster col = array_col // 2 - col0

(``row0, col0`` crop the raster to the bounding box of the measured tissue spots; both are in
``meta["raster_origin"]``). A raster cell is therefore 100 µm wide and ~86.6 µm tall, and spots
with odd ``array_col`` sit half a cell (+50 µm) to the right of their cell centre. The
raster->image affine is a least-squares fit (:func:`diffst.data.grid.fit_affine`) of the
in-tissue spots' pixel positions against their true lattice positions ``(col + ½·shifted, row)``
(unbiased pitch and orientation even when shifted spots are unevenly spread), followed by a
quarter-cell shift so each cell centre lies halfway between the two row offsets: every spot is
then ±¼ cell (±25 µm) from its cell centre along the rows. This documented residual is in
``meta["affine_rms_residual_cells"]``; spots off the lattice by more than a quarter cell (after
the offset is modelled, ``meta["lattice_max_deviation_cells"]``) raise, as the positions then do
not belong to the array coordinates.

Cell size: :class:`STSample` has one ``cell_um``; we report the edge of the *equal-area square*,
``cell_um = sqrt(100 x 86.6) ≈ 93.1 µm`` (measured from the fitted affine), so that
``cell_um == px_per_cell * image_um_per_px`` holds and counts per cell keep their density. The
anisotropic sizes are in ``meta["cell_um_xy"]``; the affine itself carries the true anisotropy,
so image resampling (:func:`diffst.data.image.aligned_image`) is exact.

µm per pixel: derived from the fitted spot pitch (100 µm centre to centre), which is
unambiguous. ``spot_diameter_fullres`` is *not* used for this: Space Ranger defines it for a
nominal spot larger than the 55 µm capture spot (65 µm in Space Ranger 1.x, 70 µm in the 3.0
fixture), so ``55 / spot_diameter_fullres`` would be 15-25 % off. It is only checked for
plausibility (the implied diameter must lie within 45-90 µm).

Spots: the mask holds spots with ``in_tissue == 1`` that have a column in the count matrix.
Matrix barcodes missing from the positions raise (the files come from different runs); matrix
spots outside tissue and tissue spots absent from the matrix are left out with a warning
(never filled with zeros).
"""

from __future__ import annotations

import gzip
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from diffst.data.grid import fit_affine
from diffst.data.sample import SampleError, STSample
from diffst.io.alignment import PositionFix, align_to_image, image_file_blank
from diffst.io.counts import (
    check_counts,
    check_dense_size,
    check_mask_not_empty,
    check_unique,
    duplicated_names,
    place_counts,
    select_gene_columns,
    top_gene_columns,
)
from diffst.io.counts import (
    make_unique as make_names_unique,
)
from diffst.io.imageio import image_size, load_working_image

VISIUM_PITCH_UM = 100.0  # centre-to-centre distance of neighbouring Visium spots
POSITION_FILES = ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv")
POSITION_COLUMNS = (
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
)
IMAGE_FILES = {"hires": "tissue_hires_image.png", "lowres": "tissue_lowres_image.png"}
MAX_LATTICE_DEVIATION = 0.25  # cells; after modelling the hexagonal half-cell offset
SPOT_DIAMETER_UM_RANGE = (45.0, 90.0)
SIZE_TOLERANCE = 0.02  # relative, for image sizes implied by scale factors (plus 2 px rounding)


# ---------------------------------------------------------------------------- containers
@dataclass
class CountMatrix:
    """A spots x genes count matrix as read from a 10x file.

    Attributes:
        matrix: ``(N, G)`` CSR counts.
        barcodes: N spot barcodes.
        genes: G gene names (symbols or ids, see ``gene_key``), unique.
        gene_ids: G gene ids (Ensembl), as in the file.
        path: the file or folder read.
        meta: notes (dropped feature types, names made unique).
    """

    matrix: sp.csr_matrix
    barcodes: list[str]
    genes: list[str]
    gene_ids: list[str]
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpotLayout:
    """Measured tissue spots placed on a raster, with the raster->full-res-image affine.

    Attributes:
        rows, cols: ``(N,)`` raster indices, from 0.
        xy_fullres: ``(N, 2)`` spot centres in full-resolution image pixels ``(x, y)``.
        shape: raster ``(H, W)``.
        affine_fullres: ``(3, 3)`` raster ``(col, row, 1)`` -> full-res ``(x, y, 1)``.
        um_per_px_fullres: µm per full-resolution pixel.
        cell_um: equal-area square cell edge in µm.
        meta: lattice kind, origin, residuals, anisotropic cell size.
    """

    rows: np.ndarray
    cols: np.ndarray
    xy_fullres: np.ndarray
    shape: tuple[int, int]
    affine_fullres: np.ndarray
    um_per_px_fullres: float
    cell_um: float
    meta: dict[str, Any]


@dataclass
class ChosenImage:
    """The image a sample is built on and how full-res pixel coordinates map onto it.

    Attributes:
        path: file (or description of the AnnData slot) the image came from; None = no image.
        kind: ``"hires"``, ``"lowres"``, ``"fullres"`` or ``"none"``.
        scalef: image pixels per full-resolution pixel.
        array: the image as ``(H, W, 3)`` uint8 when already in memory (AnnData), else None.
    """

    path: Path | str | None
    kind: str
    scalef: float
    array: np.ndarray | None = None


# ---------------------------------------------------------------------------- reader
def read_spaceranger(
    folder: str | Path,
    image: str | Path | None = None,
    genes: Sequence[str] | None = None,
    n_top_genes: int | None = None,
    gene_key: str = "name",
    make_unique: bool = False,
    require_integer: bool = True,
    matrix: str = "filtered",
    image_scale: float = 1.0,
    work_um_per_px: float | None = 2.0,
    max_dense_gb: float = 8.0,
    name: str | None = None,
    fix: PositionFix | None = None,
    alignment_check: bool = True,
) -> STSample:
    """Read a Space Ranger (Visium) output folder; geometry in the module docstring.

    Args:
        folder: the ``outs`` folder (or its parent).
        image: ``"hires"``, ``"lowres"`` or a path to the full-resolution image; default hires,
            falling back to lowres with a warning.
        genes: keep these genes in this order (unknown names raise). Default: all genes.
        n_top_genes: keep the N genes with the most counts in tissue (file order kept).
        gene_key: ``"name"`` (gene symbols) or ``"id"`` (Ensembl ids).
        make_unique: append ``-1``, ``-2`` to repeated symbols instead of raising.
        require_integer: reject non-integer counts.
        matrix: ``"filtered"`` or ``"raw"`` feature-barcode matrix.
        image_scale: size of an ``image`` path relative to the full-res frame (1 = full-res).
        work_um_per_px: reduce images finer than this many µm per pixel on load (None: never).
        max_dense_gb: refuse dense rasters larger than this (select genes instead).
        name: sample name; default the folder name.
        fix: correction of the spot positions (x/y swap, flip, rotation, scale), see
            :mod:`diffst.io.alignment`.
        alignment_check: refuse a blank image or spots that miss the tissue (False: skip).

    Returns:
        ``expr`` ``(G, H, W)`` counts per spot (one cell per spot), ``cell_um`` ≈ 93.1 µm.
    """
    files = locate_spaceranger(folder, matrix)
    positions = read_positions(files["positions"])
    scalefactors = read_scalefactors(files["scalefactors"])
    chosen = choose_image(image, [files["spatial"]], scalefactors, files["scalefactors"],
                          image_scale, base=files["outs"])
    counts = read_10x_matrix(files["matrix"], gene_key, make_unique, require_integer)
    spot_idx, pos = match_spots(counts, positions, files["positions"])

    rows, cols, shifted = hex_raster_index(
        pos["array_row"].to_numpy(), pos["array_col"].to_numpy(), files["positions"]
    )
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    layout = layout_spots(rows, cols, xy, VISIUM_PITCH_UM, files["positions"], shifted)
    check_spot_diameter(scalefactors, layout, files["scalefactors"])

    gene_idx = choose_genes(counts, spot_idx, genes, n_top_genes)
    meta = {
        "reader": "diffst.io.spaceranger.read_spaceranger",
        "folder": str(files["outs"]),
        "matrix_path": str(files["matrix"]),
        "positions_path": str(files["positions"]),
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
        name or _default_name(files["outs"]),
        meta,
        counts.path,
        work_um_per_px,
        max_dense_gb,
        fix=fix,
        alignment_check=alignment_check,
        positions=f"pxl_row_in_fullres/pxl_col_in_fullres in {files['positions'].name} (or "
                  f"tissue_{chosen.kind}_scalef)",
    )


# ---------------------------------------------------------------------------- files
def locate_spaceranger(folder: str | Path, matrix: str = "filtered") -> dict[str, Path]:
    """Find the Space Ranger files under ``folder`` (or ``folder/outs``).

    Returns a dict with ``outs``, ``spatial``, ``matrix`` (h5 file or mtx folder),
    ``positions`` and ``scalefactors``. A missing file raises FileNotFoundError naming it and
    the folder searched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder; pass the Space Ranger 'outs' folder")
    outs = folder / "outs" if (folder / "outs").is_dir() and not (folder / "spatial").is_dir() \
        else folder
    spatial = outs / "spatial"
    if not spatial.is_dir():
        raise FileNotFoundError(
            f"no 'spatial' folder in {outs}; pass the Space Ranger output folder ('outs') that "
            "holds spatial/ and filtered_feature_bc_matrix.h5"
        )
    return {
        "outs": outs,
        "spatial": spatial,
        "matrix": find_matrix(outs, matrix),
        "positions": find_positions(spatial),
        "scalefactors": _require_file(spatial / "scalefactors_json.json", "scale factors"),
    }


def find_matrix(folder: Path, kind: str = "filtered") -> Path:
    """The ``{kind}_feature_bc_matrix.h5`` file, else the ``{kind}_feature_bc_matrix/`` folder."""
    if kind not in ("filtered", "raw"):
        raise ValueError(f"matrix must be 'filtered' or 'raw', got {kind!r}")
    h5 = folder / f"{kind}_feature_bc_matrix.h5"
    mtx = folder / f"{kind}_feature_bc_matrix"
    if h5.is_file():
        return h5
    if mtx.is_dir():
        return mtx
    other = "raw" if kind == "filtered" else "filtered"
    hint = (f"; {other}_feature_bc_matrix is there: pass matrix={other!r}"
            if any((folder / f"{other}_feature_bc_matrix{s}").exists() for s in (".h5", ""))
            else "")
    raise FileNotFoundError(
        f"no count matrix in {folder}: looked for {h5.name} and the folder {mtx.name}/ "
        f"(matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz){hint}"
    )


def find_positions(spatial: Path) -> Path:
    """The spot position file in ``spatial`` (parquet, then csv with header, then v1 csv)."""
    for fname in POSITION_FILES:
        if (spatial / fname).is_file():
            return spatial / fname
    raise FileNotFoundError(
        f"no spot positions in {spatial}: looked for {', '.join(POSITION_FILES)}"
    )


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"missing {what} file {path.name} in {path.parent}")
    return path


def _default_name(outs: Path) -> str:
    return outs.parent.name if outs.name == "outs" else outs.name


# ---------------------------------------------------------------------------- counts
def read_10x_matrix(
    path: str | Path,
    gene_key: str = "name",
    make_unique: bool = False,
    require_integer: bool = True,
    feature_type: str = "Gene Expression",
) -> CountMatrix:
    """Read a 10x feature-barcode matrix (HDF5 file or Matrix Market folder).

    Only features of ``feature_type`` are kept (when the file records types). Counts are
    checked (finite, >= 0, integers unless ``require_integer=False``); barcodes must be unique,
    and so must gene names unless ``make_unique``.
    """
    path = Path(path)
    if gene_key not in ("name", "id"):
        raise ValueError(f"--gene-key (gene_key= in Python) must be 'name' or 'id', got "
                         f"{gene_key!r}")
    if path.is_dir():
        mat, barcodes, names, ids, types = _read_mtx_folder(path)
    else:
        mat, barcodes, names, ids, types = _read_10x_h5(path)
    meta: dict[str, Any] = {}
    if types is not None:
        keep = np.flatnonzero(np.asarray(types) == feature_type)
        if len(keep) == 0:
            raise SampleError(
                f"{path}: no features of type {feature_type!r} (types present: "
                f"{sorted(set(types))})"
            )
        if len(keep) < len(types):
            meta["dropped_feature_types"] = sorted(set(types) - {feature_type})
            mat, names, ids = mat[:, keep], [names[i] for i in keep], [ids[i] for i in keep]
    check_unique(barcodes, path, "barcode", "each spot barcode must appear once; the matrix "
                 "is damaged or was concatenated from several runs")
    genes = names if gene_key == "name" else ids
    dups = duplicated_names(genes)
    if dups and make_unique:
        meta["duplicate_gene_symbols"] = dups
        genes = make_names_unique(genes)
    else:
        check_unique(genes, path, f"gene {gene_key}", "pass --gene-key id (gene_key='id' in "
                     "Python) to use the unique gene ids, or --make-unique (make_unique=True) "
                     "to append -1, -2 to repeats")
    check_counts(mat, path, "counts", require_integer)
    return CountMatrix(sp.csr_matrix(mat), list(barcodes), list(genes), list(ids), path, meta)


def _decode(arr: np.ndarray) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in arr]


def _read_10x_h5(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with h5py.File(path, "r") as fh:
            if "matrix" not in fh:
                raise SampleError(
                    f"{path}: not a 10x feature-barcode HDF5 file (no 'matrix' group); pass "
                    "filtered_feature_bc_matrix.h5 from Space Ranger"
                )
            grp = fh["matrix"]
            n_genes, n_spots = (int(v) for v in grp["shape"][:])
            mat = sp.csc_matrix(
                (grp["data"][:], grp["indices"][:], grp["indptr"][:]), shape=(n_genes, n_spots)
            ).T
            barcodes = _decode(grp["barcodes"][:])
            feats = grp["features"]
            names = _decode(feats["name"][:])
            ids = _decode(feats["id"][:]) if "id" in feats else list(names)
            types = _decode(feats["feature_type"][:]) if "feature_type" in feats else None
    except (OSError, KeyError, ValueError) as exc:
        if isinstance(exc, SampleError):
            raise
        raise SampleError(f"{path}: cannot read as a 10x HDF5 matrix ({exc})") from exc
    _check_lengths(path, mat.shape, barcodes, names)
    return mat, barcodes, names, ids, types


def _read_mtx_folder(folder: Path):
    mtx = _first_existing(folder, ("matrix.mtx.gz", "matrix.mtx"), "matrix")
    feats = _first_existing(
        folder, ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"), "features"
    )
    bcs = _first_existing(folder, ("barcodes.tsv.gz", "barcodes.tsv"), "barcodes")
    mat = read_mtx(mtx)
    features = _read_tsv(feats, "features (gene id, name, type)")
    barcodes = _read_tsv(bcs, "barcodes")[0].tolist()
    mat = sp.csr_matrix(mat).T  # file is genes x barcodes
    ids = features[0].tolist()
    names = features[1].tolist() if features.shape[1] > 1 else list(ids)
    types = features[2].tolist() if features.shape[1] > 2 else None
    _check_lengths(folder, mat.shape, barcodes, names)
    return mat, barcodes, names, ids, types


def read_mtx(path: str | Path) -> sp.coo_matrix:
    """Read a Matrix Market ``coordinate`` file (``.mtx`` or ``.mtx.gz``) as a COO matrix.

    Parsed with pandas rather than :func:`scipy.io.mmread`, whose C++ reader aborts the whole
    Python process when it fails on a compressed stream. Integer, real and pattern fields,
    ``general`` symmetry only; every problem raises :class:`SampleError` naming the file.
    """
    path = Path(path)
    try:
        with _open(path) as fh:
            header = fh.readline().decode("latin-1").split()
            n_comment = 1
            line = fh.readline()
            while line.startswith(b"%"):
                n_comment += 1
                line = fh.readline()
            size = line.split()
            table = pd.read_csv(fh, sep=r"\s+", header=None, engine="c", low_memory=False)
    except EOFError as exc:
        raise SampleError(f"{path}: the file is truncated (compressed stream ends early); "
                          "copy or download it again") from exc
    except pd.errors.EmptyDataError:
        table = pd.DataFrame(np.zeros((0, 3), dtype=str))
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise SampleError(f"{path}: cannot read as a Matrix Market file ({exc})") from exc
    field = _mtx_header(path, header)
    try:
        n_rows, n_cols, nnz = (int(v) for v in size)
    except ValueError as exc:
        raise SampleError(f"{path}: line {n_comment + 1} must give 'rows columns entries', got "
                          f"{b' '.join(size).decode('latin-1')!r}") from exc
    return _mtx_entries(path, table, field, (n_rows, n_cols), nnz, n_comment + 2)


def _mtx_header(path: Path, header: list[str]) -> str:
    words = [w.lower() for w in header]
    if len(words) < 5 or words[0] != "%%matrixmarket" or words[1:3] != ["matrix", "coordinate"]:
        raise SampleError(f"{path}: not a Matrix Market coordinate file (first line "
                          f"{' '.join(header)!r}); pass matrix.mtx[.gz] from Space Ranger")
    if words[3] not in ("integer", "real", "pattern") or words[4] != "general":
        raise SampleError(f"{path}: unsupported Matrix Market type {' '.join(header[3:])!r}; "
                          "expected 'integer general' counts")
    return words[3]


def _mtx_entries(path: Path, table: pd.DataFrame, field: str, shape: tuple[int, int],
                 nnz: int, first_line: int) -> sp.coo_matrix:
    want = 2 if field == "pattern" else 3
    if len(table) != nnz or (nnz and table.shape[1] != want):
        raise SampleError(f"{path}: the header announces {nnz} entries of {want} columns, the "
                          f"file has {len(table)} rows of {table.shape[1]}; the file is "
                          "truncated or damaged")
    cols = [pd.to_numeric(table[i], errors="coerce").to_numpy(np.float64) for i in range(want)]
    for i, what in enumerate(["row index", "column index", "value"][:want]):
        bad = ~np.isfinite(cols[i])
        if i < 2:
            bad |= (cols[i] != np.round(cols[i])) | (cols[i] < 1) | (cols[i] > shape[i])
        if bad.any():
            k = int(np.argmax(bad))
            raw = table.iloc[k, i]
            found = "missing (too few fields)" if pd.isna(raw) else repr(raw)
            raise SampleError(f"{path}: line {first_line + k}: invalid {what} {found}"
                              + (f" (matrix is {shape[0]} x {shape[1]})" if i < 2 else ""))
    data = cols[2] if field != "pattern" else np.ones(nnz)
    return sp.coo_matrix((data, (cols[0].astype(np.int64) - 1, cols[1].astype(np.int64) - 1)),
                         shape=shape)


def _read_tsv(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", header=None, dtype=str)
    except EOFError as exc:
        raise SampleError(f"{path}: the file is truncated (compressed stream ends early); "
                          "copy or download it again") from exc
    except pd.errors.EmptyDataError as exc:
        raise SampleError(f"{path}: the {what} file is empty") from exc
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise SampleError(f"{path}: cannot read the {what} ({exc})") from exc


def _first_existing(folder: Path, names: Sequence[str], what: str) -> Path:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise FileNotFoundError(f"missing {what} file in {folder}: looked for {', '.join(names)}")


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _check_lengths(path: Path, shape: tuple[int, int], barcodes: list, genes: list) -> None:
    if shape != (len(barcodes), len(genes)):
        raise SampleError(
            f"{path}: matrix is {shape[1]} genes x {shape[0]} barcodes but lists "
            f"{len(genes)} features and {len(barcodes)} barcodes; the files do not belong together"
        )


def choose_genes(
    counts: CountMatrix,
    spot_idx: np.ndarray,
    genes: Sequence[str] | None,
    n_top_genes: int | None,
) -> list[int]:
    """Gene column indices: ``genes`` in order, else the top ``n_top_genes`` in tissue, else all."""
    if genes is not None and n_top_genes is not None:
        raise ValueError("pass either genes or n_top_genes, not both")
    if genes is not None:
        return select_gene_columns(counts.genes, genes, counts.path)
    if n_top_genes is not None:
        return top_gene_columns(counts.matrix[spot_idx], n_top_genes)
    return list(range(len(counts.genes)))


# ---------------------------------------------------------------------------- positions
def read_positions(path: str | Path) -> pd.DataFrame:
    """Read a Space Ranger spot position file (v1 csv, v2+ csv or parquet).

    Returns a DataFrame indexed by barcode with ``in_tissue`` (bool), ``array_row``,
    ``array_col`` (int) and ``pxl_row_in_fullres``, ``pxl_col_in_fullres`` (float).
    """
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            with open(path) as fh:
                first = fh.readline()
            has_header = first.split(",")[0].strip().strip('"') == "barcode"
            df = pd.read_csv(path, header=0 if has_header else None)
            if not has_header:
                if df.shape[1] != len(POSITION_COLUMNS):
                    raise SampleError(
                        f"{path}: expected {len(POSITION_COLUMNS)} columns "
                        f"({', '.join(POSITION_COLUMNS)}) in a header-less positions file, "
                        f"found {df.shape[1]}"
                    )
                df.columns = list(POSITION_COLUMNS)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        if isinstance(exc, SampleError):
            raise
        raise SampleError(f"{path}: cannot read the spot positions ({exc})") from exc
    missing = [c for c in POSITION_COLUMNS if c not in df.columns]
    if missing:
        raise SampleError(f"{path}: missing column(s) {missing}; expected {list(POSITION_COLUMNS)}")
    df = df[list(POSITION_COLUMNS)].copy()
    df["barcode"] = df["barcode"].astype(str)
    num = df.columns[1:]
    df[num] = df[num].apply(pd.to_numeric, errors="coerce")
    bad = df[num].isna().any(axis=1)
    if bad.any():
        raise SampleError(
            f"{path}: {int(bad.sum())} row(s) with missing or non-numeric values (e.g. barcode "
            f"{df.loc[bad, 'barcode'].iloc[0]!r}); the positions file is damaged"
        )
    if not df["in_tissue"].isin([0, 1]).all():
        raise SampleError(f"{path}: in_tissue must be 0 or 1")
    for col in ("array_row", "array_col"):
        if (df[col] != np.round(df[col])).any():
            raise SampleError(f"{path}: {col} must hold whole numbers")
    check_unique(df["barcode"].tolist(), path, "barcode",
                 "each spot must appear once in the positions file")
    df["in_tissue"] = df["in_tissue"].astype(bool)
    df[["array_row", "array_col"]] = df[["array_row", "array_col"]].astype(np.int64)
    return df.set_index("barcode")


def match_spots(
    counts: CountMatrix, positions: pd.DataFrame, positions_path: Path
) -> tuple[np.ndarray, pd.DataFrame]:
    """Pair matrix barcodes with positions; keep spots in tissue that have counts.

    Returns the matrix row indices of the kept spots and their position rows (same order);
    ``attrs`` of the latter hold the numbers of spots left out and why.
    """
    bcs = pd.Index(counts.barcodes)
    unknown = ~bcs.isin(positions.index)
    if unknown.any():
        raise SampleError(
            f"{counts.path}: {int(unknown.sum())} of {len(bcs)} barcodes are not in "
            f"{positions_path} (e.g. {bcs[unknown][0]!r}); the count matrix and the spatial "
            "folder come from different runs"
        )
    pos = positions.loc[bcs]
    tissue = pos["in_tissue"].to_numpy()
    n_outside = int((~tissue).sum())
    n_unmeasured = int(positions["in_tissue"].sum() - tissue.sum())
    if n_outside:
        warnings.warn(
            f"{counts.path}: {n_outside} spot(s) with counts are outside the tissue "
            f"(in_tissue == 0 in {positions_path.name}) and are left out",
            stacklevel=3,
        )
    if n_unmeasured:
        warnings.warn(
            f"{positions_path}: {n_unmeasured} in-tissue spot(s) have no counts in "
            f"{counts.path.name}; they stay outside the mask (not filled with zeros)",
            stacklevel=3,
        )
    idx = np.flatnonzero(tissue)
    check_mask_not_empty(
        tissue, positions_path,
        "no barcode of the count matrix has in_tissue == 1; wrong positions file?",
    )
    kept = pos.iloc[idx].copy()
    kept.attrs = {"n_spots_outside_tissue": n_outside, "n_tissue_spots_without_counts":
                  n_unmeasured}
    return idx, kept


# ---------------------------------------------------------------------------- geometry
def hex_raster_index(
    array_row: np.ndarray, array_col: np.ndarray, path: str | Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map Visium hexagonal array coordinates to raster ``(row, col)``.

    ``row = array_row``, ``col = array_col // 2``. Within a row all array columns share a
    parity (on Visium ``array_row + array_col`` is even), so the map is one-to-one.

    Returns:
        rows, cols ``(N,)`` int and ``shifted`` ``(N,)`` bool: spots (odd ``array_col``) that sit
        half a cell to the right of their cell centre.
    """
    array_row = np.asarray(array_row, dtype=np.int64)
    array_col = np.asarray(array_col, dtype=np.int64)
    parity = (array_row + array_col) % 2
    if len(np.unique(parity)) > 1:
        raise SampleError(
            f"{path}: array_row + array_col is even for some spots and odd for others; this is "
            "not a Visium hexagonal grid (for Visium HD bins use read_visium_hd)"
        )
    return array_row, array_col // 2, (array_col % 2) == 1


def layout_spots(
    rows: np.ndarray,
    cols: np.ndarray,
    xy_fullres: np.ndarray,
    col_step_um: float,
    path: str | Path,
    shifted: np.ndarray | None = None,
) -> SpotLayout:
    """Crop raster indices to their bounding box and fit the raster->full-res affine.

    Args:
        rows, cols: ``(N,)`` raster indices of the measured tissue spots.
        xy_fullres: ``(N, 2)`` their full-res pixel centres ``(x, y)``.
        col_step_um: µm between neighbouring raster columns (100 Visium, bin size HD).
        path: positions file, for messages.
        shifted: ``(N,)`` bool, spots offset by +½ cell along the raster rows (hexagonal grid).

    Raises:
        SampleError: fewer than 3 spots, collinear spots, or positions off the lattice by more
            than a quarter cell.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    xy = np.asarray(xy_fullres, dtype=np.float64)
    if len(rows) < 3:
        raise SampleError(
            f"{path}: only {len(rows)} measured tissue spot(s); need at least 3 to align the "
            "spots with the image"
        )
    origin = (int(rows.min()), int(cols.min()))
    rows, cols = rows - origin[0], cols - origin[1]
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    src = np.column_stack([cols, rows]).astype(np.float64)
    lattice_src = src.copy()
    if shifted is not None:  # true lattice position of hexagonal spots: +½ column when shifted
        lattice_src[:, 0] += 0.5 * np.asarray(shifted, dtype=np.float64)
    lattice = fit_affine(lattice_src, xy)
    deviation = np.hypot(*(xy - _apply(lattice, lattice_src)).T)
    # cell centres halfway between the two spot rows' offsets: every spot is ±¼ cell off
    affine = lattice @ _shift(0.25) if shifted is not None else lattice
    col_px = float(np.hypot(*affine[:2, 0]))
    row_px = float(np.hypot(*affine[:2, 1]))
    resid = np.hypot(*(xy - _apply(affine, src)).T) / col_px
    deviation = deviation / col_px
    if deviation.max() > MAX_LATTICE_DEVIATION:
        worst = int(np.argmax(deviation))
        raise SampleError(
            f"{path}: spot pixel positions do not follow the array grid: spot at raster "
            f"row {rows[worst] + origin[0]}, col {cols[worst] + origin[1]} is "
            f"{deviation[worst]:.2f} cells off the fitted lattice (allowed "
            f"{MAX_LATTICE_DEVIATION}); the file is damaged or mixes positions of two runs"
        )
    um_per_px = col_step_um / col_px
    cell_um = math.sqrt(abs(np.linalg.det(affine[:2, :2]))) * um_per_px
    meta = {
        "lattice": "hexagonal" if shifted is not None else "square",
        "raster_origin": list(origin),
        "cell_um_xy": [col_step_um, row_px * um_per_px],
        "um_per_px_fullres": um_per_px,
        "affine_rms_residual_cells": float(np.sqrt(np.mean(resid**2))),
        "affine_max_residual_cells": float(resid.max()),
        "lattice_max_deviation_cells": float(deviation.max()),
    }
    if shifted is not None:
        meta["raster_convention"] = (
            "row = array_row - raster_origin[0], col = array_col // 2 - raster_origin[1]; spots "
            "with odd array_col sit half a cell right of their cell centre"
        )
    else:
        meta["raster_convention"] = (
            "row = array_row - raster_origin[0], col = array_col - raster_origin[1]"
        )
    return SpotLayout(rows, cols, xy, shape, affine, um_per_px, cell_um, meta)


def _apply(affine: np.ndarray, src: np.ndarray) -> np.ndarray:
    return src @ affine[:2, :2].T + affine[:2, 2]


def _shift(dcol: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dcol], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def check_spot_diameter(scalefactors: dict, layout: SpotLayout, path: Path) -> None:
    """``spot_diameter_fullres`` must imply a plausible spot size given the fitted pitch."""
    diam_px = scalefactors.get("spot_diameter_fullres")
    if diam_px is None:
        return
    diam_um = float(diam_px) * layout.um_per_px_fullres
    layout.meta["spot_diameter_um_implied"] = diam_um
    lo, hi = SPOT_DIAMETER_UM_RANGE
    if not lo <= diam_um <= hi:
        raise SampleError(
            f"{path}: spot_diameter_fullres={float(diam_px):g} px contradicts the spot positions "
            f"(their 100 µm pitch is {VISIUM_PITCH_UM / layout.um_per_px_fullres:.1f} px, so "
            f"the spot would be {diam_um:.0f} µm, expected {lo:g}-{hi:g}); the scale factors "
            "belong to another run or image"
        )


# ---------------------------------------------------------------------------- images
def read_scalefactors(path: str | Path) -> dict[str, Any]:
    """Read ``scalefactors_json.json`` as a dict (values checked when used)."""
    path = Path(path)
    try:
        with open(path) as fh:
            sf = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise SampleError(f"{path}: cannot read the scale factors ({exc})") from exc
    if not isinstance(sf, dict):
        raise SampleError(f"{path}: expected a JSON object of scale factors")
    return sf


def scale_factor(sf: dict, key: str, path: str | Path) -> float:
    """A positive scale factor from the scale-factor dict, or a clear error."""
    value = sf.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if not value > 0:
        raise SampleError(f"{path}: {key} is missing or not a positive number ({sf.get(key)!r})")
    return value


def choose_image(
    image: str | Path | None,
    spatial_dirs: Sequence[Path],
    sf: dict,
    sf_path: Path,
    image_scale: float = 1.0,
    base: Path | None = None,
) -> ChosenImage:
    """Pick the image for ``image`` (``"hires"``, ``"lowres"``, a path, or None = default).

    Default: hires, else lowres with a warning naming the missing hires file. Also checks that
    the scale factors agree with the image sizes (hires vs lowres; a full-res path vs hires).
    """
    found = {k: _find_in(spatial_dirs, f) for k, f in IMAGE_FILES.items()}
    if image is None:
        blank = image_file_blank(found["hires"]) if found["hires"] is not None else None
        if found["hires"] is not None and (blank is None or found["lowres"] is None):
            image = "hires"
        elif blank is not None:
            warnings.warn(
                f"{found['hires']} is blank ({blank}); using the low-resolution image "
                f"{found['lowres']} instead (pass the full-resolution image with --image PATH, "
                "image=PATH in Python, for more detail)",
                stacklevel=3,
            )
            image = "lowres"
        elif found["lowres"] is not None:
            warnings.warn(
                f"{spatial_dirs[0] / IMAGE_FILES['hires']} is missing; using the low-resolution "
                f"image {found['lowres']} instead (pass the full-resolution image with --image "
                "PATH, image=PATH in Python, for more detail)",
                stacklevel=3,
            )
            image = "lowres"
        else:
            raise FileNotFoundError(
                f"no image in {', '.join(map(str, spatial_dirs))}: looked for "
                f"{', '.join(IMAGE_FILES.values())}; pass the full-resolution image with "
                "--image PATH (image=PATH in Python)"
            )
    _check_hires_lowres(found, sf, sf_path)
    if isinstance(image, str) and image in IMAGE_FILES:
        path = found[image]
        if path is None:
            other = "lowres" if image == "hires" else "hires"
            raise FileNotFoundError(
                f"--image {image} asked for {IMAGE_FILES[image]}, which is not in "
                f"{', '.join(map(str, spatial_dirs))}; use --image {other} (image={other!r} in "
                "Python) or a path to the full-resolution image"
            )
        return ChosenImage(path, image, scale_factor(sf, f"tissue_{image}_scalef", sf_path))
    path = Path(image)
    if not path.is_absolute() and not path.exists() and base is not None:
        path = base / path
    if not path.is_file():
        raise FileNotFoundError(f"image file {image} not found")
    if not image_scale > 0:
        raise ValueError(f"image_scale must be positive, got {image_scale}")
    _check_fullres_against(path, image_scale, found, sf, sf_path)
    return ChosenImage(path, "fullres", float(image_scale))


def _find_in(dirs: Sequence[Path], fname: str) -> Path | None:
    for d in dirs:
        if (d / fname).is_file():
            return d / fname
    return None


def _size_mismatch(actual: float, expected: float) -> bool:
    return abs(actual - expected) > SIZE_TOLERANCE * expected + 2


def _check_hires_lowres(found: dict, sf: dict, sf_path: Path) -> None:
    if found["hires"] is None or found["lowres"] is None:
        return
    check_image_pair(
        image_size(found["hires"]), image_size(found["lowres"]),
        found["hires"].name, found["lowres"].name, sf, sf_path,
    )


def check_image_pair(
    hires_hw: tuple[int, int],
    lowres_hw: tuple[int, int],
    hires_name: str,
    lowres_name: str,
    sf: dict,
    sf_path: Path | str,
) -> None:
    """The hires/lowres size ratio must match ``tissue_hires_scalef / tissue_lowres_scalef``."""
    hs = scale_factor(sf, "tissue_hires_scalef", sf_path)
    ls = scale_factor(sf, "tissue_lowres_scalef", sf_path)
    (hh, hw), (lh, lw) = hires_hw, lowres_hw
    if _size_mismatch(lw, hw * ls / hs) or _size_mismatch(lh, hh * ls / hs):
        raise SampleError(
            f"{sf_path}: tissue_hires_scalef={hs:g} and tissue_lowres_scalef={ls:g} contradict "
            f"the image sizes ({hires_name} {hw}x{hh} px, {lowres_name} {lw}x{lh} px: ratio "
            f"{hw / lw:.3f}, scale factors say {hs / ls:.3f}); the scale factors or one of the "
            "images belong to another run"
        )


def _check_fullres_against(
    path: Path, image_scale: float, found: dict, sf: dict, sf_path: Path
) -> None:
    h, w = image_size(path)
    full_w, full_h = w / image_scale, h / image_scale
    for kind in ("hires", "lowres"):
        if found[kind] is None:
            continue
        s = scale_factor(sf, f"tissue_{kind}_scalef", sf_path)
        kh, kw = image_size(found[kind])
        if _size_mismatch(kw, full_w * s) or _size_mismatch(kh, full_h * s):
            raise SampleError(
                f"{path}: this image is {w}x{h} px, but {found[kind].name} ({kw}x{kh} px) with "
                f"tissue_{kind}_scalef={s:g} in {sf_path.name} implies a full-resolution image "
                f"of {kw / s:.0f}x{kh / s:.0f} px; pass the full-resolution image Space Ranger "
                "was run with via --image, or give its size relative to that image with "
                "--image-scale (image_scale= in Python)"
            )
        return


# ---------------------------------------------------------------------------- assembly
def finish_sample(
    matrix: sp.spmatrix | np.ndarray,
    genes: list[str],
    layout: SpotLayout,
    chosen: ChosenImage,
    name: str,
    meta: dict[str, Any],
    counts_path: Path | str,
    work_um_per_px: float | None,
    max_dense_gb: float,
    fix: PositionFix | None = None,
    alignment_check: bool = True,
    positions: str = "the spot positions",
) -> STSample:
    """Load the chosen image, check the spots fall inside it, place counts, build the sample.

    Args:
        matrix: ``(N, G)`` counts of the laid-out spots, in ``layout`` order.
        genes: G gene names.
        layout: the spots' raster positions and affine.
        chosen: the image and its scale relative to the full-res frame.
        counts_path: source of the counts (messages).
        work_um_per_px: reduce the image to this resolution on load (None: keep).
        max_dense_gb: limit on the dense ``(G, H, W)`` raster.
        fix, alignment_check: see :func:`diffst.io.alignment.align_to_image`.
        positions: how the positions were given, for alignment messages.
    """
    check_dense_size(len(genes), layout.shape, counts_path, max_dense_gb)
    to_image = np.diag([chosen.scalef, chosen.scalef, 1.0])
    img_um = layout.um_per_px_fullres / chosen.scalef
    image = chosen.array
    outside = None  # spots outside the image: reported after trying the usual mistakes
    if chosen.kind != "none":
        hw = image_size(chosen.path) if image is None else image.shape[:2]
        try:
            check_spots_in_image(layout.xy_fullres, chosen, hw)
        except SampleError as exc:
            if not alignment_check and (fix is None or fix.is_identity):
                raise
            outside = exc
    if chosen.kind != "none" and image is None:
        image, to_work, img_um = load_working_image(chosen.path, img_um, work_um_per_px)
        to_image = to_work @ to_image
    expr, mask = place_counts(matrix, layout.rows, layout.cols, layout.shape, counts_path)
    meta = dict(meta)
    meta.update(layout.meta)
    meta.update(
        {
            "image_path": None if chosen.path is None else str(chosen.path),
            "image_kind": chosen.kind,
            "image_scalef": chosen.scalef,
            "affine_fullres": layout.affine_fullres.tolist(),
            "n_spots_tissue": int(mask.sum()),
        }
    )
    sample = STSample(
        expr=expr,
        genes=genes,
        cell_um=layout.cell_um,
        mask=mask,
        image=image,
        image_um_per_px=img_um,
        affine=to_image @ layout.affine_fullres,
        name=name,
        meta=meta,
    )
    return align_to_image(sample, fix, alignment_check, positions, fallback=outside)


def check_spots_in_image(
    xy_fullres: np.ndarray, chosen: ChosenImage, image_hw: tuple[int, int]
) -> None:
    """Raise when spot centres (scaled into ``chosen``) fall outside an image of ``image_hw``."""
    xy = np.asarray(xy_fullres) * chosen.scalef
    h, w = image_hw
    margin = 1.0
    out = (
        (xy[:, 0] < -0.5 - margin)
        | (xy[:, 1] < -0.5 - margin)
        | (xy[:, 0] > w - 0.5 + margin)
        | (xy[:, 1] > h - 0.5 + margin)
    )
    if out.any():
        key = "image_scale" if chosen.kind == "fullres" else f"tissue_{chosen.kind}_scalef"
        raise SampleError(
            f"{chosen.path}: {int(out.sum())} of {len(xy)} tissue spots fall outside this "
            f"{w}x{h} px image (spots span x {xy[:, 0].min():.0f}..{xy[:, 0].max():.0f}, "
            f"y {xy[:, 1].min():.0f}..{xy[:, 1].max():.0f} px with {key}={chosen.scalef:g}); "
            "the image does not belong to these positions or the scale factor is wrong: pass "
            "the matching image (--image hires, lowres or the full-resolution path; image= in "
            "Python) or fix the scale factor"
        )

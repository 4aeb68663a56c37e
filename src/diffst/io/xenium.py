"""Read 10x Xenium runs onto a high-resolution (HR) raster, and simulate Visium from one.

Xenium output bundle (:func:`read_xenium`):

* ``transcripts.parquet`` (preferred; or ``transcripts.csv.gz`` / ``transcripts.csv`` with the
  same columns): one row per decoded transcript, ``feature_name``
  (string or bytes), ``x_location``/``y_location`` in µm, ``qv``. Rows with ``qv < min_qv`` (20)
  are dropped, as are control and non-gene codewords: names starting with ``NegControl``,
  ``BLANK``, ``Unassigned``, ``DeprecatedCodeword``, ``Intergenic`` or ``antisense`` (and rows
  with ``is_gene == False`` where that column exists). Each kept transcript adds 1 to the raster
  cell holding it. Genes are listed alphabetically.
* otherwise cells: ``cells.parquet`` (``cell_id``, ``x_centroid``, ``y_centroid`` in µm) with
  ``cell_feature_matrix.h5`` (10x HDF5) or the ``cell_feature_matrix/`` Matrix Market folder
  (features of type ``Gene Expression`` only). Each cell's counts go to the raster cell holding
  its centroid.

Raster: square cells of ``bin_um`` µm. Cell ``(row, col)`` covers
``origin + [col, col + 1) * bin_um`` in x (likewise y), where ``origin`` (``meta["origin_um"]``)
is the bounding box corner rounded down to a multiple of ``bin_um``. Mask: raster cells holding
any kept transcript (or cell), closed morphologically with a disk of ``close_um`` so small gaps
inside the tissue count as measured zeros.

H&E: ``he_image`` with the Xenium Explorer alignment matrix (``*_he_imagealignment.csv``, 3x3,
maps H&E pixel ``(x, y, 1)`` to morphology-image pixels). Xenium µm -> morphology pixel is
``µm / pixel_size`` (0.2125 µm unless ``experiment.xenium`` says otherwise); the inverse of the
alignment matrix then gives H&E pixels. Without an image, ``image`` is None and the affine maps
raster coordinates to Xenium µm (``image_um_per_px = 1``).

Morphology image instead of an H&E: ``morphology_image`` (e.g. ``morphology_focus.ome.tif`` or a
DAPI maximum projection), one fluorescence channel in Xenium µm with pixel size
``image_um_per_px`` (default: ``experiment.xenium``'s, else 0.2125 µm) and its top-left pixel
corner at ``morphology_origin_um`` (``(0, 0)`` for a whole run; a crop's offset otherwise).
It is contrast-stretched (1st-99.5th percentile) and inverted so nuclei are dark on a bright
background, like haematoxylin, and stored as three equal channels: the model takes it where an
H&E would go.

:func:`read_xenium_cells_h5ad` bins an AnnData of cells with pixel positions on an H&E image.
:func:`pseudo_visium` sums an HR raster into Visium-like spots (55 µm disks, 100 µm hex pitch).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import ndimage

from diffst.data.sample import SampleError, STSample
from diffst.io.alignment import PositionFix, align_to_image
from diffst.io.counts import check_counts, check_dense_size, check_unique, select_gene_columns
from diffst.io.imageio import load_working_image
from diffst.io.spaceranger import read_10x_matrix

XENIUM_UM_PER_PX = 0.2125
MIN_QV = 20.0
CONTROL_PREFIXES = (
    "negcontrol",
    "blank",
    "unassigned",
    "deprecatedcodeword",
    "intergenic",
    "antisense",
)
_UNS_PIXEL_SIZE_KEYS = ("pixel_size_um", "um_per_px", "pixel_size_um_embedded", "mpp")


def read_xenium(
    folder: str | Path,
    bin_um: float = 8.0,
    genes: list[str] | None = None,
    he_image: str | Path | None = None,
    alignment_csv: str | Path | np.ndarray | None = None,
    work_um_per_px: float | None = None,
    min_qv: float = MIN_QV,
    close_um: float = 16.0,
    max_dense_gb: float = 8.0,
    name: str | None = None,
    morphology_image: str | Path | None = None,
    morphology_origin_um: tuple[float, float] = (0.0, 0.0),
    image_um_per_px: float | None = None,
    fix: PositionFix | None = None,
    alignment_check: bool = True,
) -> STSample:
    """Bin a Xenium output folder onto an HR raster of ``bin_um`` µm cells.

    Args:
        folder: the Xenium output bundle (layout in the module docstring).
        bin_um: raster cell edge in µm.
        genes: keep only these genes, in this order (unknown names raise).
        he_image: registered H&E image; needs ``alignment_csv``.
        alignment_csv: Xenium Explorer H&E alignment CSV (or the 3x3 matrix itself).
        work_um_per_px: reduce the H&E to this many µm per pixel on load (None: full size).
        min_qv: drop transcripts with a lower Phred quality value.
        close_um: radius of the morphological closing that fills gaps in the mask (0: none).
        max_dense_gb: refuse a dense ``(G, H, W)`` raster larger than this.
        name: sample name (default: the folder name).
        morphology_image: a one-channel fluorescence image in Xenium µm, used where an H&E
            would go (module docstring); not together with ``he_image``.
        morphology_origin_um: ``(x, y)`` µm of the morphology image's top-left pixel corner.
        image_um_per_px: µm per morphology pixel (default: the run's pixel size).
        fix: correction of the positions (x/y swap, flip, rotation, scale), see
            :mod:`diffst.io.alignment`.
        alignment_check: refuse a blank image or positions that miss the tissue (False: skip).

    Returns:
        ``expr`` ``(G, H, W)`` float32 transcript counts per raster cell.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: Xenium output folder not found")
    if not bin_um > 0:
        raise ValueError(f"--bin-um (bin_um= in Python) must be positive, got {bin_um}")
    if (he_image is None) != (alignment_csv is None):
        raise ValueError(
            "read_xenium: he_image and alignment_csv go together: pass the H&E image and the "
            "alignment CSV exported by Xenium Explorer (Image Alignment), or neither"
        )
    if he_image is not None and morphology_image is not None:
        raise ValueError("read_xenium: pass he_image or morphology_image, not both")
    table = _transcripts_file(folder)
    if table is not None:
        pts, gene_names, meta = _load_transcripts(table, min_qv)
        source = table
    else:
        pts, gene_names, meta = _load_cells(folder)
        source = folder / "cells.parquet"
    expr, mask, origin, codes_used = _bin_to_raster(
        pts, gene_names, genes, bin_um, close_um, source, max_dense_gb
    )
    to_um = _raster_to_units(bin_um, origin)
    image, um_per_px, affine = None, 1.0, to_um
    if he_image is not None:
        px_um = _xenium_pixel_size(folder)
        he_to_morph = read_alignment(alignment_csv)
        he_um = px_um * math.sqrt(abs(np.linalg.det(he_to_morph[:2, :2])))
        image, to_work, um_per_px = load_working_image(he_image, he_um, work_um_per_px)
        um_to_he = np.linalg.inv(he_to_morph) @ np.diag([1 / px_um, 1 / px_um, 1.0])
        affine = to_work @ um_to_he @ to_um
        meta.update(he_image=str(he_image), xenium_um_per_px=px_um, he_full_um_per_px=he_um)
    if morphology_image is not None:
        px_um = image_um_per_px or _xenium_pixel_size(folder)
        image, to_work, um_per_px = load_working_image(morphology_image, px_um, work_um_per_px)
        image = fluorescence_as_stain(image)
        ox, oy = (float(v) for v in morphology_origin_um)
        um_to_px = np.array([[1 / px_um, 0, -ox / px_um], [0, 1 / px_um, -oy / px_um], [0, 0, 1]])
        affine = to_work @ um_to_px @ to_um
        meta.update(morphology_image=str(morphology_image), xenium_um_per_px=px_um,
                    morphology_origin_um=[ox, oy], image_kind="fluorescence (inverted)")
    meta.update(
        reader="diffst.io.xenium.read_xenium",
        folder=str(folder),
        bin_um=float(bin_um),
        origin_um=[float(origin[0]), float(origin[1])],
        affine_target="image pixels" if image is not None else "Xenium µm",
    )
    sample = STSample(
        expr=expr,
        genes=[gene_names[i] for i in codes_used],
        cell_um=float(bin_um),
        mask=mask,
        image=image,
        image_um_per_px=um_per_px,
        affine=affine,
        name=name or folder.name,
        meta=meta,
    )
    return align_to_image(sample, fix, alignment_check,
                          f"the transcript positions with the alignment {alignment_csv}")


def read_xenium_cells_h5ad(
    path: str | Path,
    image_path: str | Path,
    bin_um: float = 8.0,
    genes: list[str] | None = None,
    image_um_per_px: float | None = None,
    row_key: str = "x_pixel",
    col_key: str = "y_pixel",
    layer: str | None = None,
    work_um_per_px: float | None = None,
    close_um: float = 16.0,
    name: str | None = None,
    fix: PositionFix | None = None,
    alignment_check: bool = True,
) -> STSample:
    """Bin an AnnData of cells (counts + pixel positions on ``image_path``) onto an HR raster.

    Positions come from ``obs[row_key]`` (image row) and ``obs[col_key]`` (image column). The
    defaults follow the HEST-style files where ``x_pixel`` indexes image ROWS and ``y_pixel``
    COLUMNS. ``image_um_per_px`` defaults to a pixel size stored in ``uns`` (keys
    ``pixel_size_um``, ``um_per_px``, ``pixel_size_um_embedded``, ``mpp``); when there is none it
    must be given. Raster cells are ``bin_um`` µm (``bin_um / image_um_per_px`` pixels), aligned to
    multiples of that size in image pixels (``meta["origin_px"]``); the mask is built as in
    :func:`read_xenium`. ``fix`` and ``alignment_check`` are as in :func:`read_xenium`.
    """
    import anndata

    path, image_path = Path(path), Path(image_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: AnnData file not found")
    adata = anndata.read_h5ad(path)
    for key in (row_key, col_key):
        if key not in adata.obs:
            raise SampleError(f"{path}: obs has no column '{key}' (found {list(adata.obs)[:8]})")
    um_per_px = _h5ad_pixel_size(adata, image_um_per_px, path)
    matrix = adata.layers[layer] if layer is not None else adata.X
    if matrix is None:
        raise SampleError(f"{path}: the AnnData has no count matrix X")
    matrix = sp.csr_matrix(matrix)
    check_counts(matrix, path, f"cell x gene counts ({'X' if layer is None else layer})")
    gene_names = [str(g) for g in adata.var_names]
    check_unique(gene_names, path, "gene name", "make var_names unique before reading")
    rows_px = pd.to_numeric(adata.obs[row_key], errors="coerce").to_numpy(np.float64)
    cols_px = pd.to_numeric(adata.obs[col_key], errors="coerce").to_numpy(np.float64)
    if not (np.isfinite(rows_px).all() and np.isfinite(cols_px).all()):
        raise SampleError(f"{path}: obs '{row_key}'/'{col_key}' contain missing positions")
    pts = _points_from_cells(matrix, cols_px, rows_px)
    bin_px = bin_um / um_per_px
    expr, mask, origin, codes_used = _bin_to_raster(
        pts, gene_names, genes, bin_px, close_um / um_per_px, path, max_dense_gb=8.0
    )
    image, to_work, work_um = load_working_image(image_path, um_per_px, work_um_per_px)
    meta = {
        "reader": "diffst.io.xenium.read_xenium_cells_h5ad",
        "path": str(path),
        "image_path": str(image_path),
        "bin_um": float(bin_um),
        "origin_px": [float(origin[0]), float(origin[1])],
        "n_cells": int(matrix.shape[0]),
        "position_keys": {"row": row_key, "col": col_key},
    }
    sample = STSample(
        expr=expr,
        genes=[gene_names[i] for i in codes_used],
        cell_um=float(bin_um),
        mask=mask,
        image=image,
        image_um_per_px=work_um,
        affine=to_work @ _raster_to_units(bin_px, origin),
        name=name or path.stem,
        meta=meta,
    )
    return align_to_image(sample, fix, alignment_check,
                          f"obs '{row_key}' (image row) / '{col_key}' (column) in {path.name}")


def pseudo_visium(
    sample: STSample, spot_diameter_um: float = 55.0, pitch_um: float = 100.0
) -> tuple[STSample, pd.DataFrame]:
    """Simulate a Visium measurement of an HR raster: disks on a hexagonal grid.

    Spot ``(i, j)`` (hex row i, index j within the row) is centred at
    ``(r + (j + 0.5 * (i % 2)) * pitch, r + i * pitch * sqrt(3) / 2)`` µm from the HR raster's
    top-left corner (``r`` = disk radius). Its counts are the sum of the HR cells whose centres lie
    in the disk (each HR cell joins at most one spot; cells between disks are not measured, as
    in Visium). A spot is under tissue when any of its HR cells is in the HR mask; counts of spots
    outside the tissue are not kept.

    Returns:
        An :class:`STSample` on the hex-mapped raster: raster row = hex row ``i``, col = ``j``;
        cells are ``pitch`` wide and ``pitch * sqrt(3) / 2`` tall (``meta["cell_um_xy"]``) and
        ``cell_um`` is the equal-area square edge, as in :mod:`diffst.io.spaceranger`; the
        affine puts cell centres a quarter pitch right of even-row spots, so every spot lies a
        quarter pitch from its cell centre. And a table with one row per spot: ``row``,
        ``col``, ``x_um``, ``y_um`` (centre in the HR sample's µm frame: the raster corner is
        ``meta["origin_um"]``, e.g. Xenium µm, or 0), ``n_cells`` (HR cells in the disk) and
        ``in_tissue``.
    """
    cell = float(sample.cell_um)
    radius = spot_diameter_um / 2.0
    if not 0 < spot_diameter_um < pitch_um:
        raise SampleError(
            f"pseudo_visium: spot diameter {spot_diameter_um} µm must be positive and smaller "
            f"than the pitch {pitch_um} µm (disks must not overlap)"
        )
    if spot_diameter_um < 2 * cell:
        raise SampleError(
            f"sample '{sample.name}': HR cells of {cell} µm are too coarse for "
            f"{spot_diameter_um} µm spots; use a raster of at most {spot_diameter_um / 2} µm"
        )
    h, w = sample.shape
    row_step = pitch_um * math.sqrt(3) / 2
    n_rows = int((h * cell - 2 * radius) // row_step) + 1
    n_cols = int((w * cell - 2 * radius) // pitch_um) + 1
    if n_rows < 1 or n_cols < 1:
        raise SampleError(
            f"sample '{sample.name}': raster smaller than one {spot_diameter_um} µm spot"
        )
    spot_of_cell = _assign_cells_to_spots(h, w, cell, radius, pitch_um, n_rows, n_cols)
    inside = spot_of_cell >= 0
    n_spots = n_rows * n_cols
    spot_ids = spot_of_cell[inside]
    cell_idx = np.flatnonzero(inside.ravel())
    # (spots x HR cells) 0/1 membership; one sparse product sums every gene per spot
    member = sp.csr_matrix((np.ones(len(cell_idx)), (spot_ids, cell_idx)), shape=(n_spots, h * w))
    flat_expr = sample.expr.reshape(sample.n_genes, -1)
    sums = np.empty((sample.n_genes, n_spots), dtype=np.float64)
    for g0 in range(0, sample.n_genes, 256):  # chunk genes to bound the float64 temporary
        block = flat_expr[g0 : g0 + 256].astype(np.float64)
        sums[g0 : g0 + 256] = (member @ block.T).T
    n_cells = np.bincount(spot_ids, minlength=n_spots)
    tissue = np.bincount(spot_ids, weights=sample.mask[inside].astype(float), minlength=n_spots) > 0
    sums[:, ~tissue] = 0.0
    s, q = pitch_um / cell, row_step / cell
    c0 = (radius - 0.5 * cell) / cell  # HR raster coordinate of spot (0, 0)'s centre
    hex_to_hr = np.array([[s, 0.0, c0 + 0.25 * s], [0.0, q, c0], [0.0, 0.0, 1.0]])
    ii, jj = np.divmod(np.arange(n_spots), n_cols)
    origin = np.asarray(sample.meta.get("origin_um", [0.0, 0.0]), dtype=np.float64)
    x_um = origin[0] + radius + (jj + 0.5 * (ii % 2)) * pitch_um
    y_um = origin[1] + radius + ii * row_step
    table = pd.DataFrame(
        {"row": ii, "col": jj, "x_um": x_um, "y_um": y_um, "n_cells": n_cells, "in_tissue": tissue}
    )
    meta = {k: v for k, v in sample.meta.items() if k != "origin_um"}  # HR-raster specific
    meta.update(
        hr_origin_um=origin.tolist(),
        pseudo_visium_of=sample.name,
        spot_diameter_um=float(spot_diameter_um),
        pitch_um=float(pitch_um),
        cell_um_xy=[float(pitch_um), row_step],
        lattice="hex",
    )
    lr = STSample(
        expr=sums.reshape(sample.n_genes, n_rows, n_cols).astype(np.float32),
        genes=list(sample.genes),
        cell_um=math.sqrt(pitch_um * row_step),
        mask=tissue.reshape(n_rows, n_cols),
        image=sample.image,
        image_um_per_px=sample.image_um_per_px,
        affine=sample.affine @ hex_to_hr,
        name=f"{sample.name}_pseudovisium",
        meta=meta,
    )
    return lr, table


def read_alignment(alignment: str | Path | np.ndarray) -> np.ndarray:
    """The 3x3 H&E-pixel -> morphology-pixel matrix from a Xenium Explorer CSV (or an array)."""
    where = "alignment matrix"
    if isinstance(alignment, (str, Path)):
        where = str(alignment)
        if not Path(alignment).is_file():
            raise FileNotFoundError(f"{alignment}: alignment CSV not found")
        try:
            alignment = np.loadtxt(alignment, delimiter=",", ndmin=2)
        except ValueError as exc:
            raise SampleError(f"{where}: not a numeric 3x3 comma-separated matrix ({exc})") from exc
    mat = np.asarray(alignment, dtype=np.float64)
    if mat.shape != (3, 3) or not np.isfinite(mat).all():
        raise SampleError(f"{where}: expected a finite 3x3 matrix, got shape {mat.shape}")
    if not np.allclose(mat[2], [0, 0, 1]):
        raise SampleError(f"{where}: last row must be 0,0,1 (an affine), got {mat[2].tolist()}")
    if abs(np.linalg.det(mat[:2, :2])) < 1e-12:
        raise SampleError(f"{where}: the matrix is singular")
    return mat


# ---------------------------------------------------------------------------- loading
@dataclass
class _Points:
    """Weighted points: gene code, x, y (any unit) and weight (counts; None = 1) per entry."""

    codes: np.ndarray
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray | None


STAIN_DARKEST = 60.0
"""Grey level of the brightest fluorescence after inversion (:func:`fluorescence_as_stain`)."""


def fluorescence_as_stain(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 fluorescence (equal channels) -> stretched, inverted uint8 RGB."""
    gray = image[..., :3].mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    lo, hi = np.percentile(gray, [1.0, 99.5])
    stretched = np.clip((gray - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    # the brightest signal maps to STAIN_DARKEST, not black: like haematoxylin, and not taken
    # for a scanner border by the alignment check
    out = np.round(255.0 - (255.0 - STAIN_DARKEST) * stretched).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def _transcripts_file(folder: Path) -> Path | None:
    """The transcript table of a Xenium folder (parquet preferred, then CSV), or None."""
    for name in ("transcripts.parquet", "transcripts.csv.gz", "transcripts.csv"):
        if (folder / name).is_file():
            return folder / name
    return None


def _transcript_table(path: Path):
    """The needed columns of a transcript table (parquet or CSV) as a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    need = ["feature_name", "x_location", "y_location", "qv"]
    kind = "parquet" if path.suffix == ".parquet" else "CSV"
    try:
        if kind == "parquet":
            names = pq.read_schema(path).names
        else:
            with pacsv.open_csv(path) as reader:
                names = reader.schema.names
    except (OSError, pa.ArrowInvalid, EOFError) as exc:
        raise SampleError(f"{path}: cannot read as a {kind} file ({exc})") from exc
    missing = [c for c in need if c not in names]
    if missing:
        raise SampleError(f"{path}: missing columns {missing} (found {names[:10]})")
    cols = need + (["is_gene"] if "is_gene" in names else [])
    try:
        if kind == "parquet":
            return pq.read_table(path, columns=cols)
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=cols))
    except (OSError, pa.ArrowInvalid, EOFError) as exc:
        raise SampleError(f"{path}: cannot read the {kind} table ({exc})") from exc


def _load_transcripts(path: Path, min_qv: float) -> tuple[_Points, list[str], dict]:
    import pyarrow as pa
    import pyarrow.compute as pc

    table = _transcript_table(path)
    cols = table.column_names
    feat = table.column("feature_name")
    if pa.types.is_dictionary(feat.type):
        feat = feat.cast(feat.type.value_type)
    if pa.types.is_binary(feat.type) or pa.types.is_large_binary(feat.type):
        try:
            feat = feat.cast(pa.string())
        except pa.ArrowInvalid as exc:
            raise SampleError(f"{path}: feature_name bytes are not valid UTF-8") from exc
    enc = pc.dictionary_encode(feat).combine_chunks()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = [str(n) for n in enc.dictionary.to_pylist()]
    x = table.column("x_location").to_numpy().astype(np.float64)
    y = table.column("y_location").to_numpy().astype(np.float64)
    qv = table.column("qv").to_numpy().astype(np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SampleError(f"{path}: x_location/y_location contain missing or infinite values")
    control = np.array([_is_control(n) for n in names], dtype=bool)
    keep_code = ~control
    keep = keep_code[codes] & (qv >= min_qv)
    if "is_gene" in cols:
        keep &= table.column("is_gene").to_numpy(zero_copy_only=False).astype(bool)
    if not keep.any():
        raise SampleError(f"{path}: no transcript passes qv >= {min_qv} and the control filter")
    # renumber genes in alphabetical order; control codewords leave the gene list
    gene_names = sorted(n for n, k in zip(names, keep_code, strict=True) if k)
    rank = {n: i for i, n in enumerate(gene_names)}
    new_code = np.array([rank.get(n, -1) for n in names], dtype=np.int64)
    pts = _Points(new_code[codes[keep]], x[keep], y[keep], None)
    meta = {
        "source": str(path),
        "n_transcripts_total": int(len(codes)),
        "n_transcripts_kept": int(keep.sum()),
        "n_dropped_low_qv": int((qv < min_qv).sum()),
        "n_dropped_control": int(control[codes].sum()),
        "min_qv": float(min_qv),
        "control_features": sorted(n for n, c in zip(names, control, strict=True) if c),
    }
    return pts, gene_names, meta


def _load_cells(folder: Path) -> tuple[_Points, list[str], dict]:
    cells_path = folder / "cells.parquet"
    if not cells_path.is_file():
        raise FileNotFoundError(
            f"{folder}: neither transcripts.parquet nor cells.parquet found; is this a Xenium "
            "output folder?"
        )
    cells = pd.read_parquet(cells_path)
    for c in ("cell_id", "x_centroid", "y_centroid"):
        if c not in cells.columns:
            raise SampleError(f"{cells_path}: missing column '{c}'")
    mpath = folder / "cell_feature_matrix.h5"
    if not mpath.is_file():
        mpath = folder / "cell_feature_matrix"
    if not mpath.exists():
        raise FileNotFoundError(
            f"{folder}: found cells.parquet but neither cell_feature_matrix.h5 nor the "
            "cell_feature_matrix/ folder"
        )
    counts = read_10x_matrix(mpath, feature_type="Gene Expression")  # drops control features
    is_gene = np.array([not _is_control(n) for n in counts.genes], dtype=bool)
    matrix = counts.matrix[:, np.flatnonzero(is_gene)]
    gene_names = [n for n, k in zip(counts.genes, is_gene, strict=True) if k]
    barcodes = [_as_text(b) for b in counts.barcodes]
    ids = cells["cell_id"].map(_as_text).to_numpy()
    check_unique(ids, cells_path, "cell_id")
    pos = pd.Series(np.arange(len(ids)), index=ids)
    known = set(ids)
    missing = [b for b in barcodes if b not in known]
    if missing:
        raise SampleError(
            f"{mpath}: {len(missing)} cells have no centroid in {cells_path} (e.g. {missing[:3]})"
        )
    idx = pos.loc[barcodes].to_numpy()
    x = cells["x_centroid"].to_numpy(np.float64)[idx]
    y = cells["y_centroid"].to_numpy(np.float64)[idx]
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SampleError(f"{cells_path}: x_centroid/y_centroid contain missing values")
    meta = {"source": str(mpath), "n_cells": int(matrix.shape[0])}
    return _points_from_cells(matrix, x, y), gene_names, meta


def _points_from_cells(matrix: sp.spmatrix, x: np.ndarray, y: np.ndarray) -> _Points:
    coo = sp.coo_matrix(matrix)
    return _Points(coo.col.astype(np.int64), x[coo.row], y[coo.row], coo.data.astype(np.float64))


# ---------------------------------------------------------------------------- binning
def _bin_to_raster(
    pts: _Points,
    gene_names: list[str],
    genes: list[str] | None,
    bin_size: float,
    close: float,
    source: Path,
    max_dense_gb: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Bin weighted points onto square cells of ``bin_size`` (units of the points)."""
    if len(pts.x) == 0:
        raise SampleError(f"{source}: no counts to bin")
    origin = np.floor(np.array([pts.x.min(), pts.y.min()]) / bin_size) * bin_size
    cols = np.floor((pts.x - origin[0]) / bin_size).astype(np.int64)
    rows = np.floor((pts.y - origin[1]) / bin_size).astype(np.int64)
    h, w = int(rows.max()) + 1, int(cols.max()) + 1
    weights = pts.w if pts.w is not None else np.ones(len(cols))
    occupied = np.bincount(rows * w + cols, weights=weights, minlength=h * w).reshape(h, w) > 0
    mask = _close_mask(occupied, int(round(close / bin_size)))
    codes_used = list(range(len(gene_names)))
    codes = pts.codes
    if genes is not None:
        codes_used = select_gene_columns(gene_names, genes, source)
        remap = np.full(len(gene_names), -1, dtype=np.int64)
        remap[codes_used] = np.arange(len(codes_used))
        codes = remap[codes]
        keep = codes >= 0
        codes, rows, cols, weights = codes[keep], rows[keep], cols[keep], weights[keep]
    n_genes = len(codes_used)
    check_dense_size(n_genes, (h, w), source, max_dense_gb)
    expr = np.zeros((n_genes, h * w), dtype=np.float32)
    chunk = max(1, int(5e7 // (h * w)))  # genes per bincount call, bounds the temporary array
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(0, n_genes + chunk, chunk))
    for k, g0 in enumerate(range(0, n_genes, chunk)):
        sel = order[bounds[k] : bounds[k + 1]]
        g1 = min(g0 + chunk, n_genes)
        flat = (codes[sel] - g0) * (h * w) + rows[sel] * w + cols[sel]
        binned = np.bincount(flat, weights=weights[sel], minlength=(g1 - g0) * h * w)
        expr[g0:g1] = binned.reshape(g1 - g0, h * w)
    return expr.reshape(n_genes, h, w), mask, origin, codes_used


def _close_mask(occupied: np.ndarray, radius: int) -> np.ndarray:
    """Morphological closing with a disk of ``radius`` cells (no erosion at the border)."""
    if radius < 1:
        return occupied
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = xx**2 + yy**2 <= radius**2
    padded = np.pad(occupied, radius + 1)
    closed = ndimage.binary_closing(padded, structure=disk)
    return closed[radius + 1 : -(radius + 1), radius + 1 : -(radius + 1)] | occupied


def _raster_to_units(bin_size: float, origin: np.ndarray) -> np.ndarray:
    """3x3 raster ``(col, row, 1)`` of a cell centre -> the points' units (µm or pixels)."""
    return np.array(
        [
            [bin_size, 0.0, origin[0] + 0.5 * bin_size],
            [0.0, bin_size, origin[1] + 0.5 * bin_size],
            [0.0, 0.0, 1.0],
        ]
    )


def _assign_cells_to_spots(
    h: int, w: int, cell: float, radius: float, pitch: float, n_rows: int, n_cols: int
) -> np.ndarray:
    """``(H, W)`` index of the spot whose disk holds each HR cell centre, -1 for none."""
    yy, xx = np.mgrid[0:h, 0:w]
    x = (xx + 0.5) * cell - radius  # µm from spot (0, 0)'s centre
    y = (yy + 0.5) * cell - radius
    row_step = pitch * math.sqrt(3) / 2
    best = np.full((h, w), -1, dtype=np.int64)
    base = np.round(y / row_step).astype(np.int64)
    for di in (-1, 0, 1):
        i = base + di
        j = np.round(x / pitch - 0.5 * (i % 2)).astype(np.int64)
        d2 = (x - (j + 0.5 * (i % 2)) * pitch) ** 2 + (y - i * row_step) ** 2
        hit = (d2 <= radius**2) & (i >= 0) & (i < n_rows) & (j >= 0) & (j < n_cols)
        best[hit] = (i * n_cols + j)[hit]
    return best


# ---------------------------------------------------------------------------- small helpers
def _is_control(name: str) -> bool:
    return name.lower().startswith(CONTROL_PREFIXES)


def _as_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _xenium_pixel_size(folder: Path) -> float:
    exp = folder / "experiment.xenium"
    if exp.is_file():
        try:
            value = float(json.loads(exp.read_text()).get("pixel_size", XENIUM_UM_PER_PX))
        except (ValueError, TypeError) as exc:
            raise SampleError(f"{exp}: cannot read 'pixel_size' ({exc})") from exc
        if not value > 0:
            raise SampleError(f"{exp}: pixel_size must be positive, got {value}")
        return value
    return XENIUM_UM_PER_PX


def _h5ad_pixel_size(adata, given: float | None, path: Path) -> float:
    if given is not None:
        if not given > 0:
            raise ValueError(f"--image-um-per-px (image_um_per_px= in Python) must be positive, "
                             f"got {given}")
        return float(given)
    for key in _UNS_PIXEL_SIZE_KEYS:
        if key in adata.uns:
            return float(np.asarray(adata.uns[key]).ravel()[0])
    raise SampleError(
        f"{path}: no pixel size in uns (looked for {list(_UNS_PIXEL_SIZE_KEYS)}); give the µm "
        "per pixel of the image the obs positions refer to with --image-um-per-px "
        "(image_um_per_px= in Python)"
    )

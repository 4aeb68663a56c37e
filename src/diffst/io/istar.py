"""Read the iStar folder format and infer the spot lattice (Visium hexagonal or ST square).

An iStar folder holds:

* ``he-raw.jpg`` (or ``.png`` / ``.tif``): the H&E image ("raw" = full resolution);
* ``cnts.tsv``: spots x genes counts, first column the spot id, header the gene names;
* ``locs-raw.tsv``: spot id, ``x``, ``y``: spot centres in raw image pixels (x = column);
* ``pixel-size-raw.txt``: µm per raw pixel (one number);
* ``radius-raw.txt``: spot radius in raw pixels (one number; kept in ``meta``).

Every spot in ``cnts.tsv`` is taken to be under tissue and must have a location; locations without
counts are ignored. Duplicate gene names are summed (with a warning), as in
:func:`diffst.io.legacy_st.read_counts_tsv`.

Lattice inference (:func:`infer_lattice`): steps to neighbours within 0.7-1.3 times the median
nearest-neighbour distance give the lattice kind (about 6 per interior spot: hexagonal, 4: square)
and two basis steps, ``a1`` along a row (the lattice direction closest to the image +x axis) and
``a2`` to the next row (``a1`` turned 60 or 90 degrees towards +y), each averaged over all matching
neighbour pairs. Every spot gets integer lattice coordinates ``(m, n)`` with
``xy = xy0 + m * a1 + n * a2``; raster row = ``n`` and raster col = ``m`` (square) or
``m + n // 2`` (hex: a row step also moves half a pitch along the row, so odd rows sit half a
cell to the right), both shifted to start at 0. Two spots in one cell raise an error.

Raster geometry: a raster cell is one pitch wide and one row spacing tall (hex rasters are
anisotropic; both sizes in µm, from the fitted affine, are in ``meta["cell_um_xy"]``); ``cell_um``
is the edge of the equal-area square, ``sqrt(pitch * row_spacing)``, as in
:mod:`diffst.io.spaceranger`, so ``cell_um == px_per_cell * image_um_per_px``. The affine is
fitted from lattice positions (odd hex rows shifted by half a pitch) to the spot pixels; the raster
affine then places cell centres midway, so every hex spot is a quarter pitch from its cell centre
along the row. Fit residuals (raw pixels) are in ``meta``; more than 0.45 pitch raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from diffst.data.grid import fit_affine, spots_to_raster
from diffst.data.sample import SampleError, STSample
from diffst.io.alignment import PositionFix, align_to_image
from diffst.io.counts import select_gene_columns
from diffst.io.imageio import load_working_image
from diffst.io.legacy_st import merge_duplicate_genes, read_counts_tsv

_IMAGE_NAMES = ("he-raw.jpg", "he-raw.png", "he-raw.tif", "he-raw.tiff")
MAX_RESIDUAL_PITCH = 0.45  # as in legacy_st: printed ST arrays deviate up to ~1/3 pitch


@dataclass
class Lattice:
    """Integer raster positions of spots on a regular lattice.

    Attributes:
        rows, cols: ``(N,)`` int raster indices (from 0).
        kind: ``"hex"`` or ``"square"``.
        pitch: centre-to-centre distance of neighbouring spots (input units, e.g. pixels).
        row_offset: column shift of odd raster rows in pitches (+-0.5 for hex, 0 for square).
        affine: 3x3 raster ``(col, row, 1)`` -> input ``(x, y, 1)`` of cell centres.
        rms, max_residual: fit residuals of the spot positions (input units).
    """

    rows: np.ndarray
    cols: np.ndarray
    kind: str
    pitch: float
    row_offset: float
    affine: np.ndarray
    rms: float
    max_residual: float


def read_istar(
    folder: str | Path,
    genes: list[str] | None = None,
    work_um_per_px: float | None = None,
    name: str | None = None,
    fix: PositionFix | None = None,
    alignment_check: bool = True,
) -> STSample:
    """Read an iStar folder (layout in the module docstring) into an :class:`STSample`.

    Args:
        folder: the iStar data folder.
        genes: keep only these genes, in this order (unknown names raise).
        work_um_per_px: reduce the H&E to this many µm per pixel on load (None: full size).
        name: sample name (default: the folder name).
        fix: correction of the positions (x/y swap, flip, rotation, scale), see
            :mod:`diffst.io.alignment`.
        alignment_check: refuse a blank image or positions that miss the tissue (False: skip).

    Returns:
        One raster cell per lattice position (geometry in the module docstring).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: iStar folder not found")
    image_path = _find_image(folder)
    um_per_px = _read_number(folder / "pixel-size-raw.txt", "µm per raw image pixel")
    radius_px = _read_number(folder / "radius-raw.txt", "spot radius in raw pixels")

    cnts_path = folder / "cnts.tsv"
    if not cnts_path.is_file():
        raise FileNotFoundError(f"{cnts_path}: counts file not found")
    counts, spot_ids, gene_names = read_counts_tsv(cnts_path)
    counts, gene_names, merged = merge_duplicate_genes(counts, gene_names, cnts_path)
    if genes is not None:
        idx = select_gene_columns(gene_names, genes, cnts_path)
        counts, gene_names = counts[:, idx], [gene_names[i] for i in idx]
    xy = _spot_locations(folder / "locs-raw.tsv", spot_ids, cnts_path)

    lattice = infer_lattice(xy, where=str(folder / "locs-raw.tsv"), ids=spot_ids)
    expr, mask = spots_to_raster(lattice.rows, lattice.cols, counts)
    image, to_work, work_um = load_working_image(image_path, um_per_px, work_um_per_px)
    lin = lattice.affine[:2, :2]  # raw pixels per raster step along cols / rows
    cell_xy_um = [float(np.linalg.norm(lin[:, 0])) * um_per_px, 0.0]
    cell_xy_um[1] = float(abs(np.linalg.det(lin))) * um_per_px**2 / cell_xy_um[0]
    meta = {
        "reader": "diffst.io.istar.read_istar",
        "folder": str(folder),
        "image_path": str(image_path),
        "lattice": lattice.kind,
        "pitch_um": lattice.pitch * um_per_px,
        "cell_um_xy": cell_xy_um,
        "spot_diameter_um": 2 * radius_px * um_per_px,
        "fit_rms_px": lattice.rms,
        "fit_max_px": lattice.max_residual,
        "raw_um_per_px": um_per_px,
        "merged_duplicate_genes": merged,
    }
    sample = STSample(
        expr=expr,
        genes=gene_names,
        cell_um=math.sqrt(abs(np.linalg.det(lin))) * um_per_px,
        mask=mask,
        image=image,
        image_um_per_px=work_um,
        affine=to_work @ lattice.affine,
        name=name or folder.name,
        meta=meta,
    )
    return align_to_image(sample, fix, alignment_check, "the spot positions in locs-raw.tsv")


def infer_lattice(
    xy: np.ndarray, where: str = "spot positions", ids: list | None = None
) -> Lattice:
    """Assign spots at ``xy`` ``(N, 2)`` (e.g. pixels) to integer raster cells of their lattice.

    See the module docstring for the method. ``where`` and ``ids`` only label error messages.
    Raises :class:`SampleError` for fewer than 3 spots, collisions or off-lattice positions.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 3:
        raise SampleError(f"{where}: need at least 3 spot positions (N, 2), got {xy.shape}")
    if not np.isfinite(xy).all():
        raise SampleError(f"{where}: spot positions contain NaN or infinite values")
    tree = cKDTree(xy)
    dist, nbr = tree.query(xy, k=min(7, len(xy)))
    if not np.median(dist[:, 1]) > 0:
        raise SampleError(f"{where}: several spots share the same position")
    near = (dist[:, 1:] < 1.3 * np.median(dist[:, 1])) & (dist[:, 1:] > 0.7 * np.median(dist[:, 1]))
    kind = "hex" if np.percentile(near.sum(axis=1), 75) >= 5 else "square"
    vec = (xy[nbr[:, 1:]] - xy[:, None, :])[near]  # steps to neighbouring spots
    basis = _lattice_basis(vec, kind, where)
    pitch = float(np.linalg.norm(basis[:, 0]))
    mn = np.linalg.solve(basis, (xy - xy[0]).T).T  # lattice coordinates: xy = m*a1 + n*a2
    m = np.round(mn[:, 0]).astype(np.int64)
    rows = np.round(mn[:, 1]).astype(np.int64)
    rows -= rows.min()
    # a hex row step a2 also moves half a pitch along the row: odd rows sit half a cell right
    cols = m + rows // 2 if kind == "hex" else m
    offset = 0.5 if kind == "hex" and (rows % 2 == 1).any() else 0.0
    cols -= cols.min()
    _check_collisions(rows, cols, where, ids)
    lattice_src = np.column_stack([cols + offset * (rows % 2), rows]).astype(np.float64)
    fit = fit_affine(lattice_src, xy)
    err = np.linalg.norm(
        (np.column_stack([lattice_src, np.ones(len(xy))]) @ fit.T)[:, :2] - xy, axis=1
    )
    if err.max() > MAX_RESIDUAL_PITCH * pitch:
        i = int(np.argmax(err))
        label = ids[i] if ids is not None else i
        raise SampleError(
            f"{where}: spot {label} is {err[i]:.1f} from the fitted {kind} lattice "
            f"(pitch {pitch:.1f}); the positions are not on a regular spot grid"
        )
    half = np.array([[1.0, 0, offset / 2], [0, 1.0, 0], [0, 0, 1.0]])
    return Lattice(
        rows=rows,
        cols=cols,
        kind=kind,
        pitch=pitch,
        row_offset=float(offset),
        affine=fit @ half,
        rms=float(np.sqrt(np.mean(err**2))),
        max_residual=float(err.max()),
    )


# ---------------------------------------------------------------------------- internals
def _lattice_basis(vec: np.ndarray, kind: str, where: str) -> np.ndarray:
    """2x2 columns ``a1`` (step along a row, closest to +x) and ``a2`` (step to the next row).

    ``a2`` is ``a1`` turned by 60 degrees (hex) or 90 degrees (square) towards +y. Each is the
    mean of all neighbour steps within 15 / 22.5 degrees of that direction (opposite steps
    flipped), so the pitch is not biased by jitter and anisotropic pixels are allowed.
    """
    fold = 6 if kind == "hex" else 4
    ang = np.arctan2(vec[:, 1], vec[:, 0])
    theta = float(np.angle(np.exp(1j * fold * ang).mean()) / fold)
    tol = math.pi / fold / 2
    steps = []
    for direction in (theta, theta + 2 * math.pi / fold):
        diff = np.angle(np.exp(1j * (ang - direction)))
        along = np.abs(diff) < tol
        back = np.abs(np.angle(np.exp(1j * (diff - math.pi)))) < tol
        if not (along.any() or back.any()):
            raise SampleError(f"{where}: cannot find the spot lattice directions")
        steps.append(np.concatenate([vec[along], -vec[back]]).mean(axis=0))
    basis = np.column_stack(steps)
    if abs(np.linalg.det(basis)) < 1e-9 * np.linalg.norm(basis) ** 2:
        raise SampleError(f"{where}: spot positions do not span a 2-D lattice")
    return basis


def _check_collisions(rows: np.ndarray, cols: np.ndarray, where: str, ids: list | None) -> None:
    flat = rows * (cols.max() + 1) + cols
    uniq, counts = np.unique(flat, return_counts=True)
    if (counts > 1).any():
        cell = uniq[np.argmax(counts > 1)]
        clash = np.flatnonzero(flat == cell)[:2]
        labels = [ids[i] if ids is not None else int(i) for i in clash]
        raise SampleError(
            f"{where}: spots {labels} fall into the same lattice cell "
            f"(row {rows[clash[0]]}, col {cols[clash[0]]}); the positions are not on a regular "
            "spot grid or contain duplicates"
        )


def _find_image(folder: Path) -> Path:
    for name in _IMAGE_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no H&E image found (expected one of {list(_IMAGE_NAMES)})")


def _read_number(path: Path, what: str) -> float:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (should hold the {what})")
    text = path.read_text(errors="replace").strip()
    try:
        value = float(text.split()[0]) if text else float("nan")
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise SampleError(f"{path}: expected one positive number (the {what}), got {text[:40]!r}")
    return value


def _spot_locations(path: Path, spot_ids: list[str], cnts_path: Path) -> np.ndarray:
    """``(N, 2)`` raw-pixel ``(x, y)`` of each counts spot, in counts order."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: spot location file not found")
    try:
        locs = pd.read_csv(path, sep="\t", index_col=0)
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise SampleError(f"{path}: cannot read as a tab-separated table ({exc})") from exc
    if "x" not in locs.columns or "y" not in locs.columns:
        raise SampleError(f"{path}: needs columns 'x' and 'y' (found {list(locs.columns)})")
    locs.index = locs.index.astype(str)
    if locs.index.duplicated().any():
        raise SampleError(f"{path}: spot id {locs.index[locs.index.duplicated()][0]!r} repeats")
    missing = [s for s in spot_ids if s not in locs.index]
    if missing:
        raise SampleError(
            f"{cnts_path}: {len(missing)} spots have no location in {path} (e.g. {missing[:3]})"
        )
    xy = locs.loc[spot_ids, ["x", "y"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    if not np.isfinite(xy).all():
        raise SampleError(f"{path}: missing or non-numeric x/y values")
    return xy

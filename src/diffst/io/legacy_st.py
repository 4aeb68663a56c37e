"""Read legacy Spatial Transcriptomics (ST) sections, e.g. the HER2ST breast-cancer data set.

Inputs per section:

* counts ``.tsv[.gz]``: spots x genes UMI counts, tab separated; the first column holds the spot
  id ``"{x}x{y}"`` in array coordinates, the header the gene symbols (with or without a leading
  empty field for the id column).
* spot table ``.tsv``: columns ``x y pixel_x pixel_y selected`` (others ignored); ``x, y`` are the
  array coordinates matching the spot ids, ``pixel_x, pixel_y`` the spot centre in full-resolution
  image pixels (x = column, y = row), ``selected == 1`` marks spots under tissue.
* the H&E image (JPEG/PNG/TIFF).

Raster: one raster cell per array position, ``cell_um = spot_pitch_um`` (200 µm: ST spots are
100 µm disks on a 200 µm pitch). Raster column = ``x - x0`` and row = ``y - y0`` where ``(x0, y0)``
is the smallest array coordinate among the tissue spots (stored as ``meta["array_origin"]``).

Spot bookkeeping:

* mask = spots that are ``selected`` in the spot table **and** have counts. Counts of spots the
  table marks as not under tissue are not kept (their cells stay 0 and outside the mask).
* spots in the counts but absent from the spot table have no image position and no tissue flag:
  they are dropped with a warning (their number is in ``meta["n_spots_counts_only"]``); when no
  spot id matches at all, a :class:`SampleError` is raised.
* selected spots without counts (filtered upstream) stay outside the mask
  (``meta["n_spots_table_only"]``); they still help fit the alignment.
* duplicate gene symbols in the header are summed into one gene with a warning (they are the same
  gene as far as a symbol-level analysis can tell); the merged names are in
  ``meta["merged_duplicate_genes"]``. Duplicate spot ids are an error.

Alignment: a least-squares affine from raster ``(col, row)`` to ``(pixel_x, pixel_y)`` of the
selected spots; its RMS and max residual (full-resolution pixels) are in ``meta``. Printed arrays
are not perfect grids (HER2ST spots lie up to about a third of a pitch off the fitted grid; the
spot table's ``new_x, new_y`` record that), so a spot is drawn at its nominal cell centre. A max
residual above 0.45 pitch (a spot nearer to a neighbouring cell than to its own) means the
positions do not match the array coordinates (wrong or mixed-up spot table) and raises.
``image_um_per_px`` is derived from the fitted pitch (``spot_pitch_um`` / pixels per pitch) unless
given; a given value that disagrees with the fit by more than 15 % raises. The image is reduced on
load to ``work_um_per_px`` µm per pixel and the affine and ``image_um_per_px`` are adjusted to
that working image.
"""

from __future__ import annotations

import gzip
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from diffst.data.grid import fit_affine, spots_to_raster
from diffst.data.sample import SampleError, STSample
from diffst.io.alignment import PositionFix, align_to_image
from diffst.io.counts import check_counts, check_unique, select_gene_columns
from diffst.io.imageio import image_size, load_working_image

_SPOT_ID = re.compile(r"^\s*(-?\d+)x(-?\d+)\s*$")
_SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y", "selected")
# Max alignment residual as a fraction of the spot pitch. Printed ST arrays deviate from the ideal
# grid: in HER2ST single spots sit up to 0.34 pitch (~68 µm) from the fitted grid position.
MAX_RESIDUAL_PITCH = 0.45
UM_PER_PX_TOLERANCE = 0.15  # allowed relative mismatch of a given image_um_per_px


def read_her2st(root: str | Path, section: str, **kw) -> STSample:
    """Read HER2ST section ``section`` (e.g. ``"C2"``) from ``root``.

    Expects ``{root}/{section}.counts.tsv.gz``, ``{section}.spots.tsv`` and ``{section}.HE.jpg``;
    keyword arguments go to :func:`read_legacy_st`.
    """
    root = Path(root)
    kw.setdefault("name", section)
    return read_legacy_st(
        root / f"{section}.counts.tsv.gz",
        root / f"{section}.spots.tsv",
        root / f"{section}.HE.jpg",
        **kw,
    )


def read_legacy_st(
    counts_path: str | Path,
    spots_path: str | Path,
    image_path: str | Path,
    genes: list[str] | None = None,
    image_um_per_px: float | None = None,
    spot_pitch_um: float = 200.0,
    work_um_per_px: float | None = 2.0,
    name: str | None = None,
    fix: PositionFix | None = None,
    alignment_check: bool = True,
) -> STSample:
    """Read one legacy ST section into an :class:`STSample` (layout in the module docstring).

    Args:
        counts_path: spots x genes counts table.
        spots_path: spot table with ``x y pixel_x pixel_y selected``.
        image_path: the H&E image of the section.
        genes: keep only these genes, in this order (unknown names raise).
        image_um_per_px: µm per full-resolution image pixel; default derived from the fit.
        spot_pitch_um: centre-to-centre spot distance in µm (raster cell size).
        work_um_per_px: reduce the image to this many µm per pixel on load (None: full size).
        name: sample name (default: the counts file name without suffixes).
        fix: correction of the positions (x/y swap, flip, rotation, scale), see
            :mod:`diffst.io.alignment`.
        alignment_check: refuse a blank image or positions that miss the tissue (False: skip).

    Returns:
        ``expr`` ``(G, H, W)`` counts per spot, one raster cell per array position.
    """
    counts_path, spots_path, image_path = Path(counts_path), Path(spots_path), Path(image_path)
    for p in (counts_path, spots_path, image_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: file not found")
    name = name or counts_path.name.split(".")[0]

    counts, spot_ids, gene_names = read_counts_tsv(counts_path)
    counts, gene_names, merged = merge_duplicate_genes(counts, gene_names, counts_path)
    if genes is not None:
        idx = select_gene_columns(gene_names, genes, counts_path)
        counts, gene_names = counts[:, idx], [gene_names[i] for i in idx]
    array_xy = parse_spot_ids(spot_ids, counts_path)
    table = read_spot_table(spots_path)

    placed = _match_spots(array_xy, table, counts_path, spots_path)
    tissue = placed["selected"]
    origin = placed.loc[tissue, ["x", "y"]].min().to_numpy()
    rows = (placed.loc[tissue, "y"].to_numpy() - origin[1]).astype(np.int64)
    cols = (placed.loc[tissue, "x"].to_numpy() - origin[0]).astype(np.int64)
    expr, mask = spots_to_raster(rows, cols, counts[placed.loc[tissue, "count_row"].to_numpy()])

    full_hw = image_size(image_path)
    outside = None  # reported after trying the usual mistakes (alignment check)
    try:
        _check_spots_inside_image(table, full_hw, spots_path, image_path)
    except SampleError as exc:
        if not alignment_check and (fix is None or fix.is_identity):
            raise
        outside = exc
    affine_full, rms, worst = _fit_grid(table, origin, spot_pitch_um, spots_path)
    pitch_px = math.sqrt(abs(np.linalg.det(affine_full[:2, :2])))
    fitted_um_per_px = spot_pitch_um / pitch_px
    um_per_px = _resolve_um_per_px(image_um_per_px, fitted_um_per_px, image_path)
    image, to_work, work_um = load_working_image(image_path, um_per_px, work_um_per_px)

    meta = {
        "reader": "diffst.io.legacy_st.read_legacy_st",
        "counts_path": str(counts_path),
        "spots_path": str(spots_path),
        "image_path": str(image_path),
        "array_origin": [int(origin[0]), int(origin[1])],
        "raster_convention": "col = x - array_origin[0], row = y - array_origin[1]",
        "n_spots_tissue": int(mask.sum()),
        "n_spots_counts_only": int(placed.attrs["n_counts_only"]),
        "n_spots_table_only": int(placed.attrs["n_table_only"]),
        "n_spots_not_selected": int(placed.attrs["n_not_selected"]),
        "fit_rms_px": rms,
        "fit_max_px": worst,
        "fit_um_per_px": fitted_um_per_px,
        "full_image_hw": list(full_hw),
        "merged_duplicate_genes": merged,
    }
    sample = STSample(
        expr=expr,
        genes=gene_names,
        cell_um=float(spot_pitch_um),
        mask=mask,
        image=image,
        image_um_per_px=work_um,
        affine=to_work @ affine_full,
        name=name,
        meta=meta,
    )
    return align_to_image(sample, fix, alignment_check,
                          f"pixel_x/pixel_y in {spots_path.name}", fallback=outside)


# ---------------------------------------------------------------------------- counts
def read_counts_tsv(path: str | Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Read a spots x genes counts table: ``(N, G)`` float32 counts, N spot ids, G gene names.

    The header may or may not have a leading field for the spot-id column. Values are checked
    (finite, non-negative, whole numbers) and spot ids must be unique.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:
            header = fh.readline().rstrip("\r\n").split("\t")
        table = pd.read_csv(path, sep="\t", header=None, skiprows=1, engine="c")
    except EOFError as exc:
        raise SampleError(f"{path}: the file is truncated (compressed stream ends early); copy "
                          "or download it again") from exc
    except pd.errors.EmptyDataError as exc:
        raise SampleError(f"{path}: the counts table is empty (expected a header of gene names "
                          "and one row of counts per spot)") from exc
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise SampleError(f"{path}: cannot read as a tab-separated counts table ({exc})") from exc
    if table.shape[0] == 0:
        raise SampleError(f"{path}: counts table has no spot rows")
    n_values = table.shape[1] - 1
    if len(header) == n_values + 1:
        header = header[1:]
    if len(header) != n_values:
        raise SampleError(
            f"{path}: header has {len(header)} names but rows have {n_values} values after the "
            "spot id; is the file truncated or not tab separated?"
        )
    values = table.iloc[:, 1:]
    bad = [header[i] for i, dt in enumerate(values.dtypes) if not pd.api.types.is_numeric_dtype(dt)]
    if bad:
        raise SampleError(
            f"{path}: non-numeric counts in columns {bad[:5]}; expected spots x genes UMI counts"
        )
    spot_ids = table.iloc[:, 0].astype(str).tolist()
    counts = values.to_numpy(dtype=np.float32)
    check_counts(counts, path, "spot x gene counts")
    check_unique(spot_ids, path, "spot id")
    return counts, spot_ids, [str(g).strip() for g in header]


def parse_spot_ids(spot_ids: list[str], path: str | Path) -> np.ndarray:
    """``(N, 2)`` int array coordinates ``(x, y)`` from ids like ``"12x7"``; others raise."""
    parts = pd.Series(spot_ids, dtype=str).str.extract(_SPOT_ID)
    bad = parts[0].isna().to_numpy()
    if bad.any():
        examples = [spot_ids[i] for i in np.flatnonzero(bad)[:5]]
        raise SampleError(
            f"{path}: spot ids {examples} are not of the form '<x>x<y>' (array coordinates); "
            "is the table transposed (genes x spots)?"
        )
    return parts.to_numpy(dtype=np.int64)


def merge_duplicate_genes(
    counts: np.ndarray, genes: list[str], path: Path
) -> tuple[np.ndarray, list[str], list[str]]:
    """Sum columns that share a gene symbol (first-occurrence order); also the merged names."""
    codes, uniq = pd.factorize(pd.Series(genes))
    if len(uniq) == len(genes):
        return counts, genes, []
    dup = sorted({g for g, c in pd.Series(genes).value_counts().items() if c > 1})
    warnings.warn(
        f"{path}: {len(dup)} gene symbols occur more than once ({dup[:5]}); their counts are "
        "summed into one gene each",
        stacklevel=3,
    )
    merged = np.zeros((counts.shape[0], len(uniq)), dtype=np.float32)
    np.add.at(merged.T, codes, counts.T)
    return merged, [str(g) for g in uniq], dup


# ---------------------------------------------------------------------------- spots
def read_spot_table(path: str | Path) -> pd.DataFrame:
    """Read an ST spot table; returns columns ``x y pixel_x pixel_y selected`` (checked)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise SampleError(f"{path}: cannot read as a tab-separated spot table ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in _SPOT_COLUMNS if c not in table.columns]
    if missing:
        raise SampleError(
            f"{path}: spot table lacks columns {missing}; expected {list(_SPOT_COLUMNS)} "
            f"(found {list(table.columns)[:8]})"
        )
    table = table[list(_SPOT_COLUMNS)]
    values = table.apply(pd.to_numeric, errors="coerce")
    if values.isna().any().any():
        col = values.columns[values.isna().any()].tolist()
        raise SampleError(f"{path}: missing or non-numeric values in columns {col}")
    for c in ("x", "y", "selected"):
        if (values[c] != values[c].round()).any():
            raise SampleError(f"{path}: column '{c}' must hold whole numbers")
    out = values.astype({"x": np.int64, "y": np.int64, "selected": np.int64})
    out["selected"] = out["selected"] == 1
    dup = out.duplicated(["x", "y"])
    if dup.any():
        first = out.loc[dup, ["x", "y"]].iloc[0].tolist()
        raise SampleError(f"{path}: array position {first} occurs more than once")
    if not out["selected"].any():
        raise SampleError(f"{path}: no spot has selected == 1 (no spot under tissue)")
    return out.reset_index(drop=True)


def _match_spots(
    array_xy: np.ndarray, table: pd.DataFrame, counts_path: Path, spots_path: Path
) -> pd.DataFrame:
    """Join counts rows to spot-table rows on array ``(x, y)``; one row per matched spot."""
    counts_side = pd.DataFrame(
        {"x": array_xy[:, 0], "y": array_xy[:, 1], "count_row": np.arange(len(array_xy))}
    )
    joined = counts_side.merge(table, on=["x", "y"], how="inner")
    if joined.empty:
        raise SampleError(
            f"{counts_path}: none of its {len(array_xy)} spot ids matches an (x, y) in "
            f"{spots_path}; are these files from the same section?"
        )
    n_counts_only = len(array_xy) - len(joined)
    if n_counts_only:
        warnings.warn(
            f"{counts_path}: {n_counts_only} spots with counts are absent from {spots_path} "
            "(no image position); they are dropped",
            stacklevel=3,
        )
    if not joined["selected"].any():
        raise SampleError(
            f"{counts_path}: no spot with counts is marked selected (under tissue) in {spots_path}"
        )
    joined.attrs["n_counts_only"] = n_counts_only
    joined.attrs["n_table_only"] = int(table["selected"].sum() - joined["selected"].sum())
    joined.attrs["n_not_selected"] = int((~joined["selected"]).sum())
    return joined


# ---------------------------------------------------------------------------- geometry
def _check_spots_inside_image(
    table: pd.DataFrame, image_hw: tuple[int, int], spots_path: Path, image_path: Path
) -> None:
    sel = table[table["selected"]]
    h, w = image_hw
    outside = (sel["pixel_x"] < -0.5) | (sel["pixel_y"] < -0.5)
    outside |= (sel["pixel_x"] > w - 0.5) | (sel["pixel_y"] > h - 0.5)
    if outside.any():
        raise SampleError(
            f"{image_path}: {int(outside.sum())} tissue spots of {spots_path} lie outside this "
            f"{w}x{h} px image (pixel_x up to {sel['pixel_x'].max():.0f}, pixel_y up to "
            f"{sel['pixel_y'].max():.0f}); is this the full-resolution image of the section?"
        )


def _fit_grid(
    table: pd.DataFrame, origin: np.ndarray, spot_pitch_um: float, spots_path: Path
) -> tuple[np.ndarray, float, float]:
    """Affine raster ``(col, row)`` -> full-res pixels from the selected spots; RMS/max residual."""
    sel = table[table["selected"]]
    src = np.column_stack([sel["x"] - origin[0], sel["y"] - origin[1]]).astype(np.float64)
    dst = sel[["pixel_x", "pixel_y"]].to_numpy(np.float64)
    affine = fit_affine(src, dst)
    pred = (np.column_stack([src, np.ones(len(src))]) @ affine.T)[:, :2]
    err = np.linalg.norm(pred - dst, axis=1)
    pitch_px = math.sqrt(abs(np.linalg.det(affine[:2, :2])))
    rms, worst = float(np.sqrt(np.mean(err**2))), float(err.max())
    if worst > MAX_RESIDUAL_PITCH * pitch_px:
        i = int(np.argmax(err))
        raise SampleError(
            f"{spots_path}: spot positions do not follow the array grid: spot "
            f"x={int(sel['x'].iloc[i])}, y={int(sel['y'].iloc[i])} is {worst:.0f} px from where "
            f"the fitted grid puts it (pitch {pitch_px:.0f} px); check that pixel_x/pixel_y "
            "belong to these array coordinates"
        )
    return affine, rms, worst


def _resolve_um_per_px(given: float | None, fitted: float, image_path: Path) -> float:
    if given is None:
        return fitted
    if not given > 0:
        raise ValueError(f"--image-um-per-px (image_um_per_px= in Python) must be positive, "
                         f"got {given}")
    if abs(given - fitted) > UM_PER_PX_TOLERANCE * fitted:
        raise SampleError(
            f"{image_path}: --image-um-per-px {given:g} (image_um_per_px= in Python) disagrees "
            f"with the {fitted:.3f} µm/px implied by the spot pitch and the fitted spot "
            "positions; check the value and the image (and, in Python, spot_pitch_um=)"
        )
    return float(given)

"""AnnData (``.h5ad``) in and out.

Reading follows the scanpy/squidpy Visium convention: ``obsm["spatial"]`` holds spot centres in
full-resolution image pixels ``(x, y)``; ``uns["spatial"][library_id]["images"]["hires"|"lowres"]``
the images and ``["scalefactors"]`` their ``tissue_{hires,lowres}_scalef`` (image px per full-res
px). The grid comes from ``obs["array_row"]``, ``obs["array_col"]`` when present (hexagonal when
the row step is ~√3 times the column step, as on Visium; square otherwise), else it is inferred
from the coordinates (:func:`infer_lattice`). Raster mapping, affine fit and cell size follow
:mod:`diffst.io.spaceranger`. Only ``obs["in_tissue"] == 1`` spots are kept when that column
exists. Unlike a Space Ranger folder, the hires/lowres size ratio is not cross-checked here (files
in the wild often carry placeholder images); the chosen image must contain every spot.

Writing (:func:`write_anndata`) stores one observation per HR raster cell inside the mask:
``obs`` ``row``, ``col`` (raster indices), ``x_um``, ``y_um`` (µm from the image's top-left
corner), ``obsm["spatial"]`` (cell centre in pixels of the sample image, the file's "full-res"
frame), ``X`` float32 counts per cell, optional ``layers`` (e.g. posterior mean/std/quantiles),
``var`` index = genes, ``uns["spatial"][library_id]`` with the image (downscaled to at most
``max_image_px`` on its longest side as ``"hires"``) and scale factors so ``scanpy.pl.spatial``
draws it, and ``uns["diffst"]`` with the raster geometry (``cell_um``, ``raster_shape``,
``affine`` and ``image_um_per_px``, both for the full-res frame, i.e. the sample image before
downscaling) so :func:`read_anndata` restores the same :class:`STSample`.

Why h5ad by default: it is what scanpy, squidpy and most Python spatial tools read, and it needs
only ``anndata`` (already a dependency). SpatialData in and out pulls in a heavy dependency tree
(spatialdata, dask, xarray, geopandas, ...), so it is the optional extra ``diffst[spatialdata]``
(:mod:`diffst.io.spatialdata_io`), which converts through this module.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from diffst.data.grid import fit_affine
from diffst.data.sample import SampleError, STSample
from diffst.io.alignment import PositionFix, align_to_image, blank_reason
from diffst.io.atomic import atomic_path
from diffst.io.counts import (
    check_counts,
    check_dense_size,
    check_unique,
    duplicated_names,
    place_counts,
    select_gene_columns,
    top_gene_columns,
)
from diffst.io.counts import (
    make_unique as make_names_unique,
)
from diffst.io.imageio import downscale_image
from diffst.io.spaceranger import (
    VISIUM_PITCH_UM,
    ChosenImage,
    check_spot_diameter,
    finish_sample,
    hex_raster_index,
    layout_spots,
    scale_factor,
)

DIFFST_SCHEMA = "diffst.anndata/1"
HEX_STEP_RATIO = 1.4  # row step / column step in array units: hex ~1.73, square 1.0
MAX_LATTICE_FRACTION = 0.25  # inferred lattice: max distance from an integer position


# ---------------------------------------------------------------------------- reading
def read_anndata(
    path_or_adata: str | Path | ad.AnnData,
    library_id: str | None = None,
    image: str | None = "hires",
    genes: Sequence[str] | None = None,
    n_top_genes: int | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    make_unique: bool = False,
    require_integer: bool = True,
    pitch_um: float | None = None,
    max_dense_gb: float = 8.0,
    name: str | None = None,
    fix: PositionFix | None = None,
    alignment_check: bool = True,
) -> STSample:
    """Read an ``.h5ad`` file (or an in-memory AnnData) as an :class:`STSample`.

    Args:
        path_or_adata: ``.h5ad`` path or AnnData.
        library_id: key of ``uns["spatial"]``; default the only one present.
        image: ``"hires"`` (falls back to lowres with a warning), ``"lowres"`` or None (no image).
        genes: keep these genes in this order; n_top_genes: keep the N most-counted genes.
        layer: counts from ``layers[layer]`` (``"raw"``: ``adata.raw``); default ``X``.
        gene_key: ``var`` column holding the gene names; default ``var_names``.
        make_unique: append ``-1``, ``-2`` to repeated gene names instead of raising.
        require_integer: reject non-integer counts (not applied to files diffst wrote).
        pitch_um: centre-to-centre spot distance in µm; default 100 on a hexagonal (Visium)
            grid, else ``bin_size_um`` / ``microns_per_pixel`` from the scale factors.
        max_dense_gb: refuse dense rasters larger than this.
        name: sample name; default the stored name (files diffst wrote), else the file name
            (or the library id for an in-memory AnnData).
        fix: correction of the positions (x/y swap, flip, rotation, scale), see
            :mod:`diffst.io.alignment`.
        alignment_check: refuse a blank image or positions that miss the tissue (False: skip).

    Returns:
        the sample; files written by :func:`write_anndata` come back with the same raster,
        affine and image (the image as stored, i.e. possibly downscaled).
    """
    if isinstance(path_or_adata, ad.AnnData):
        adata, source = path_or_adata, "AnnData object"
    else:
        path = Path(path_or_adata)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such .h5ad file")
        try:
            adata = ad.read_h5ad(path)
        except (OSError, KeyError, ValueError) as exc:
            raise SampleError(f"{path}: cannot read as an AnnData .h5ad file ({exc})") from exc
        source = str(path)
    return anndata_to_sample(
        adata,
        library_id=library_id,
        image=image,
        genes=genes,
        n_top_genes=n_top_genes,
        layer=layer,
        gene_key=gene_key,
        make_unique=make_unique,
        require_integer=require_integer,
        pitch_um=pitch_um,
        max_dense_gb=max_dense_gb,
        name=name,
        source=source,
        fix=fix,
        alignment_check=alignment_check,
    )


def anndata_to_sample(
    adata: ad.AnnData,
    library_id: str | None = None,
    image: str | None = "hires",
    genes: Sequence[str] | None = None,
    n_top_genes: int | None = None,
    layer: str | None = None,
    gene_key: str | None = None,
    make_unique: bool = False,
    require_integer: bool = True,
    pitch_um: float | None = None,
    max_dense_gb: float = 8.0,
    name: str | None = None,
    source: str = "AnnData object",
    fix: PositionFix | None = None,
    alignment_check: bool = True,
) -> STSample:
    """Convert an AnnData (scanpy spatial convention or written by diffst) to an STSample.

    Arguments as in :func:`read_anndata`; ``source`` names the data in error messages.
    """
    if image not in ("hires", "lowres", None):
        raise ValueError(f"image must be 'hires', 'lowres' or None, got {image!r}")
    is_diffst = _diffst_uns(adata) is not None
    matrix, gene_names, what = _counts(adata, layer, gene_key, source)
    check_unique(list(adata.obs_names), source, "observation name (obs_names)",
                 "call adata.obs_names_make_unique() or drop the duplicated spots")
    dups = duplicated_names(gene_names)
    meta: dict[str, Any] = {}
    if dups and make_unique:
        gene_names = make_names_unique(gene_names)
        meta["duplicate_gene_symbols"] = dups
    else:
        check_unique(gene_names, source, "gene name", "use a var column with unique ids "
                     "(--gene-key gene_ids, gene_key='gene_ids' in Python), or --make-unique "
                     "(make_unique=True) to append -1, -2 to repeats")
    check_counts(matrix, source, what, require_integer and not is_diffst)
    if is_diffst:
        sample = _diffst_to_sample(adata, matrix, gene_names, library_id, image, genes,
                                   n_top_genes, max_dense_gb, name, source)
        return align_to_image(sample, fix, alignment_check, f"the raster of {source}")
    return _scanpy_to_sample(adata, matrix, gene_names, library_id, image, genes, n_top_genes,
                             pitch_um, max_dense_gb, name, source, meta,
                             dict(fix=fix, alignment_check=alignment_check,
                                  positions=f"obsm['spatial'] (x, y) of {source}"))


def _counts(
    adata: ad.AnnData, layer: str | None, gene_key: str | None, source: str
) -> tuple[Any, list[str], str]:
    var = adata.var
    if layer is None:
        matrix, what = adata.X, "X"
    elif layer == "raw":
        if adata.raw is None:
            raise SampleError(f"{source}: the layer 'raw' was asked for but the file has no "
                              ".raw; choose another with --layer (layer= in Python)")
        matrix, what, var = adata.raw.X, "raw.X", adata.raw.var
    elif layer in adata.layers:
        matrix, what = adata.layers[layer], f"layers[{layer!r}]"
    else:
        raise SampleError(
            f"{source}: no layer {layer!r}; layers present: {sorted(adata.layers.keys())}"
        )
    if matrix is None:
        raise SampleError(f"{source}: {what} is empty; name the layer with the counts with "
                          "--layer (layer= in Python)")
    if gene_key is None:
        names = [str(g) for g in var.index]
    elif gene_key in var.columns:
        names = [str(g) for g in var[gene_key]]
    else:
        raise SampleError(
            f"{source}: no var column {gene_key!r} (--gene-key, gene_key= in Python); "
            f"columns present: {list(var.columns)}"
        )
    return matrix, names, what


def _diffst_uns(adata: ad.AnnData) -> Mapping | None:
    info = adata.uns.get("diffst")
    if isinstance(info, Mapping) and str(info.get("schema", "")).startswith("diffst.anndata/"):
        return info
    return None


def _select(matrix: Any, gene_names: list[str], genes, n_top_genes, source) -> list[int]:
    if genes is not None and n_top_genes is not None:
        raise ValueError("pass either genes or n_top_genes, not both")
    if genes is not None:
        return select_gene_columns(gene_names, genes, source)
    if n_top_genes is not None:
        return top_gene_columns(matrix, n_top_genes)
    return list(range(len(gene_names)))


def _diffst_to_sample(adata, matrix, gene_names, library_id, image, genes, n_top_genes,
                      max_dense_gb, name, source) -> STSample:
    info = _diffst_uns(adata)
    lib = library_id or str(info.get("library_id", ""))
    for col in ("row", "col"):
        if col not in adata.obs:
            raise SampleError(f"{source}: written by diffst but obs[{col!r}] is missing")
    rows = adata.obs["row"].to_numpy(dtype=np.int64)
    cols = adata.obs["col"].to_numpy(dtype=np.int64)
    shape = tuple(int(v) for v in np.asarray(info["raster_shape"]).ravel())
    affine_full = np.asarray(info["affine"], dtype=np.float64)
    um_full = float(info["image_um_per_px"])
    idx = _select(matrix, gene_names, genes, n_top_genes, source)
    check_dense_size(len(idx), shape, source, max_dense_gb)
    expr, mask = place_counts(_columns(matrix, idx), rows, cols, shape, source)
    chosen = _chosen_from_uns(adata, lib, image, source, required=False)
    scale = np.diag([chosen.scalef, chosen.scalef, 1.0])
    meta = json.loads(str(info.get("meta_json", "{}")))
    meta["read_from"] = source
    sample = STSample(
        expr=expr,
        genes=[gene_names[i] for i in idx],
        cell_um=float(info["cell_um"]),
        mask=mask,
        image=chosen.array,
        image_um_per_px=um_full / chosen.scalef,
        affine=scale @ affine_full,
        name=name if name is not None else str(info.get("name", lib or "sample")),
        meta=meta,
    )
    sample.check_alignment()  # bounds; the tissue check runs in anndata_to_sample
    return sample


def _scanpy_to_sample(adata, matrix, gene_names, library_id, image, genes, n_top_genes,
                      pitch_um, max_dense_gb, name, source, meta, align_kw) -> STSample:
    if "spatial" not in adata.obsm:
        raise SampleError(
            f"{source}: no obsm['spatial'] with spot coordinates; store the full-resolution "
            "pixel coordinates (x, y) there (scanpy convention)"
        )
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2 or not np.isfinite(xy[:, :2]).all():
        raise SampleError(f"{source}: obsm['spatial'] must be finite (N, 2) pixel coordinates")
    xy = xy[:, :2]
    keep = np.ones(len(xy), dtype=bool)
    if "in_tissue" in adata.obs:
        keep = adata.obs["in_tissue"].to_numpy() == 1
        if (~keep).any():
            warnings.warn(f"{source}: {int((~keep).sum())} spot(s) with in_tissue != 1 are left "
                          "out", stacklevel=4)
        if not keep.any():
            raise SampleError(f"{source}: no spot has obs['in_tissue'] == 1 (empty tissue mask)")
    spot_idx = np.flatnonzero(keep)
    lib = _library(adata, library_id, source)
    sf = dict(adata.uns["spatial"][lib].get("scalefactors", {})) if lib else {}
    sf_where = f"{source}: uns['spatial'][{lib!r}]['scalefactors']"

    if "array_row" in adata.obs and "array_col" in adata.obs:
        arow = adata.obs["array_row"].to_numpy(dtype=np.int64)[spot_idx]
        acol = adata.obs["array_col"].to_numpy(dtype=np.int64)[spot_idx]
        hexagonal = _looks_hexagonal(arow, acol, xy[spot_idx])
        meta["lattice_from"] = "obs array_row/array_col"
    else:
        arow, acol, hexagonal = infer_lattice(xy[spot_idx], source)
        meta["lattice_from"] = "inferred from obsm['spatial']"
    if hexagonal:
        rows, cols, shifted = hex_raster_index(arow, acol, source)
        step = pitch_um or VISIUM_PITCH_UM
    else:
        rows, cols, shifted = arow, acol, None
        step = pitch_um or _square_pitch(sf, arow, acol, xy[spot_idx], source)
    layout = layout_spots(rows, cols, xy[spot_idx], step, source, shifted)
    if hexagonal:
        check_spot_diameter(sf, layout, sf_where)
    chosen = _chosen_from_uns(adata, lib, image, source, required=True)
    spots = _rows(matrix, spot_idx)
    idx = _select(spots, gene_names, genes, n_top_genes, source)
    meta.update({
        "reader": "diffst.io.anndata_io.read_anndata",
        "source": source,
        "library_id": lib,
        "scalefactors": sf,
        "n_genes_in_file": len(gene_names),
    })
    return finish_sample(
        _columns(spots, idx),
        [gene_names[i] for i in idx],
        layout,
        chosen,
        name if name is not None else _default_name(source, lib),
        meta,
        source,
        None,
        max_dense_gb,
        **align_kw,
    )


def _default_name(source: str, lib: str | None) -> str:
    if source.endswith(".h5ad"):
        return Path(source).stem
    return lib or "sample"


def _rows(matrix: Any, idx: np.ndarray) -> Any:
    return sp.csr_matrix(matrix)[idx] if sp.issparse(matrix) else np.asarray(matrix)[idx]


def _columns(matrix: Any, idx: list[int]) -> Any:
    return sp.csr_matrix(matrix)[:, idx] if sp.issparse(matrix) else np.asarray(matrix)[:, idx]


def _library(adata: ad.AnnData, library_id: str | None, source: str) -> str | None:
    spatial = adata.uns.get("spatial")
    libs = list(spatial.keys()) if isinstance(spatial, Mapping) else []
    if library_id is not None:
        if library_id not in libs:
            raise SampleError(f"{source}: no library {library_id!r} in uns['spatial'] "
                              f"(present: {libs})")
        return library_id
    if len(libs) > 1:
        raise SampleError(f"{source}: several libraries in uns['spatial'] ({libs}); pass "
                          "library_id")
    return libs[0] if libs else None


def _chosen_from_uns(adata, lib, image, source, required: bool) -> ChosenImage:
    """Pick ``image`` from ``uns['spatial'][lib]``; hires falls back to lowres with a warning."""
    if image is None:
        return ChosenImage(None, "none", 1.0)
    entry = adata.uns["spatial"][lib] if lib else {}
    images = entry.get("images", {}) or {}
    where = f"{source}: uns['spatial'][{lib!r}]['images']"
    kind = image
    if kind not in images:
        if kind == "hires" and "lowres" in images:
            warnings.warn(f"{where} has no 'hires' image; using 'lowres'", stacklevel=5)
            kind = "lowres"
        elif not images:
            if required:
                warnings.warn(f"{source}: no image in uns['spatial']; the sample has no H&E "
                              "image", stacklevel=5)
            return ChosenImage(None, "none", 1.0)
        else:
            raise SampleError(f"{where} has no {image!r} image (present: {sorted(images)}); "
                              "pass one of those with --image (image= in Python)")
    sf = entry.get("scalefactors", {}) or {}
    array = image_to_rgb_uint8(images[kind], f"{where}[{kind!r}]")
    blank = blank_reason(array) if kind == "hires" and "lowres" in images else None
    if blank is not None:
        warnings.warn(f"{where}['hires'] is blank ({blank}); using 'lowres'", stacklevel=5)
        kind = "lowres"
        array = image_to_rgb_uint8(images[kind], f"{where}[{kind!r}]")
    scalef = scale_factor(sf, f"tissue_{kind}_scalef", f"{source}: uns['spatial'][{lib!r}]"
                          "['scalefactors']")
    return ChosenImage(f"{where}[{kind!r}]", kind, scalef, array)


def image_to_rgb_uint8(arr: Any, where: str) -> np.ndarray:
    """An image from AnnData as ``(H, W, 3)`` uint8: uint8 as is, floats in [0, 1] times 255.

    Gray is replicated to RGB and alpha dropped; anything else raises (nothing is rescaled by
    guesswork).
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise SampleError(f"{where}: expected an (H, W, 3) RGB image, got shape {arr.shape}")
    arr = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise SampleError(
                f"{where}: float image values must lie in [0, 1] (found {np.nanmin(arr):.3g}.."
                f"{np.nanmax(arr):.3g}); this is not an RGB image (standardised features?)"
            )
        return np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    raise SampleError(f"{where}: unsupported image type {arr.dtype}; expected uint8 or float")


def _looks_hexagonal(arow: np.ndarray, acol: np.ndarray, xy: np.ndarray) -> bool:
    """True when pixel steps per array row are ~√3 times those per array column (Visium)."""
    if len(arow) < 3:
        return False
    aff = fit_affine(np.column_stack([acol, arow]).astype(np.float64), xy)
    return np.hypot(*aff[:2, 1]) > HEX_STEP_RATIO * np.hypot(*aff[:2, 0])


def _square_pitch(sf: Mapping, arow, acol, xy, source: str) -> float:
    if "bin_size_um" in sf:
        return float(sf["bin_size_um"])
    if "microns_per_pixel" in sf:
        aff = fit_affine(np.column_stack([acol, arow]).astype(np.float64), xy)
        return float(sf["microns_per_pixel"]) * float(np.hypot(*aff[:2, 0]))
    raise SampleError(
        f"{source}: spots lie on a square grid but nothing states its pitch (no 'bin_size_um' "
        "or 'microns_per_pixel' in uns['spatial'][library]['scalefactors']); give it in µm "
        "with --pitch-um (pitch_um= in Python)"
    )


def infer_lattice(xy: np.ndarray, source: str = "coordinates") -> tuple[np.ndarray, np.ndarray,
                                                                        bool]:
    """Infer array coordinates of spots on a regular lattice from their pixel centres.

    The nearest-neighbour vectors decide between a hexagonal lattice (6-fold symmetry, Visium)
    and a square one (4-fold); the basis is the median neighbour vector along the direction
    closest to the image x axis and the next one clockwise on screen (y down). Hexagonal
    coordinates follow Visium's convention (``array_col`` step 2 along a row, rows offset by 1).

    Args:
        xy: ``(N, 2)`` spot centres ``(x, y)`` in pixels, N >= 3.
        source: named in errors.

    Returns:
        ``array_row``, ``array_col`` ``(N,)`` int (from 0) and ``hexagonal``.

    Raises:
        SampleError: too few spots, duplicated positions, or positions off any regular lattice.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 3:
        raise SampleError(f"{source}: need at least 3 spots to infer their grid, got {len(xy)}")
    dist, nbr = cKDTree(xy).query(xy, k=min(7, len(xy)))
    nn = float(np.median(dist[:, 1]))
    if not nn > 0:
        raise SampleError(f"{source}: several spots share the same coordinates")
    near = (dist[:, 1:] > 0.8 * nn) & (dist[:, 1:] < 1.2 * nn)
    vec = (xy[nbr[:, 1:]] - xy[:, None, :])[near]
    theta = np.arctan2(vec[:, 1], vec[:, 0])
    r6, r4 = np.mean(np.exp(6j * theta)), np.mean(np.exp(4j * theta))
    hexagonal = abs(r6) > abs(r4)
    fold = 6 if hexagonal else 4
    theta0 = np.angle(r6 if hexagonal else r4) / fold
    step = 2 * np.pi / fold
    basis = []
    for k in (0, 1):
        direction = np.array([np.cos(theta0 + k * step), np.sin(theta0 + k * step)])
        along = vec @ direction
        sel = along > 0.9 * nn * np.cos(step / 4)
        if not sel.any():
            raise SampleError(f"{source}: spots do not form a regular grid; add obs "
                              "array_row/array_col")
        basis.append(np.median(vec[sel], axis=0))
    uv = _round_to_lattice(xy, np.column_stack(basis), source)
    u, v = uv[:, 0], uv[:, 1]
    arow, acol = (v, 2 * u + v) if hexagonal else (v, u)
    return arow - arow.min(), acol - acol.min(), bool(hexagonal)


def _round_to_lattice(xy: np.ndarray, basis: np.ndarray, source: str) -> np.ndarray:
    frac = np.linalg.solve(basis, (xy - xy[0]).T).T
    uv = np.round(frac).astype(np.int64)
    for _ in range(2):  # refine the basis on all spots to stop drift over large distances
        aff = fit_affine(uv.astype(np.float64), xy)
        frac = (np.linalg.inv(aff) @ np.column_stack([xy, np.ones(len(xy))]).T)[:2].T
        uv = np.round(frac).astype(np.int64)
    worst = float(np.abs(frac - uv).max())
    if worst > MAX_LATTICE_FRACTION:
        raise SampleError(
            f"{source}: spot coordinates do not sit on a regular grid (a spot is {worst:.2f} "
            "pitches off); add obs['array_row'] and obs['array_col']"
        )
    return uv


# ---------------------------------------------------------------------------- writing
def sample_to_anndata(
    sample: STSample,
    layers: Mapping[str, np.ndarray] | None = None,
    library_id: str | None = None,
    max_image_px: int | None = 2000,
) -> ad.AnnData:
    """One observation per raster cell inside the mask (layout in the module docstring).

    Args:
        sample: the (super-resolved) sample; ``expr`` becomes ``X`` (float32 counts per cell).
        layers: extra ``(G, H, W)`` maps (e.g. ``{"mean", "std", "q05", "q95"}``).
        library_id: key in ``uns["spatial"]``; default ``sample.name``.
        max_image_px: longest side of the stored image (None: store it at full size).
    """
    lib = library_id or sample.name
    rows, cols = np.nonzero(sample.mask)
    centre = np.column_stack([cols, rows, np.ones(len(rows))]) @ sample.affine.T
    obs = pd.DataFrame(
        {
            "row": rows.astype(np.int64),
            "col": cols.astype(np.int64),
            "x_um": centre[:, 0] * sample.image_um_per_px,
            "y_um": centre[:, 1] * sample.image_um_per_px,
        },
        index=[f"r{r}_c{c}" for r, c in zip(rows, cols, strict=True)],
    )
    adata = ad.AnnData(
        X=np.ascontiguousarray(sample.expr[:, rows, cols].T, dtype=np.float32),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(sample.genes, dtype=str)),
    )
    adata.obsm["spatial"] = centre[:, :2].astype(np.float64)
    for key, arr in (layers or {}).items():
        arr = np.asarray(arr)
        if arr.shape != sample.expr.shape:
            raise ValueError(f"layer {key!r} has shape {arr.shape}, expected {sample.expr.shape}")
        adata.layers[key] = np.ascontiguousarray(arr[:, rows, cols].T, dtype=np.float32)
    adata.uns["spatial"] = {lib: _spatial_entry(sample, max_image_px)}
    adata.uns["diffst"] = {
        "schema": DIFFST_SCHEMA,
        "name": sample.name,
        "library_id": lib,
        "cell_um": float(sample.cell_um),
        "raster_shape": np.array(sample.shape, dtype=np.int64),
        "affine": sample.affine.copy(),
        "image_um_per_px": float(sample.image_um_per_px),
        "meta_json": json.dumps(sample.meta, default=_jsonable),
    }
    return adata


def _jsonable(obj: Any) -> Any:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def _spatial_entry(sample: STSample, max_image_px: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "scalefactors": {"spot_diameter_fullres": float(sample.px_per_cell)},
        "metadata": {"source": "diffst"},
    }
    if sample.image is not None:
        longest = max(sample.image.shape[:2])
        scalef = 1.0
        img = sample.image
        if max_image_px is not None and longest > max_image_px:
            scalef = max_image_px / longest
            img = downscale_image(sample.image, scalef)
        entry["images"] = {"hires": img}
        entry["scalefactors"]["tissue_hires_scalef"] = scalef
    return entry


def write_anndata(
    result: STSample,
    path: str | Path,
    layers: Mapping[str, np.ndarray] | None = None,
    library_id: str | None = None,
    max_image_px: int | None = 2000,
    uns: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``result`` as ``.h5ad`` atomically (see :func:`sample_to_anndata`); return the path.

    ``uns`` entries are added to ``adata.uns`` (e.g. how the intervals were calibrated)."""
    path = Path(path)
    adata = sample_to_anndata(result, layers, library_id, max_image_px)
    adata.uns.update(dict(uns or {}))
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path


__all__ = [
    "anndata_to_sample",
    "image_to_rgb_uint8",
    "infer_lattice",
    "read_anndata",
    "sample_to_anndata",
    "write_anndata",
]

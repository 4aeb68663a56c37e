"""Detect a sample's file format, read it with the right reader, and summarise it.

:func:`detect_format` recognises:

* ``npz``: a ``.npz`` written by :meth:`STSample.save_npz`;
* ``h5ad``: an ``.h5ad`` with ``obsm["spatial"]`` (scanpy convention) or written by diffst;
* ``xenium_cells_h5ad``: an ``.h5ad`` of cells with ``obs["x_pixel"]``/``["y_pixel"]`` (HEST
  style) and an image of the same stem beside it;
* ``spaceranger``: a folder (or its ``outs``) with ``spatial/`` and a
  ``filtered_feature_bc_matrix.h5`` file or ``filtered_feature_bc_matrix/`` folder;
* ``visium_hd``: a folder with ``binned_outputs/`` (or ``outs/binned_outputs/``), a
  ``binned_outputs`` folder, or a ``square_XXXum`` folder;
* ``istar``: a folder with ``cnts.tsv``, ``locs-raw.tsv`` and ``he-raw.*``;
* ``xenium``: a folder with ``transcripts.parquet``, or ``cells.parquet`` / ``cell_feature_matrix``;
* ``legacy_st``: a ``*.counts.tsv[.gz]`` file (with ``*.spots.tsv`` and ``*.HE.jpg`` beside it)
  or a folder of such sections (HER2ST layout; pick one with ``section=``);
* ``spatialdata``: a SpatialData ``.zarr`` store (needs the extra ``diffst[spatialdata]``).

:func:`read_sample` dispatches to the reader; :func:`inspect_path` reads cheaply (10 genes) and
returns a summary dict, optionally drawing the tissue cells on the image
(:func:`write_overlay`); :func:`format_inspection` prints it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from diffst.data.sample import STSample, load_npz
from diffst.io.alignment import align_to_image
from diffst.io.atomic import atomic_path
from diffst.io.imageio import downscale_image

_BIN_DIR = re.compile(r"^square_\d+um$")
_LEGACY_SUFFIXES = (".counts.tsv.gz", ".counts.tsv")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
# readers that take n_top_genes/make_unique
_CHEAP_READ = {"spaceranger", "visium_hd", "h5ad", "spatialdata"}
MAX_UPSCALE = 4.0
CLI_FLAGS = {
    "image_path": "--image", "require_integer": "--allow-non-integer",
    "alignment_check": "--no-alignment-check",
    "fix": "--swap-xy/--flip/--rotate/--position-scale",
}
"""Reader keywords whose command-line option is not simply ``--`` plus the dashed name."""
KEYWORDS_WITH_FLAGS = ("image", "image_path", "make_unique", "image_um_per_px", "section",
                       "layer", "gene_key", "bin_um", "pitch_um", "image_scale",
                       "require_integer", "max_dense_gb", "alignment_check", "fix")
"""Reader keywords that the ``diffst`` reader options set (see :func:`cli_flag`)."""
FORMATS = (
    "npz", "h5ad", "xenium_cells_h5ad", "spaceranger", "visium_hd", "istar", "xenium", "legacy_st",
    "spatialdata",
)
_SPATIALDATA_GROUPS = ("images", "labels", "points", "shapes", "tables")


# ---------------------------------------------------------------------------- detection
def detect_format(path: str | Path) -> str:
    """The format name of ``path`` (one of :data:`FORMATS`); unknown layouts raise ValueError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        return _detect_file(path)
    for folder in (path, path / "outs"):
        fmt = _detect_folder(folder) if folder.is_dir() else None
        if fmt:
            return fmt
    raise ValueError(
        f"{path}: unrecognised layout. Expected a Space Ranger 'outs' folder (spatial/ + "
        "filtered_feature_bc_matrix[.h5]), Visium HD binned_outputs/, an iStar folder (cnts.tsv, "
        "locs-raw.tsv, he-raw.jpg), a Xenium bundle (transcripts.parquet or cells.parquet), "
        "legacy ST files (*.counts.tsv.gz, *.spots.tsv, *.HE.jpg), an .h5ad, a diffst .npz "
        "or a SpatialData .zarr"
    )


def _detect_file(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".h5ad"):
        return _h5ad_kind(path)
    if name.endswith(_LEGACY_SUFFIXES):
        return "legacy_st"
    if name in ("transcripts.parquet", "cells.parquet"):
        return "xenium"
    raise ValueError(
        f"{path}: unrecognised file type; pass a .h5ad, a diffst .npz, a legacy ST "
        "*.counts.tsv.gz, or the folder of a Space Ranger / Visium HD / iStar / Xenium output"
    )


def _h5ad_kind(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            has_spatial = "obsm" in fh and "spatial" in fh["obsm"]
            has_diffst = "uns" in fh and "diffst" in fh["uns"]
            obs = fh["obs"] if "obs" in fh else {}
            has_pixels = "x_pixel" in obs and "y_pixel" in obs
    except OSError as exc:
        raise ValueError(f"{path}: cannot open as an .h5ad (HDF5) file ({exc})") from exc
    if not (has_spatial or has_diffst) and has_pixels:
        return "xenium_cells_h5ad"
    return "h5ad"


def _detect_folder(folder: Path) -> str | None:
    if any((folder / n).is_file() for n in ("zarr.json", ".zgroup")) and any(
            (folder / g).is_dir() for g in _SPATIALDATA_GROUPS):
        return "spatialdata"
    if _BIN_DIR.match(folder.name) or folder.name == "binned_outputs" \
            or (folder / "binned_outputs").is_dir():
        return "visium_hd"
    if (folder / "spatial").is_dir() and any(
        (folder / f"{k}_feature_bc_matrix{s}").exists() for k in ("filtered", "raw")
        for s in (".h5", "")
    ):
        return "spaceranger"
    if (folder / "cnts.tsv").is_file() and (folder / "locs-raw.tsv").is_file():
        return "istar"
    if any((folder / n).exists() for n in (
        "transcripts.parquet", "cells.parquet", "cell_feature_matrix.h5", "cell_feature_matrix",
        "experiment.xenium",
    )):
        return "xenium"
    if _legacy_sections(folder):
        return "legacy_st"
    return None


def _legacy_sections(folder: Path) -> list[str]:
    found = set()
    for suffix in _LEGACY_SUFFIXES:
        found.update(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))
    return sorted(found)


# ---------------------------------------------------------------------------- reading
def read_sample(path: str | Path, **kw: Any) -> STSample:
    """Read any supported layout (see :func:`detect_format`) into an :class:`STSample`.

    Keyword arguments go to the format's reader (e.g. ``image=``, ``genes=``, ``bin_um=``,
    ``section=`` for a HER2ST folder, ``image_path=`` for a cells ``.h5ad``); one the reader
    does not take raises ValueError naming it. Every reader takes ``fix=`` and
    ``alignment_check=`` (:mod:`diffst.io.alignment`); a ``.npz`` is checked only when
    ``alignment_check=True`` is passed.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "npz":
        genes = kw.pop("genes", None)
        fix, check = kw.pop("fix", None), kw.pop("alignment_check", None)
        if kw:
            flags = ", ".join(cli_flag(k) for k in sorted(kw))
            raise ValueError(f"{path}: {flags} does not apply to a diffst .npz, which stores "
                             "its image and positions; it takes only the position fixes "
                             f"({cli_flag('fix')}) and --no-alignment-check (Python: genes=, "
                             f"fix= and alignment_check=; got {sorted(kw)})")
        sample = load_npz(path)
        if fix is not None or check:
            sample = align_to_image(sample, fix, bool(check))
        return sample.select_genes(genes) if genes is not None else sample
    if fmt == "h5ad":
        from diffst.io.anndata_io import read_anndata

        return read_anndata(path, **_accepted(read_anndata, kw, path, fmt))
    if fmt == "xenium_cells_h5ad":
        from diffst.io.xenium import read_xenium_cells_h5ad

        image_path = kw.pop("image_path", None) or _sibling_image(path)
        kw = _accepted(read_xenium_cells_h5ad, kw, path, fmt)
        return read_xenium_cells_h5ad(path, image_path, **kw)
    if fmt == "spaceranger":
        from diffst.io.spaceranger import read_spaceranger

        return read_spaceranger(path, **_accepted(read_spaceranger, kw, path, fmt))
    if fmt == "visium_hd":
        from diffst.io.visium_hd import read_visium_hd

        if _BIN_DIR.match(path.name):
            kw.setdefault("bin_um", None)  # a square_XXXum folder names its own bin size

        return read_visium_hd(path, **_accepted(read_visium_hd, kw, path, fmt))
    if fmt == "istar":
        from diffst.io.istar import read_istar

        return read_istar(path, **_accepted(read_istar, kw, path, fmt))
    if fmt == "spatialdata":
        from diffst.io.spatialdata_io import (
            anndata_options,
            read_spatialdata,
            spatialdata_to_sample,
        )

        kw = _accepted(spatialdata_to_sample, kw, path, fmt, anndata_options())
        return read_spatialdata(path, **kw)
    if fmt == "xenium":
        from diffst.io.xenium import read_xenium

        kw = _accepted(read_xenium, kw, path, fmt)
        return read_xenium(path.parent if path.is_file() else path, **kw)
    from diffst.io.legacy_st import read_legacy_st

    extra = ("section",) if path.is_dir() else ()
    return _read_legacy(path, **_accepted(read_legacy_st, kw, path, fmt, extra))


def cli_flag(keyword: str) -> str:
    """The ``diffst`` option of a reader keyword, e.g. ``gene_key`` -> ``--gene-key``."""
    return CLI_FLAGS.get(keyword, "--" + keyword.replace("_", "-"))


def _accepted(reader: Any, kw: dict[str, Any], path: Path, fmt: str,
              extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``kw`` unchanged when ``reader`` takes every key; else a ValueError naming the others."""
    import inspect as pyinspect

    params = pyinspect.signature(reader).parameters
    known = [p for p in params if params[p].kind == params[p].KEYWORD_ONLY
             or params[p].default is not params[p].empty] + list(extra)
    unknown = sorted(k for k in kw if k not in known)
    if unknown:
        names = ", ".join(f"{cli_flag(k)} ({k}= in Python)" for k in unknown)
        flags = sorted({cli_flag(k) for k in known if k in KEYWORDS_WITH_FLAGS})
        raise ValueError(f"{path}: {names} does not apply to {fmt} data; options that do: "
                         f"{', '.join(flags)} (Python keywords: {', '.join(sorted(known))})")
    return kw


def _sibling_image(path: Path) -> Path:
    for suffix in _IMAGE_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: no image beside it (looked for {path.stem} + {', '.join(_IMAGE_SUFFIXES)}); "
        "pass the image with --image (image_path= in Python)"
    )


def _read_legacy(path: Path, **kw: Any) -> STSample:
    from diffst.io.legacy_st import read_her2st, read_legacy_st

    if path.is_file():
        suffix = next(s for s in _LEGACY_SUFFIXES if path.name.endswith(s))
        prefix = path.name[: -len(suffix)]
        kw.setdefault("name", prefix)
        return read_legacy_st(
            path, path.parent / f"{prefix}.spots.tsv", path.parent / f"{prefix}.HE.jpg", **kw
        )
    folder = path if _legacy_sections(path) else path / "outs"
    sections = _legacy_sections(folder)
    section = kw.pop("section", None)
    if section is None:
        if len(sections) > 1:
            raise ValueError(
                f"{folder} holds several ST sections ({', '.join(sections)}); choose one: give "
                f"its counts file (e.g. {folder / (sections[0] + '.counts.tsv.gz')}) or "
                f"--section {sections[0]} (Python: section={sections[0]!r})"
            )
        section = sections[0]
    elif section not in sections:
        raise FileNotFoundError(
            f"no section {section!r} in {folder} (found {', '.join(sections)})"
        )
    return read_her2st(folder, section, **kw)


# ---------------------------------------------------------------------------- inspection
def inspect_path(
    path: str | Path, overlay_png: str | Path | None = None, **read_kw: Any
) -> dict[str, Any]:
    """Read ``path`` and summarise it; optionally write an overlay PNG of the tissue cells.

    Space Ranger, Visium HD and AnnData inputs are read with ``n_top_genes=10`` (cheap) and
    ``make_unique=True`` (duplicate symbols are reported, not fatal) unless ``read_kw`` says
    otherwise. Warnings raised while reading are collected in ``info["warnings"]``.

    Returns:
        dict with ``path``, ``format``, ``name``, ``n_spots`` (tissue cells), ``n_genes`` (in
        the file), ``top_genes``, ``raster_shape`` ``[H, W]``, ``cell_um``, ``cell_um_xy``,
        ``image_size`` ``[W, H]`` px or None, ``image_um_per_px``, ``image_source``,
        ``px_per_cell``, ``fit_residual_cells``, ``on_tissue`` (fraction of tissue cells on
        stained tissue, from the alignment check; None without an image), ``position_fix``,
        ``notes``, ``warnings``, ``overlay_png``.
    """
    path = Path(path)
    fmt = detect_format(path)
    kw = dict(read_kw)
    if fmt in _CHEAP_READ and "genes" not in kw:
        kw.setdefault("n_top_genes", 10)
    if fmt in _CHEAP_READ:
        kw.setdefault("make_unique", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample = read_sample(path, **kw)
    meta = sample.meta
    info: dict[str, Any] = {
        "path": str(path),
        "format": fmt,
        "name": sample.name,
        "n_spots": int(sample.mask.sum()),
        "n_genes": int(meta.get("n_genes_in_file", sample.n_genes)),
        "top_genes": sample.top_genes(min(10, sample.n_genes)),
        "raster_shape": list(sample.shape),
        "cell_um": float(sample.cell_um),
        "cell_um_xy": meta.get("cell_um_xy"),
        "lattice": meta.get("lattice"),
        "image_size": None if sample.image is None else [sample.image.shape[1],
                                                         sample.image.shape[0]],
        "image_um_per_px": None if sample.image is None else float(sample.image_um_per_px),
        "image_source": meta.get("image_path"),
        "px_per_cell": float(sample.px_per_cell),
        "fit_residual_cells": meta.get("affine_rms_residual_cells"),
        "on_tissue": (meta.get("alignment") or {}).get("on_tissue"),
        "position_fix": meta.get("position_fix"),
        "notes": _notes(meta),
        "warnings": [str(w.message) for w in caught],
        "overlay_png": None,
    }
    if overlay_png is not None:
        info["overlay_png"] = str(write_overlay(sample, overlay_png))
    return info


def _notes(meta: dict[str, Any]) -> list[str]:
    notes = []
    if meta.get("duplicate_gene_symbols"):
        dups = meta["duplicate_gene_symbols"]
        notes.append(
            f"{len(dups)} duplicated gene symbol(s) ({', '.join(dups[:5])}"
            f"{', ...' if len(dups) > 5 else ''}): made unique here by appending -1, -2 "
            "(command line: --make-unique)"
        )
    if meta.get("merged_duplicate_genes"):
        notes.append(f"duplicate genes merged: {len(meta['merged_duplicate_genes'])}")
    if meta.get("dropped_feature_types"):
        notes.append(f"feature types left out: {', '.join(meta['dropped_feature_types'])}")
    return notes


def format_inspection(info: dict[str, Any]) -> str:
    """A human-readable multi-line summary of :func:`inspect_path`'s dict."""
    h, w = info["raster_shape"]
    cell = f"{info['cell_um']:.1f} µm"
    if info.get("cell_um_xy"):
        cx, cy = info["cell_um_xy"]
        cell += f" (equal-area square of {cx:.1f} x {cy:.1f} µm)"
    lines = [
        f"path:      {info['path']}",
        f"format:    {info['format']}",
        f"name:      {info['name']}",
        f"spots:     {info['n_spots']} tissue cells",
        f"genes:     {info['n_genes']} (most counted: {', '.join(info['top_genes'][:5])})",
        f"raster:    {h} x {w} cells of {cell}"
        + (f", {info['lattice']} lattice" if info.get("lattice") else ""),
    ]
    if info["image_size"] is None:
        lines.append("image:     none")
    else:
        iw, ih = info["image_size"]
        lines.append(
            f"image:     {iw} x {ih} px, {info['image_um_per_px']:.3g} µm/px, "
            f"{info['px_per_cell']:.1f} px per cell"
            + (f" ({info['image_source']})" if info.get("image_source") else "")
        )
    if info.get("fit_residual_cells") is not None:
        lines.append(f"alignment: rms spot-to-cell-centre offset {info['fit_residual_cells']:.2f} "
                     "cells")
    if info.get("on_tissue") is not None:
        lines.append(f"tissue:    {info['on_tissue']:.1%} of tissue cells lie on stained tissue "
                     "in the image")
    if info.get("position_fix"):
        lines.append(f"fix:       positions corrected ({info['position_fix'].get('options')})")
    lines += [f"note:      {n}" for n in info.get("notes", [])]
    lines += [f"warning:   {m}" for m in info.get("warnings", [])]
    if info.get("overlay_png"):
        lines.append(f"overlay:   {info['overlay_png']}")
    return "\n".join(lines)


def write_overlay(sample: STSample, path: str | Path, max_px: int = 2000) -> Path:
    """Draw the tissue cells' centres (circles) on the sample image and save a PNG.

    The image is scaled so its longest side is ``max_px`` (enlarged at most 4x); without an
    image the circles go on a white canvas covering the raster. Returns ``path``.
    """
    path = Path(path)
    centres = sample.cell_centres_px()[sample.mask]
    if sample.image is not None:
        h, w = sample.image.shape[:2]
        scale = min(MAX_UPSCALE, max_px / max(h, w))  # small images are enlarged for legibility
        if scale <= 1:
            canvas = Image.fromarray(downscale_image(sample.image, scale))
        else:
            canvas = Image.fromarray(sample.image).resize(
                (round(w * scale), round(h * scale)), Image.Resampling.BICUBIC
            )
        offset = np.zeros(2)
    else:
        corners = sample.cell_centres_px().reshape(-1, 2)
        lo = corners.min(axis=0) - sample.px_per_cell
        extent = corners.max(axis=0) + sample.px_per_cell - lo
        scale = max_px / max(extent)
        size = np.maximum(np.ceil(extent * scale).astype(int), 1)
        canvas = Image.new("RGB", (int(size[0]), int(size[1])), (255, 255, 255))
        offset = lo
    draw = ImageDraw.Draw(canvas)
    radius = max(1.5, 0.3 * sample.px_per_cell * scale)
    width = 1 if radius < 6 else 2
    for x, y in (centres - offset) * scale:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius),
                     outline=(0, 200, 255), width=width)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path

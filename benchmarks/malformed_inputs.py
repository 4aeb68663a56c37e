"""Build malformed copies of the real fixtures and report what diffst does with each.

Two parts, both written to ``benchmarks/results/malformed_inputs.md`` (``--out``):

1. **Alignment statistics.** Every real sample with an image (Space Ranger 3, scanpy v1,
   squidpy, HER2ST C2-C6, the Xenium cells fixture, the Xenium breast crop) is read as shipped
   and, in memory, corrupted the usual ways (positions x/y swapped; image mirrored or rotated).
   For each variant: the fraction of tissue cells on stained tissue as given, the best
   area-preserving correction (:data:`diffst.io.alignment.RIGID`) and what it would reach, and
   the verdict of :func:`diffst.io.alignment.clear_fix` (the thresholds were chosen from this
   table). Two further statistics were evaluated and are listed but not used: the Spearman
   correlation of per-cell total counts with the local stain density (optical density averaged
   over one cell) as given and for the best correction, and, where Space Ranger lists spots with
   ``in_tissue == 0``, the fraction of those on the tissue mask (low when aligned).
2. **Malformed files.** Every case is written to disk and read through the ``diffst inspect``
   command (in-process), the way a new user would. Outcomes: ``ok`` (read, exit 0), ``error``
   (a one-line named error, exit 1/2), ``traceback`` (an unhandled exception: a bug). A
   malformed case read with exit 0 and no warning is a silent misplacement.

Needs ``../shared/data``.

    python benchmarks/malformed_inputs.py            # about 2-3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from click.testing import CliRunner
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIX = DATA / "fixtures"
OUT = Path(__file__).resolve().parent / "results" / "malformed_inputs.md"
SECTIONS = ("C2", "C3", "C4", "C5", "C6")
# in-memory corruptions of an image (numpy.rot90 turns counter-clockwise) and the correction
# that undoes each (diffst.io.alignment.CANDIDATES)
IMAGE_EDITS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "image-flip-lr": (np.fliplr, "image mirrored left-right"),
    "image-flip-ud": (np.flipud, "image mirrored top-bottom"),
    "image-rot90": (np.rot90, "image rotated 90 degrees"),
    "image-rot180": (lambda a: np.rot90(a, 2), "image rotated 180 degrees"),
    "image-rot270": (lambda a: np.rot90(a, 3), "image rotated 270 degrees"),
}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def swap_columns(path: Path, a: str | int, b: str | int, sep: str = ",") -> None:
    """Exchange two columns (by name, or by position in a file without a header)."""
    header = None if isinstance(a, int) else "infer"
    df = pd.read_csv(path, sep=sep, header=header)
    df[[a, b]] = df[[b, a]].to_numpy()
    df.to_csv(path, sep=sep, index=False, header=header is not None)


def edit_image(path: Path, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    Image.fromarray(np.ascontiguousarray(fn(arr))).save(path)


def scale_json(path: Path, key: str, factor: float) -> None:
    sf = json.loads(path.read_text())
    sf[key] *= factor
    path.write_text(json.dumps(sf))


def corrupt_mtx(path: Path, value: str | None) -> None:
    data = path.read_bytes()
    if value is None:
        path.write_bytes(data[: len(data) // 2])
        return
    lines = gzip.decompress(data).decode().splitlines()
    lines[1000] = lines[1000].rsplit(" ", 1)[0] + f" {value}"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=1))


def cases(tmp: Path) -> list[tuple[str, Path, list[str], bool]]:
    """(name, path, extra CLI args, malformed?) after building each copy under ``tmp``."""
    out = []
    sr3, sq = FIX / "visium_spaceranger3", FIX / "visium_squidpy"

    def sr3_case(name: str, edit: Callable[[Path], None] | None, bad: bool = True) -> None:
        folder = copy(sr3, tmp / name)
        if edit is not None:
            edit(folder)
        out.append((f"spaceranger3 {name}", folder, ["--make-unique"], bad))

    low = "spatial/tissue_lowres_image.png"
    sr3_case("as-shipped", None, bad=False)
    sr3_case("pxl-swapped", lambda f: swap_columns(f / "spatial/tissue_positions.csv",
                                                   "pxl_row_in_fullres", "pxl_col_in_fullres"))
    for label, fn in [("flip-lr", np.fliplr), ("flip-ud", np.flipud), ("rot90", np.rot90),
                      ("rot180", lambda a: np.rot90(a, 2)), ("rot270", lambda a: np.rot90(a, 3)),
                      ("white", lambda a: np.full_like(a, 255)),
                      ("black", lambda a: np.zeros_like(a))]:
        sr3_case(f"image-{label}", lambda f, fn=fn: edit_image(f / low, fn))
    for factor in (0.1, 10.0):
        sr3_case(f"lowres-scalef-x{factor:g}", lambda f, k=factor: scale_json(
            f / "spatial/scalefactors_json.json", "tissue_lowres_scalef", k))
    mtx = "filtered_feature_bc_matrix/matrix.mtx.gz"
    sr3_case("mtx-non-integer", lambda f: corrupt_mtx(f / mtx, "2.5"))
    sr3_case("mtx-non-numeric", lambda f: corrupt_mtx(f / mtx, "abc"))
    sr3_case("mtx-truncated", lambda f: corrupt_mtx(f / mtx, None))

    folder = copy(sq, tmp / "squidpy")
    out.append(("squidpy blank-hires (skipped for lowres)", folder, [], False))
    out.append(("squidpy blank-hires forced", folder, ["--image", "hires"], True))

    # the tiny Visium fixtures: a crop that is mostly tissue (the relative rule's case)
    positions = "spatial/tissue_positions_list.csv"  # no header: column 4 row, 5 col
    for label, src in [("scanpy-v1", FIX / "visium_scanpy_v1"), ("squidpy", sq)]:
        if label == "scanpy-v1":
            out.append(("scanpy-v1 as-shipped", copy(src, tmp / label), [], False))
        edits: list[tuple[str, Callable[[Path], None]]] = [
            ("pxl-swapped", lambda f: swap_columns(f / positions, 4, 5))]
        edits += [(name, lambda f, fn=fn: edit_image(f / low, fn))
                  for name, (fn, _) in IMAGE_EDITS.items()]
        for name, edit in edits:
            folder = copy(src, tmp / f"{label}-{name}")
            edit(folder)
            out.append((f"{label} {name}", folder, [], True))

    if (DATA / "her2st").is_dir():
        her2st = [(sec, "as-shipped", None) for sec in SECTIONS]
        her2st += [("C2", "pixel-swapped", lambda f: swap_columns(
                       f / "C2.spots.tsv", "pixel_x", "pixel_y", sep="\t")),
                   ("C2", "image-flip-lr", lambda f: edit_image(f / "C2.HE.jpg", np.fliplr)),
                   ("C2", "image-rot180", lambda f: edit_image(
                       f / "C2.HE.jpg", lambda a: np.rot90(a, 2))),
                   ("C3", "image-flip-lr", lambda f: edit_image(f / "C3.HE.jpg", np.fliplr)),
                   ("C5", "image-rot90", lambda f: edit_image(f / "C5.HE.jpg", np.rot90))]
        for sec, name, edit in her2st:
            folder = tmp / f"her2st-{sec}-{name}"
            folder.mkdir()
            for suffix in ("counts.tsv.gz", "spots.tsv", "HE.jpg"):
                shutil.copy(DATA / "her2st" / f"{sec}.{suffix}", folder / f"{sec}.{suffix}")
            if edit is not None:
                edit(folder)
            out.append((f"her2st {sec} {name}", folder, ["--section", sec], edit is not None))

    xen = FIX / "xenium_cells_ncbi858"
    folder = copy(xen, tmp / "xenium")
    out.append(("xenium cells as-shipped", folder / "NCBI858.h5ad",
                ["--image-um-per-px", "2.7"], False))
    folder = copy(xen, tmp / "xenium-swapped")
    import anndata

    adata = anndata.read_h5ad(folder / "NCBI858.h5ad")
    adata.obs[["x_pixel", "y_pixel"]] = adata.obs[["y_pixel", "x_pixel"]].to_numpy()
    adata.write_h5ad(folder / "NCBI858.h5ad")
    out.append(("xenium cells axes-swapped", folder / "NCBI858.h5ad",
                ["--image-um-per-px", "2.7"], True))
    return out


# ---------------------------------------------------------------------------- statistics
def real_samples():
    """Yield ``(label, sample, off)`` for each real sample, read as shipped (no check).

    ``off``: image ``(x, y)`` of the spots Space Ranger lists with ``in_tissue == 0`` (None where
    the positions file lists none).
    """
    from diffst.io import read_sample
    from diffst.io.spaceranger import read_positions
    from diffst.io.xenium import read_xenium

    def spaceranger(label: str, folder: Path, **kw):
        sample = read_sample(folder, alignment_check=False, **kw)
        pos = read_positions(sample.meta["positions_path"])
        pos = pos[~pos["in_tissue"]]
        to_image = sample.affine @ np.linalg.inv(np.asarray(sample.meta["affine_fullres"]))
        xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
        off = (np.c_[xy, np.ones(len(xy))] @ to_image.T)[:, :2] if len(xy) else None
        return label, sample, off

    yield spaceranger("spaceranger3", FIX / "visium_spaceranger3", make_unique=True,
                      n_top_genes=2000)
    yield spaceranger("scanpy-v1", FIX / "visium_scanpy_v1")
    yield spaceranger("squidpy", FIX / "visium_squidpy")
    if (DATA / "her2st").is_dir():
        for sec in SECTIONS:
            yield f"her2st {sec}", read_sample(DATA / "her2st", section=sec,
                                               alignment_check=False), None
    yield "xenium cells", read_sample(FIX / "xenium_cells_ncbi858" / "NCBI858.h5ad",
                                      image_um_per_px=2.7, alignment_check=False), None
    crop = DATA / "xenium_breast_crop"
    if crop.is_dir():
        yield "xenium crop (DAPI)", read_xenium(
            crop, bin_um=8.0, morphology_image=crop / "morphology_dapi.tif",
            morphology_origin_um=(1062.0, 212.0), image_um_per_px=0.2125,
            work_um_per_px=1.0, alignment_check=False), None


def measure_variant(sample, off: np.ndarray | None, expected: str | None) -> dict:
    """The alignment statistics of one (possibly corrupted) sample."""
    from diffst.io.alignment import (
        CANDIDATES,
        MIN_ON_TISSUE,
        RIGID,
        _cell_points,
        _on_mask,
        _rank_corr,
        _ranks,
        _values_at,
        clear_fix,
        measure_alignment,
        stain_density,
        tissue_mask,
    )

    nuclear = str(sample.meta.get("image_kind", "")).startswith("fluorescence")
    xy = _cell_points(sample)
    rows, cols = np.nonzero(sample.mask)  # all cells: fewer than _cell_points' sampling limit
    totals = sample.expr.sum(axis=0, dtype=np.float64)[rows, cols]
    assert len(totals) == len(xy), "more cells than the check samples"
    report = measure_alignment(sample.image, xy, (2.0 if nuclear else 0.25) * sample.px_per_cell,
                               totals=totals, cell_px=sample.px_per_cell)
    best, best_frac = report.best(RIGID)
    found = clear_fix(report)
    if found is not None:
        verdict = f"refused ({found[2]}): '{found[0]}'"
        verdict += "" if expected is None or found[0] == expected else " WRONG FIX"
    elif report.on_tissue < MIN_ON_TISSUE:
        verdict = "refused, no fix named"
    else:
        verdict = "accepted"
    hw = sample.image.shape[:2]
    moves = {name: CANDIDATES[name].matrix(hw) for name in RIGID}
    # the counts~stain correlation for every sample (the check measures it from 1000 cells on)
    density, scale = stain_density(sample.image, sample.px_per_cell)
    ranks = _ranks(totals)
    pts = np.c_[xy, np.ones(len(xy))]
    rhos = {name: _rank_corr(ranks, _values_at(density, (pts @ m.T)[:, :2], scale))
            for name, m in moves.items()}
    row = {"given": report.on_tissue, "n": report.n_points, "best": best,
           "best_frac": best_frac, "verdict": verdict,
           "rho": _rank_corr(ranks, _values_at(density, xy, scale)),
           "rho_best": max(rhos.values()), "off_given": None, "off_best": None}
    if off is not None:
        mask, mscale = tissue_mask(sample.image)
        opts = np.c_[off, np.ones(len(off))]
        row["off_given"] = _on_mask(mask, off, mscale)
        row["off_best"] = min(_on_mask(mask, (opts @ m.T)[:, :2], mscale)
                              for m in moves.values())
    return row


def statistics_rows() -> list[tuple[str, str, dict]]:
    """``(sample, variant, statistics)`` for every real sample as shipped and corrupted."""
    from dataclasses import replace

    from diffst.io.alignment import PositionFix, apply_fix

    out = []
    for label, sample, off in real_samples():
        variants = [("as shipped", sample, off, None),
                    ("x/y swapped", apply_fix(sample, PositionFix(swap_xy=True)),
                     None if off is None else off[:, ::-1], "x/y swapped")]
        for name, (fn, fix) in IMAGE_EDITS.items():
            variants.append((name, replace(sample, image=np.ascontiguousarray(fn(sample.image))),
                             off, fix))
        for name, variant, variant_off, expected in variants:
            out.append((label, name, measure_variant(variant, variant_off, expected)))
            print(f"{label:20s} {name:14s} {out[-1][2]['verdict']}", flush=True)
    return out


def statistics_table(rows: list[tuple[str, str, dict]]) -> list[str]:
    lines = ["| sample | variant | cells | on tissue as given | best correction | on tissue "
             "if corrected | verdict | counts~stain rho as given | best rho if corrected | "
             "in_tissue=0 spots on tissue as given | min if corrected |",
             "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|"]
    for label, name, r in rows:
        off = ("-", "-") if r["off_given"] is None else (f"{r['off_given']:.1%}",
                                                         f"{r['off_best']:.1%}")
        lines.append(f"| {label} | {name} | {r['n']} | {r['given']:.1%} | {r['best']} | "
                     f"{r['best_frac']:.1%} | {r['verdict']} | {r['rho']:+.2f} | "
                     f"{r['rho_best']:+.2f} | {off[0]} | {off[1]} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="results file (Markdown)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    import diffst.io.imageio  # noqa: F401  (sets Pillow's size guard used when editing images)
    from diffst.cli import main as cli

    if not FIX.is_dir():
        print(f"needs the fixtures in {FIX}")
        return 1
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = statistics_rows()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, path, extra, bad in cases(tmp):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = CliRunner().invoke(cli, ["inspect", str(path), "--json", "--overlay",
                                               str(tmp / "o.png"), *extra])
            if res.exception is not None and not isinstance(res.exception, SystemExit):
                outcome, detail = "traceback", repr(res.exception)
            elif res.exit_code:
                outcome = "error"
                detail = res.output.strip().splitlines()[-1]
            else:
                info = json.loads(res.output)
                outcome = "ok"
                frac = info.get("on_tissue")
                detail = (f"on tissue {frac:.1%}" if frac is not None else "no image") + (
                    f"; {len(info['warnings'])} warning(s): {info['warnings'][0][:90]}"
                    if info["warnings"] else "")
            detail = detail.replace(str(tmp), "<tmp>")
            silent = bad and outcome == "ok" and "blank" not in detail
            rows.append((name, bad, outcome, silent, detail))
            print(f"{name:45s} {'malformed' if bad else 'valid':9s} {outcome:9s} {detail[:260]}")
    n_bad = sum(r[1] for r in rows)
    summary = (f"{len(rows)} cases ({n_bad} malformed): {sum(r[3] for r in rows)} silent "
               f"misplacements, {sum(r[2] == 'traceback' for r in rows)} tracebacks, "
               f"{sum((not r[1]) and r[2] != 'ok' for r in rows)} valid inputs refused")
    print(f"\n{summary} ({time.perf_counter() - t0:.0f} s in all)")
    if not args.no_write:
        lines = ["# Malformed inputs", "",
                 f"Written by `benchmarks/malformed_inputs.py` on {time.strftime('%Y-%m-%d')}.",
                 "", "## Alignment statistics", "",
                 "Each real sample as shipped and corrupted in memory. *On tissue*: tissue cells "
                 "whose centre lies on the H&E tissue mask (within a quarter cell; two cells on "
                 "the nuclear DAPI image). *Best correction*: the area-preserving candidate "
                 "(swap, flips, rotations) that puts most cells on tissue. *Verdict*: "
                 "`diffst.io.alignment.clear_fix` (absolute: below 75 % as given, or a "
                 "correction reaching 90 % and gaining 10 points; relative: a correction "
                 "gaining 3 points and 3 cells that leaves at most a quarter of the off-tissue "
                 "cells; counts: from 1000 cells, when a correction puts as many cells on "
                 "tissue, the Spearman correlation of per-cell total counts with the stain "
                 "density reaches 0.5 for a correction and beats the given one by 0.3). "
                 "*rho*: that correlation as given and the best over the corrections, shown "
                 "for every sample. Last two columns, evaluated and not used: the share of "
                 "the spots Space Ranger lists as `in_tissue == 0` that lie on the mask.", "",
                 *statistics_table(stats), "",
                 "## Malformed files read with `diffst inspect`", "",
                 "| case | input | outcome | detail |", "|---|---|---|---|"]
        lines += [f"| {name} | {'malformed' if bad else 'valid'} | {outcome} | "
                  f"{detail.replace('|', '/')} |" for name, bad, outcome, _, detail in rows]
        lines += ["", summary + ".", ""]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

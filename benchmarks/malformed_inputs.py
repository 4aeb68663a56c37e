"""Build malformed copies of the real fixtures and report what diffst does with each.

Every case is read through the ``diffst inspect`` command (in-process), the way a new user
would. Outcomes: ``ok`` (read, exit 0), ``error`` (a one-line named error, exit 1/2),
``traceback`` (an unhandled exception: a bug). A malformed case read with exit 0 and no warning
is a silent misplacement. Prints one line per case and a summary; needs ``../shared/data``.

    python benchmarks/malformed_inputs.py            # about 1-2 minutes on 2 CPU cores
"""

from __future__ import annotations

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


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def swap_columns(path: Path, a: str, b: str, sep: str = ",") -> None:
    df = pd.read_csv(path, sep=sep)
    df[[a, b]] = df[[b, a]].to_numpy()
    df.to_csv(path, sep=sep, index=False)


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

    if (DATA / "her2st").is_dir():
        for name, edit in [("as-shipped", None),
                           ("pixel-swapped", lambda f: swap_columns(
                               f / "C2.spots.tsv", "pixel_x", "pixel_y", sep="\t")),
                           ("image-flip-lr", lambda f: edit_image(f / "C2.HE.jpg", np.fliplr)),
                           ("image-rot180", lambda f: edit_image(
                               f / "C2.HE.jpg", lambda a: np.rot90(a, 2)))]:
            folder = tmp / f"her2st-{name}"
            folder.mkdir()
            for suffix in ("counts.tsv.gz", "spots.tsv", "HE.jpg"):
                shutil.copy(DATA / "her2st" / f"C2.{suffix}", folder / f"C2.{suffix}")
            if edit is not None:
                edit(folder)
            out.append((f"her2st C2 {name}", folder, ["--section", "C2"], edit is not None))

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


def main() -> int:
    import diffst.io.imageio  # noqa: F401  (sets Pillow's size guard used when editing images)
    from diffst.cli import main as cli

    if not FIX.is_dir():
        print(f"needs the fixtures in {FIX}")
        return 1
    t0 = time.perf_counter()
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
            silent = bad and outcome == "ok" and "blank" not in detail
            rows.append((name, bad, outcome, silent))
            print(f"{name:45s} {'malformed' if bad else 'valid':9s} {outcome:9s} {detail[:260]}")
    n_bad = sum(r[1] for r in rows)
    print(f"\n{len(rows)} cases ({n_bad} malformed) in {time.perf_counter() - t0:.0f} s: "
          f"{sum(r[3] for r in rows)} silent misplacements, "
          f"{sum(r[2] == 'traceback' for r in rows)} tracebacks, "
          f"{sum((not r[1]) and r[2] != 'ok' for r in rows)} valid inputs refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())

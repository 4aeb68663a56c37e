"""Malformed copies of the real fixtures: misalignment, blank and huge images, broken files.

Each case is built in ``tmp_path`` from ``../shared/data`` and must give a named error (or
warning) that says what was measured and which option fixes it.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from diffst.data.sample import SampleError
from diffst.io import read_sample
from diffst.io.alignment import (
    CANDIDATES,
    AlignmentError,
    AlignmentReport,
    PositionFix,
    align_to_image,
    blank_reason,
    clear_fix,
    measure_alignment,
)
from diffst.io.atomic import atomic_path, remove_stale_parts
from diffst.io.imageio import read_image
from diffst.io.spaceranger import read_mtx

FIX = SHARED_DATA / "fixtures"
SR3 = FIX / "visium_spaceranger3"
SQUIDPY = FIX / "visium_squidpy"
SCANPY_V1 = FIX / "visium_scanpy_v1"
XENIUM_CROP = SHARED_DATA / "xenium_breast_crop"
HER2ST = SHARED_DATA / "her2st"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (../shared/data is absent)")
    return path


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(need(src), dst)
    for p in dst.rglob("*"):  # the shared copy is read-only
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture
def sr3(tmp_path) -> Path:
    return copy_of(SR3, tmp_path / "sr3")


def read_sr3(folder: Path, **kw):
    return read_sample(folder, make_unique=True, n_top_genes=5, **kw)


def edit_lowres(folder: Path, fn) -> None:
    path = folder / "spatial" / "tissue_lowres_image.png"
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    Image.fromarray(np.ascontiguousarray(fn(arr))).save(path)


def edit_json(folder: Path, **scale) -> None:
    import json

    path = folder / "spatial" / "scalefactors_json.json"
    sf = json.loads(path.read_text())
    for key, factor in scale.items():
        sf[key] *= factor
    path.write_text(json.dumps(sf))


# ---------------------------------------------------------------------------- alignment
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_correct_fixture_passes_and_records_the_measurement(sr3):
    sample = read_sr3(sr3)
    assert sample.meta["alignment"]["on_tissue"] > 0.95
    assert sample.meta["alignment"]["candidates"]["x/y swapped"] < 0.8


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_swapped_pixel_columns_named_and_fixed(sr3):
    path = sr3 / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(path)
    cols = ["pxl_row_in_fullres", "pxl_col_in_fullres"]
    pos[cols] = pos[cols[::-1]].to_numpy()
    pos.to_csv(path, index=False)
    with pytest.raises(AlignmentError, match=r"(?s)\d+\.\d% of 2898 tissue cells.*as given, "
                       r"1?\d\d\.\d% if corrected for 'x/y swapped'.*pxl_row_in_fullres.*"
                       r"--swap-xy.*--no-alignment-check"):
        read_sr3(sr3)
    fixed = read_sr3(sr3, fix=PositionFix(swap_xy=True))
    assert fixed.meta["alignment"]["on_tissue"] > 0.95
    assert fixed.meta["position_fix"]["options"] == "--swap-xy"
    unchecked = read_sr3(sr3, alignment_check=False)  # the override reads it as given
    assert unchecked.meta["alignment"]["on_tissue"] < 0.8


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("transform, name, option, fix", [
    (np.fliplr, "mirrored left-right", "--flip x", PositionFix(flip="x")),
    (np.rot90, "rotated 90 degrees", "--rotate 90", PositionFix(rotate=90)),
    (lambda a: np.rot90(a, 3), "rotated 270 degrees", "--rotate 270", PositionFix(rotate=270)),
])
def test_flipped_or_rotated_image_named_and_fixed(sr3, transform, name, option, fix):
    edit_lowres(sr3, transform)
    with pytest.raises(AlignmentError, match=f"corrected for 'image {name}'.*pass {option} "):
        read_sr3(sr3)
    assert read_sr3(sr3, fix=fix).meta["alignment"]["on_tissue"] > 0.95


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("factor, name, scale", [(0.1, "10x too small", 10.0),
                                                  (10.0, "10x too large", 0.1)])
def test_scale_factor_off_by_ten_named_and_fixed(sr3, factor, name, scale):
    edit_json(sr3, tissue_lowres_scalef=factor)
    with pytest.raises(AlignmentError, match=f"(?s)scale factor\\) {name}.*tissue_lowres_scalef"
                       f".*--position-scale {scale:g}"):
        read_sr3(sr3)
    fixed = read_sr3(sr3, fix=PositionFix(scale=scale))
    assert fixed.meta["alignment"]["on_tissue"] > 0.95
    good = read_sr3(copy_of(SR3, sr3.parent / "good"))
    assert fixed.image_um_per_px == pytest.approx(good.image_um_per_px, rel=0.01)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_her2st_swapped_pixel_columns(tmp_path):
    root = need(HER2ST)
    for suffix in ("counts.tsv.gz", "spots.tsv", "HE.jpg"):
        shutil.copy(root / f"C2.{suffix}", tmp_path / f"C2.{suffix}")
    spots = pd.read_csv(tmp_path / "C2.spots.tsv", sep="\t")
    spots[["pixel_x", "pixel_y"]] = spots[["pixel_y", "pixel_x"]].to_numpy()
    spots.to_csv(tmp_path / "C2.spots.tsv", sep="\t", index=False)
    with pytest.raises(AlignmentError, match="x/y swapped.*pixel_x/pixel_y in C2.spots.tsv"):
        read_sample(tmp_path, section="C2", genes=["ERBB2"])
    fixed = read_sample(tmp_path, section="C2", genes=["ERBB2"], fix=PositionFix(swap_xy=True))
    assert fixed.meta["alignment"]["on_tissue"] > 0.95


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fixture", [SQUIDPY, SCANPY_V1], ids=["squidpy", "scanpy_v1"])
@pytest.mark.parametrize("edit, name, fix", [
    ("swap", "x/y swapped", PositionFix(swap_xy=True)),
    (np.fliplr, "image mirrored left-right", PositionFix(flip="x")),
    (np.flipud, "image mirrored top-bottom", PositionFix(flip="y")),
    (np.rot90, "image rotated 90 degrees", PositionFix(rotate=90)),
    (lambda a: np.rot90(a, 2), "image rotated 180 degrees", PositionFix(rotate=180)),
], ids=["swap", "flip-lr", "flip-ud", "rot90", "rot180"])
def test_tiny_crop_that_is_mostly_tissue_wrong_orientation_refused(tmp_path, fixture, edit, name,
                                                                   fix):
    """86-96 % of the 100 spots stay on tissue when wrong: the relative rule refuses them."""
    folder = copy_of(fixture, tmp_path / "visium")
    assert read_sample(folder).meta["alignment"]["on_tissue"] == 1.0  # as shipped: accepted
    if edit == "swap":
        path = folder / "spatial" / "tissue_positions_list.csv"  # no header
        pos = pd.read_csv(path, header=None)
        pos[[4, 5]] = pos[[5, 4]].to_numpy()
        pos.to_csv(path, header=False, index=False)
    else:
        edit_lowres(folder, edit)
    with pytest.raises(AlignmentError, match=(
            rf"(?s)9\d\.0% of 100 tissue cells .*as given, 100\.0% if corrected for '{name}' "
            rf"\(\d+ cells off tissue as given, 0 if corrected\).*pass {fix.options()} ")):
        read_sample(folder)
    assert read_sample(folder, fix=fix).meta["alignment"]["on_tissue"] == 1.0
    assert read_sample(folder, alignment_check=False).meta["alignment"]["on_tissue"] < 1.0


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("section", ["C3", "C4", "C5", "C6"])
def test_real_her2st_sections_pass_the_check(section):
    sample = read_sample(need(HER2ST), section=section, genes=["ERBB2"])
    assert sample.meta["alignment"]["on_tissue"] == 1.0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_real_xenium_crop_passes_although_shrinking_scores_higher():
    """The nuclear crop is tissue everywhere: positions shrunk 10x into a corner score 98.5 %."""
    from dataclasses import replace

    from diffst.io.xenium import read_xenium

    crop = need(XENIUM_CROP)
    sample = read_xenium(crop, bin_um=8.0, morphology_image=crop / "morphology_dapi.tif",
                         morphology_origin_um=(1062.0, 212.0), image_um_per_px=0.2125,
                         work_um_per_px=1.0)
    found = sample.meta["alignment"]
    assert 0.85 < found["on_tissue"] < 0.9 and found["outside_image"] < 0.1
    assert found["candidates"]["positions (scale factor) 10x too large"] > 0.95
    assert found["counts_stain_rho"] > 0.6  # transcripts follow the nuclei
    # mirrored, the image is still tissue everywhere: the counts name the mistake
    for edit, option in [(np.fliplr, "--flip x"), (lambda a: np.rot90(a, 2), "--rotate 180")]:
        wrong = replace(sample, image=np.ascontiguousarray(edit(sample.image)))
        with pytest.raises(AlignmentError, match=rf"(?s)Spearman \+0\.[0-2]\d as given, "
                           rf"\+0\.[6-9]\d if corrected.*pass {option} "):
            align_to_image(wrong)


def test_clear_fix_rules():
    scale_down = "positions (scale factor) 10x too large"

    def report(given, n=100, outside=0.0, **cands):
        names = {"swap": "x/y swapped", "flip": "image mirrored left-right",
                 "down": scale_down}
        full = {k: 0.0 for k in CANDIDATES}
        full.update({names[k]: v for k, v in cands.items()})
        return AlignmentReport(given, 0.4, n, candidates=full, outside=outside)

    # relative: 4 of 100 cells off as given, none if swapped
    assert clear_fix(report(0.96, swap=1.0)) == ("x/y swapped", 1.0, "relative")
    assert clear_fix(report(1.0, swap=0.96)) is None  # the correct data
    assert clear_fix(report(0.98, swap=1.0)) is None  # 2 cells: too few
    assert clear_fix(report(0.96, swap=0.985, n=1000)) is None  # 15 of 40 left: not a quarter
    assert clear_fix(report(0.886, swap=0.887)) is None  # a tie (uniform crop)
    # absolute: a gain of 10 points reaching 90 %
    assert clear_fix(report(0.84, flip=1.0)) == ("image mirrored left-right", 1.0, "absolute")
    # shrinking by 10 is named only for positions beyond the image
    assert clear_fix(report(0.886, down=0.985)) is None
    assert clear_fix(report(0.60, down=0.985)) is None
    assert clear_fix(report(0.0, outside=1.0, down=0.99)) == (scale_down, 0.99, "absolute")
    # counts: the mask cannot tell (a tie), the counts follow the stain only if flipped
    tied = report(0.886, n=3000, swap=0.887, flip=0.887)
    tied.rho, tied.rho_candidates = 0.05, {"x/y swapped": 0.2, "image mirrored left-right": 0.7}
    assert clear_fix(tied) == ("image mirrored left-right", 0.887, "counts")
    tied.rho = 0.45  # a gain below 0.3: accepted
    assert clear_fix(tied) is None
    clear = report(1.0, n=3000, swap=0.8)  # the mask tells: the counts are not asked
    clear.rho, clear.rho_candidates = 0.05, {"x/y swapped": 0.9}
    assert clear_fix(clear) is None
    everywhere = report(1.0, n=3000, swap=1.0)  # tissue fills the image: only counts tell
    everywhere.tissue_fraction = 0.99
    assert clear_fix(everywhere) is None
    everywhere.rho, everywhere.rho_candidates = 0.1, {"x/y swapped": 0.8}
    assert clear_fix(everywhere) == ("x/y swapped", 1.0, "counts")


def test_blank_hires_is_skipped_for_lowres_with_a_warning(tmp_path):
    folder = copy_of(SQUIDPY, tmp_path / "sq")
    with pytest.warns(UserWarning, match=r"tissue_hires_image\.png is blank .*grey level 0.*"
                      r"using the low-resolution image"):
        sample = read_sample(folder)
    assert sample.meta["image_kind"] == "lowres"
    with pytest.raises(AlignmentError, match=r"image is blank.*--no-alignment-check"):
        read_sample(folder, image="hires")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("value", [255, 0])
def test_white_or_black_only_image_is_refused(sr3, value):
    edit_lowres(sr3, lambda a: np.full_like(a, value))
    with pytest.raises(AlignmentError, match=f"image is blank .*grey level {value}"):
        read_sr3(sr3)
    with pytest.warns(UserWarning, match="image is blank"):
        read_sr3(sr3, alignment_check=False)


def test_measurement_on_a_synthetic_image():
    image = np.full((200, 300, 3), 245, np.uint8)
    image[50:150, 20:120] = (150, 60, 140)  # stained square on the left
    yy, xx = np.mgrid[60:140:10, 30:110:10]
    on = np.column_stack([xx.ravel(), yy.ravel()]).astype(float)
    report = measure_alignment(image, on, 2.0)
    assert report.on_tissue == 1.0 and 0.1 < report.tissue_fraction < 0.2
    assert report.candidates["image mirrored left-right"] == 0.0
    mirrored = np.column_stack([299 - on[:, 0], on[:, 1]])
    assert measure_alignment(image, mirrored, 2.0).best()[0] == "image mirrored left-right"
    assert blank_reason(image) is None
    assert "grey level 7" in blank_reason(np.full((50, 50, 3), 7, np.uint8))


def test_fix_matrices_map_as_documented():
    hw = (4, 6)  # H, W
    pts = np.array([[1.0, 2.0, 1.0]]).T  # x=1, y=2
    assert (PositionFix(swap_xy=True).matrix(hw) @ pts)[:2, 0].tolist() == [2, 1]
    assert (PositionFix(flip="x").matrix(hw) @ pts)[:2, 0].tolist() == [4, 2]
    assert (PositionFix(rotate=90).matrix(hw) @ pts)[:2, 0].tolist() == [2, 2]
    img = np.zeros((6, 4))  # 4 px wide, 6 high; numpy.rot90 makes it 6 wide, 4 high (= hw)
    img[2, 1] = 1  # x=1, y=2
    assert np.argwhere(np.rot90(img) == 1)[0].tolist() == [2, 2]  # (row, col): x=2, y=2
    assert (PositionFix(scale=10).matrix(hw) @ np.array([[-0.5, -0.5, 1]]).T)[:2, 0].tolist() \
        == [-0.5, -0.5]
    with pytest.raises(ValueError, match="rotate"):
        PositionFix(rotate=45)


def test_fix_needs_an_image(toy_sample):
    from dataclasses import replace

    with pytest.raises(ValueError, match="needs an image"):
        align_to_image(replace(toy_sample, image=None), PositionFix(swap_xy=True))


# ---------------------------------------------------------------------------- huge images
def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces ``width`` x ``height`` (no real pixel data: tiny file)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def test_huge_png_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFST_MAX_IMAGE_GB", raising=False)
    big = png_header(tmp_path / "big.png", 30000, 30000)
    with pytest.raises(ValueError, match=r"big\.png: reading this 30000x30000 px image needs "
                       r"about 10\.8 GB.*8 GB limit; read it at a coarser working resolution.*"
                       r"vips tiffsave in\.png out\.tif --tile --pyramid.*--max-image-gb"):
        read_image(big, scale=1.0)
    # reduced tenfold it would be decoded by strips (small memory): the fake data is named
    with pytest.raises(ValueError, match=r"big\.png: image data is truncated or corrupt"):
        read_image(big, scale=0.1)
    monkeypatch.setenv("DIFFST_MAX_IMAGE_GB", "0.5")
    small = png_header(tmp_path / "small.png", 8000, 8000)
    with pytest.raises(ValueError, match="0.5 GB limit"):
        read_image(small)
    bomb = png_header(tmp_path / "bomb.png", 100000, 100000)
    with pytest.raises(ValueError, match=r"bomb\.png: the image is too large to open safely"):
        read_image(bomb)


def write_big_png(path: Path, width: int, height: int) -> Path:
    """A mostly uniform RGB PNG (a cheap file), written row by row without the whole image.

    Background (240, 230, 245); the left quarter of the columns (60, 20, 90); rows in the
    middle third (200, 100, 150) across the full width.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    quarter = width // 4
    plain = b"\0" + bytes([60, 20, 90]) * quarter + bytes([240, 230, 245]) * (width - quarter)
    band = b"\0" + bytes([200, 100, 150]) * width
    comp = zlib.compressobj(1)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                    8, 2, 0, 0, 0)))
        for y in range(height):
            data = comp.compress(band if height // 3 <= y < 2 * height // 3 else plain)
            if data:
                fh.write(chunk(b"IDAT", data))
        fh.write(chunk(b"IDAT", comp.flush()) + chunk(b"IEND", b""))
    return path


def test_large_png_is_read_reduced_in_bounded_memory(tmp_path):
    """12000 x 9600 px: a full decode needs 346 MB for the pixels alone (1.4 GB estimated)."""
    import json
    import subprocess
    import sys

    big = write_big_png(tmp_path / "big.png", 12000, 9600)
    with pytest.raises(ValueError, match=r"big\.png: reading this 12000x9600 px image needs "
                       r"about 1\.4 GB.*0\.5 GB limit"):
        read_image(big, max_gb=0.5)
    script = (
        "import json, resource, sys\n"
        "import numpy as np\n"
        "from diffst.io.imageio import read_image\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "img = read_image(sys.argv[1], scale=1 / 16, max_gb=0.5)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "np.save(sys.argv[2], img)\n"
        "print(json.dumps({'extra_mb': (peak - base) / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(big), str(tmp_path / "img.npy")],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    extra_mb = json.loads(out.stdout.strip().splitlines()[-1])["extra_mb"]
    assert extra_mb < 200, extra_mb  # one strip (~64 MB) and the block sums
    img = np.load(tmp_path / "img.npy")
    assert img.shape == (600, 750, 3)
    assert img[100, 50].tolist() == [60, 20, 90] and img[100, 500].tolist() == [240, 230, 245]
    assert img[300, 50].tolist() == [200, 100, 150] == img[300, 700].tolist()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
@pytest.mark.parametrize("strip_bytes", [1 << 18, 1 << 21], ids=["rows<k", "rows=n*k"])
def test_png_read_by_strips_matches_a_full_decode(tmp_path, monkeypatch, mode, strip_bytes):
    import diffst.io.imageio as imageio

    yy, xx = np.mgrid[0:1003, 0:1201]
    img = np.stack([xx * 0.2, yy * 0.25, 128 + 100 * np.sin(xx / 40.0)], axis=2).astype(np.uint8)
    pil = Image.fromarray(img)
    (pil.quantize(64) if mode == "P" else pil.convert(mode)).save(tmp_path / "he.png")
    full = np.asarray(Image.open(tmp_path / "he.png").convert("RGB"))
    # 5 rows per strip (blocks of 9 rows span strips) or 36 (Pillow reduces each strip)
    monkeypatch.setattr(imageio, "PNG_STRIP_BYTES", strip_bytes)
    strips = list(imageio._png_strips(tmp_path / "he.png", 37))
    assert [y for y, _ in strips[:2]] == [0, 37]
    assert (np.concatenate([np.asarray(s) for _, s in strips]) == full).all()  # bit-exact
    out = read_image(tmp_path / "he.png", scale=0.1)
    assert out.shape == (100, 120, 3)
    diff = np.abs(out.astype(int) - imageio._resize_area(full, (100, 120)))
    # block granularity, as for a TIFF (the dithered palette image is grainier)
    assert diff.max() <= (3 if mode != "P" else 20) and diff.mean() < 1.0


def test_huge_sparse_tiff_refused_and_jpeg_read_reduced(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "big.tif", shape=(60000, 60000, 3), dtype=np.uint8)  # sparse
    with pytest.raises(ValueError, match=r"big\.tif: reading this 60000x60000 px image"):
        read_image(tmp_path / "big.tif", scale=0.05)
    jpg = tmp_path / "he.jpg"
    Image.fromarray(np.full((4000, 4000, 3), 200, np.uint8)).save(jpg)
    # 48 MB decoded at full size, 0.75 MB via the 1/8 DCT draft: the draft fits a 10 MB limit
    assert read_image(jpg, scale=0.125, max_gb=0.01).shape == (500, 500, 3)
    with pytest.raises(ValueError, match="limit"):
        read_image(jpg, scale=1.0, max_gb=0.01)


@pytest.mark.parametrize("layout", [dict(rowsperstrip=16), dict(tile=(64, 64), compression="zlib")])
def test_large_tiff_is_decoded_strip_by_strip(tmp_path, layout):
    import tifffile

    from diffst.io.imageio import READ_BUFFER, _resize_area, decode_estimate

    yy, xx = np.mgrid[0:1003, 0:1201]
    img = np.stack([xx * 0.2, yy * 0.25, 128 + 100 * np.sin(xx / 40.0)], axis=2).astype(np.uint8)
    tifffile.imwrite(tmp_path / "he.tif", img, **layout)
    out = read_image(tmp_path / "he.tif", scale=0.1)
    assert out.shape == (100, 120, 3)
    diff = np.abs(out.astype(int) - _resize_area(img, (100, 120)))  # vs a full decode
    assert diff.max() <= 3 and diff.mean() < 1.0  # block granularity: about one grey level
    hw, need = decode_estimate(tmp_path / "he.tif", (100, 120))
    # one strip or tile plus block sums (and the read buffer): far less than a full decode
    assert hw == (101, 121) and need - READ_BUFFER < 1003 * 1201 * 3


# ---------------------------------------------------------------------------- broken files
def write_gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", compresslevel=1) as fh:
        fh.write("\n".join(lines) + "\n")


@pytest.fixture
def mtx_lines() -> list[str]:
    return ["%%MatrixMarket matrix coordinate integer general", "% comment", "3 2 3",
            "1 1 4", "2 1 1", "3 2 7"]


def test_read_mtx_matches_the_entries(tmp_path, mtx_lines):
    write_gz(tmp_path / "m.mtx.gz", mtx_lines)
    assert read_mtx(tmp_path / "m.mtx.gz").toarray().tolist() == [[4, 0], [1, 0], [0, 7]]
    write_gz(tmp_path / "short.mtx.gz", mtx_lines[:-1])
    with pytest.raises(SampleError, match="announces 3 entries of 3 columns, the file has 2 rows"):
        read_mtx(tmp_path / "short.mtx.gz")


@pytest.mark.parametrize("line, message", [
    ("2 1 abc", r"m\.mtx\.gz: line 5: invalid value 'abc'"),
    ("2 9 1", r"line 5: invalid column index.*3 x 2"),
    ("2 1", r"line 5: invalid value missing \(too few fields\)"),
    ("2 1 1 1", r"cannot read as a Matrix Market file.*Expected 3 fields"),
])
def test_bad_mtx_entries_are_named(tmp_path, mtx_lines, line, message):
    mtx_lines[4] = line
    write_gz(tmp_path / "m.mtx.gz", mtx_lines)
    with pytest.raises(SampleError, match=message):
        read_mtx(tmp_path / "m.mtx.gz")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupt_and_truncated_spaceranger_matrix(sr3):
    mtx = sr3 / "filtered_feature_bc_matrix" / "matrix.mtx.gz"
    with gzip.open(mtx, "rt") as fh:
        lines = fh.read().splitlines()
    lines[5000] = lines[5000].rsplit(" ", 1)[0] + " 2.5"
    write_gz(mtx, lines)
    with pytest.raises(SampleError, match=r"non-integer value.*2\.5"):
        read_sr3(sr3)
    lines[5000] = lines[5000].rsplit(" ", 1)[0] + " x1"
    write_gz(mtx, lines)
    with pytest.raises(SampleError, match=r"matrix\.mtx\.gz: line 5001: invalid value 'x1'"):
        read_sr3(sr3)
    data = mtx.read_bytes()
    mtx.write_bytes(data[: len(data) // 3])
    with pytest.raises(SampleError, match=r"matrix\.mtx\.gz: the file is truncated"):
        read_sr3(sr3)


def test_truncated_and_empty_legacy_counts(tmp_path):
    root = need(HER2ST)
    for suffix in ("spots.tsv", "HE.jpg"):
        shutil.copy(root / f"C2.{suffix}", tmp_path / f"C2.{suffix}")
    data = (root / "C2.counts.tsv.gz").read_bytes()
    (tmp_path / "C2.counts.tsv.gz").write_bytes(data[:20000])
    with pytest.raises(SampleError, match=r"C2\.counts\.tsv\.gz: the file is truncated"):
        read_sample(tmp_path / "C2.counts.tsv.gz")
    (tmp_path / "C2.counts.tsv.gz").unlink()
    (tmp_path / "C2.counts.tsv").write_text("")
    with pytest.raises(SampleError, match=r"C2\.counts\.tsv: the counts table is empty"):
        read_sample(tmp_path / "C2.counts.tsv")


def test_model_file_missing_keys(tmp_path):
    from diffst.infer import load_model
    from diffst.train import MODEL_FORMAT

    torch.save({"format": MODEL_FORMAT, "genes": ["A"]}, tmp_path / "m.pt")
    with pytest.raises(SampleError, match=r"m\.pt: the diffst.model/2 file lacks "
                       r"\['model_config', 'state_dict'"):
        load_model(tmp_path / "m.pt")


def test_unknown_reader_option_is_named(sr3):
    with pytest.raises(ValueError, match=r"--section \(section= in Python\) does not apply "
                       "to spaceranger data"):
        read_sample(sr3, section="C2")


# ---------------------------------------------------------------------------- atomic writes
def test_stale_part_files_of_dead_writers_are_removed(tmp_path):
    target = tmp_path / "out.npz"
    dead = tmp_path / ".out.npz.999999999.abcd.part"  # no such process
    mine = tmp_path / f".out.npz.{os.getpid()}.efgh.part"  # a live writer: kept
    other = tmp_path / ".other.npz.999999999.x.part"  # another file's: kept
    for p in (dead, mine, other):
        p.write_bytes(b"half")
    with atomic_path(target) as tmp:
        assert f".out.npz.{os.getpid()}." in tmp.name
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    assert not dead.exists() and mine.exists() and other.exists()
    assert remove_stale_parts(target) == []

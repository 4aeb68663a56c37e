"""Space Ranger (Visium), Visium HD, format detection and inspection.

Real layouts come from ../shared/data/fixtures (skipped when absent); Visium HD folders and
corrupted copies are written to tmp_path. The Space Ranger 3.0 matrix (19k genes x 2.9k spots)
is read once per module. Runtime: about 10 s.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from PIL import Image

from diffst.data.lr import pool_sum
from diffst.data.sample import SampleError, STSample
from diffst.io import (
    detect_format,
    format_inspection,
    inspect_path,
    read_sample,
    read_spaceranger,
    read_visium_hd,
)
from diffst.io.counts import (
    check_counts,
    check_unique,
    make_unique,
    place_counts,
    select_gene_columns,
)
from diffst.io.spaceranger import hex_raster_index, read_10x_matrix

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fixtures"
SQUIDPY = FIXTURES / "visium_squidpy"
SCANPY_V1 = FIXTURES / "visium_scanpy_v1"
SR3 = FIXTURES / "visium_spaceranger3"


def need(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"fixture {folder} is not available (../shared/data is absent)")
    return folder


def writable_copy(src: Path, dst: Path) -> Path:
    """Copy a read-only fixture folder and make the copy writable."""
    shutil.copytree(src, dst, copy_function=shutil.copyfile)
    for root, dirs, files in os.walk(dst):
        for name in dirs + files:
            p = Path(root) / name
            p.chmod(p.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
    Path(dst).chmod(0o755)
    return dst


def v1_positions(folder: Path) -> pd.DataFrame:
    cols = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row", "pxl_col"]
    return pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None,
                       names=cols).set_index("barcode")


def h5_dense(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """(spots, genes) dense counts, barcodes and gene names straight from a 10x h5."""
    with h5py.File(path, "r") as fh:
        g = fh["matrix"]
        shape = tuple(g["shape"][:])
        mat = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=shape)
        bcs = [b.decode() for b in g["barcodes"][:]]
        names = [b.decode() for b in g["features/name"][:]]
    return mat.T.toarray(), bcs, names


def replace_h5(path: Path, key: str, values) -> None:
    with h5py.File(path, "r+") as fh:
        del fh[key]
        fh.create_dataset(key, data=values)


def read_quietly(folder, **kw) -> STSample:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_spaceranger(folder, **kw)


@pytest.fixture(scope="module")
def sr3():
    need(SR3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample = read_spaceranger(SR3, make_unique=True)
    return sample, [str(w.message) for w in caught]


@pytest.fixture
def squidpy_copy(tmp_path) -> Path:
    return writable_copy(need(SQUIDPY), tmp_path / "visium")


# ---------------------------------------------------------------------------- counts helpers
def test_check_counts_names_file_and_problem():
    good = sp.csr_matrix(np.array([[0, 2], [3, 0]], dtype=np.float64))
    check_counts(good, "m.h5")
    for bad, word in [(np.nan, "NaN"), (-1.0, "negative"), (0.5, "non-integer")]:
        m = good.copy()
        m.data[0] = bad
        with pytest.raises(SampleError, match=word) as err:
            check_counts(m, "m.h5")
        assert "m.h5" in str(err.value)
    frac = good.copy()
    frac.data[0] = 0.5
    check_counts(frac, "m.h5", require_integer=False)


def test_unique_and_gene_selection_helpers():
    with pytest.raises(SampleError, match=r"'A'.*gene_key='id'"):
        check_unique(["A", "B", "A"], "f.h5", "gene name", "use gene_key='id'")
    assert make_unique(["A", "B", "A", "A", "A-1"]) == ["A", "B", "A-2", "A-3", "A-1"]
    assert select_gene_columns(["a", "Gapdh", "c"], ["c", "a"], "f") == [2, 0]
    with pytest.raises(SampleError, match=r"f\.h5.*'GAPDH' \(did you mean 'Gapdh'\?\)"):
        select_gene_columns(["a", "Gapdh"], ["GAPDH"], "f.h5")


def test_place_counts_refuses_two_spots_in_one_cell():
    m = np.ones((2, 3))
    expr, mask = place_counts(sp.csr_matrix(m), np.array([0, 1]), np.array([1, 1]), (2, 2), "p")
    assert expr.shape == (3, 2, 2) and mask.sum() == 2 and expr[:, :, 0].sum() == 0
    with pytest.raises(SampleError, match="more than one spot"):
        place_counts(m, np.array([0, 0]), np.array([1, 1]), (2, 2), "p")


def test_hex_index_maps_visium_parity_one_to_one():
    rows, cols, shifted = hex_raster_index(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 3]), "p")
    assert cols.tolist() == [0, 1, 0, 1] and shifted.tolist() == [False, False, True, True]
    with pytest.raises(SampleError, match="not a Visium hexagonal grid"):
        hex_raster_index(np.array([0, 0]), np.array([0, 1]), "p")


# ---------------------------------------------------------------------------- Space Ranger v1
def test_v1_counts_land_in_the_documented_cells():
    folder = need(SQUIDPY)
    sample = read_spaceranger(folder)
    dense, bcs, names = h5_dense(folder / "filtered_feature_bc_matrix.h5")
    pos = v1_positions(folder).loc[bcs]
    r0, c0 = sample.meta["raster_origin"]
    rows = pos["array_row"].to_numpy() - r0
    cols = pos["array_col"].to_numpy() // 2 - c0
    assert sample.genes == names
    assert sample.mask.sum() == len(bcs) == 100
    np.testing.assert_array_equal(sample.expr[:, rows, cols].T, dense.astype(np.float32))
    assert sample.expr.sum() == pytest.approx(dense.sum())
    assert sample.mask[rows, cols].all()


def test_v1_geometry_pitch_cell_size_and_affine():
    folder = need(SQUIDPY)
    # the fixture's hires PNG is blank: ask for it explicitly, without the alignment check
    sample = read_spaceranger(folder, image="hires", alignment_check=False)
    sf = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    pos = v1_positions(folder)
    # independent pitch: spots two array columns apart in one row are 100 µm apart
    full = v1_positions(SCANPY_V1) if SCANPY_V1.is_dir() else pos
    row0 = full[full["array_row"] == full["array_row"].iloc[0]].sort_values("array_col")
    pitch_px = np.median(np.diff(row0["pxl_col"].to_numpy()) / np.diff(row0["array_col"]) * 2)
    assert sample.meta["um_per_px_fullres"] == pytest.approx(100 / pitch_px, rel=0.01)
    assert sample.image_um_per_px == pytest.approx(
        sample.meta["um_per_px_fullres"] / sf["tissue_hires_scalef"], rel=1e-6
    )
    assert sample.cell_um == pytest.approx(np.sqrt(100 * 100 * np.sqrt(3) / 2), rel=0.01)
    assert sample.cell_um == pytest.approx(sample.px_per_cell * sample.image_um_per_px, rel=1e-9)
    assert sample.image.shape == (2000, 2000, 3) and sample.meta["image_kind"] == "hires"
    # every spot lies a quarter cell (+-1 px) from its cell centre, along the rows
    r0, c0 = sample.meta["raster_origin"]
    rows = pos["array_row"].to_numpy() - r0
    cols = pos["array_col"].to_numpy() // 2 - c0
    centres = sample.cell_centres_px()[rows, cols]
    spots = pos[["pxl_col", "pxl_row"]].to_numpy() * sf["tissue_hires_scalef"]
    off = np.hypot(*(centres - spots).T)
    col_px = np.hypot(*sample.affine[:2, 0])
    assert np.all(np.abs(off - 0.25 * col_px) < 1.0)


def test_v1_partial_matrix_warns_and_lowres_is_scaled_version():
    folder = need(SCANPY_V1)
    with pytest.warns(UserWarning, match="4135 in-tissue spot.*not filled with zeros"):
        hires = read_spaceranger(folder, image="hires", alignment_check=False)  # blank PNG
    low = read_spaceranger(need(SQUIDPY), image="lowres")
    sf = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    ratio = sf["tissue_lowres_scalef"] / sf["tissue_hires_scalef"]
    assert low.image.shape == (600, 600, 3)
    np.testing.assert_allclose(low.affine, np.diag([ratio, ratio, 1]) @ hires.affine, atol=1e-6)
    assert hires.mask.sum() == 100


def test_genes_selection_and_unknown_genes():
    folder = need(SQUIDPY)
    _, _, names = h5_dense(folder / "filtered_feature_bc_matrix.h5")
    picked = [names[5], names[1]]
    sample = read_spaceranger(folder, genes=picked)
    full = read_spaceranger(folder)
    assert sample.genes == picked
    np.testing.assert_array_equal(sample.expr, full.expr[[5, 1]])
    top = read_spaceranger(folder, n_top_genes=3)
    totals = full.expr[:, full.mask].sum(axis=1)
    assert set(top.genes) == {full.genes[i] for i in np.argsort(-totals, kind="stable")[:3]}
    with pytest.raises(SampleError, match=r"filtered_feature_bc_matrix\.h5.*'NOT_A_GENE'"):
        read_spaceranger(folder, genes=["NOT_A_GENE"])


def test_fullres_image_must_match_the_scale_factors():
    folder = need(SQUIDPY)
    with pytest.raises(SampleError, match="full-resolution") as err:
        read_spaceranger(folder, image=folder / "test_img.jpg")
    assert "test_img.jpg" in str(err.value)


# ---------------------------------------------------------------------------- Space Ranger 3.0
def test_spaceranger3_falls_back_to_lowres_with_a_clear_message(sr3):
    sample, messages = sr3
    assert any("tissue_hires_image.png is missing" in m and "tissue_lowres_image.png" in m
               for m in messages)
    assert sample.meta["image_kind"] == "lowres" and sample.image.shape == (600, 600, 3)
    assert sample.mask.sum() == 2898 and sample.n_genes == 19465
    sample.check_alignment()


def test_spaceranger3_counts_match_matrix_market(sr3):
    sample, _ = sr3
    mtx = SR3 / "filtered_feature_bc_matrix"
    with gzip.open(mtx / "matrix.mtx.gz", "rb") as fh:
        mat = sp.csc_matrix(scipy.io.mmread(fh))
    assert sample.expr.sum() == pytest.approx(mat.sum())
    bcs = pd.read_csv(mtx / "barcodes.tsv.gz", header=None)[0].tolist()
    pos = pd.read_csv(SR3 / "spatial" / "tissue_positions.csv").set_index("barcode").loc[bcs]
    r0, c0 = sample.meta["raster_origin"]
    j = 123
    cell = sample.expr[:, pos["array_row"].iloc[j] - r0, pos["array_col"].iloc[j] // 2 - c0]
    np.testing.assert_array_equal(cell, mat[:, j].toarray().ravel())
    assert "Aldoa" in sample.meta["duplicate_gene_symbols"] and "Aldoa-1" in sample.genes


def test_spaceranger3_duplicate_symbols_raise_without_make_unique():
    need(SR3)
    with pytest.raises(SampleError, match=r"features|matrix") as err:
        read_10x_matrix(SR3 / "filtered_feature_bc_matrix")
    msg = str(err.value)
    assert "Aldoa" in msg and "gene_key='id'" in msg and "make_unique" in msg
    ids = read_10x_matrix(SR3 / "filtered_feature_bc_matrix", gene_key="id")
    assert ids.genes[0].startswith("ENSMUSG") and len(set(ids.genes)) == 19465


def test_spaceranger3_explicit_hires_is_missing():
    need(SR3)
    with pytest.raises(FileNotFoundError, match=r"tissue_hires_image\.png.*image='lowres'"):
        read_spaceranger(SR3, image="hires", genes=["Sox11"])


def test_spaceranger3_fullres_image_path():
    need(SR3)
    sample = read_spaceranger(SR3, image="spatial/detected_tissue_image.jpg", genes=["Sox11"],
                              gene_key="name", make_unique=True, work_um_per_px=None)
    assert sample.image.shape == (3000, 3000, 3) and sample.meta["image_kind"] == "fullres"
    assert sample.image_um_per_px == pytest.approx(sample.meta["um_per_px_fullres"])


# ---------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "relpath, folder",
    [
        ("filtered_feature_bc_matrix.h5", "."),
        ("spatial/tissue_positions_list.csv", "spatial"),
        ("spatial/scalefactors_json.json", "spatial"),
    ],
)
def test_missing_files_are_named(squidpy_copy, relpath, folder):
    (squidpy_copy / relpath).unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_spaceranger(squidpy_copy)
    msg = str(err.value)
    assert Path(relpath).name in msg and str((squidpy_copy / folder).resolve()) in msg


def test_missing_images_are_named(squidpy_copy):
    for f in ("tissue_hires_image.png", "tissue_lowres_image.png"):
        (squidpy_copy / "spatial" / f).unlink()
    with pytest.raises(FileNotFoundError, match=r"tissue_hires_image\.png.*image=PATH"):
        read_spaceranger(squidpy_copy)


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (-3.0, "negative"), (1.5, "non-integer")])
def test_bad_count_values(squidpy_copy, bad, word):
    h5 = squidpy_copy / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r") as fh:
        data = fh["matrix/data"][:]
    data[7] = bad
    replace_h5(h5, "matrix/data", data)
    with pytest.raises(SampleError, match=word) as err:
        read_spaceranger(squidpy_copy)
    assert str(h5) in str(err.value)


def test_duplicate_barcode_in_matrix(squidpy_copy):
    h5 = squidpy_copy / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5, "r") as fh:
        bcs = fh["matrix/barcodes"][:]
    bcs[1] = bcs[0]
    replace_h5(h5, "matrix/barcodes", bcs)
    with pytest.raises(SampleError, match=r"filtered_feature_bc_matrix\.h5.*duplicated barcode"):
        read_spaceranger(squidpy_copy)


def test_duplicate_barcode_in_positions(squidpy_copy):
    csv = squidpy_copy / "spatial" / "tissue_positions_list.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(SampleError, match=r"tissue_positions_list\.csv.*duplicated barcode"):
        read_spaceranger(squidpy_copy)


def test_matrix_barcodes_missing_from_positions(squidpy_copy):
    csv = squidpy_copy / "spatial" / "tissue_positions_list.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(SampleError, match="different runs"):
        read_spaceranger(squidpy_copy)


def test_empty_tissue_mask(squidpy_copy):
    csv = squidpy_copy / "spatial" / "tissue_positions_list.csv"
    df = pd.read_csv(csv, header=None)
    df[1] = 0
    df.to_csv(csv, header=False, index=False)
    with pytest.raises(SampleError, match=r"tissue_positions_list\.csv.*in_tissue == 1"):
        read_quietly(squidpy_copy)


def test_positions_off_the_array_grid(squidpy_copy):
    csv = squidpy_copy / "spatial" / "tissue_positions_list.csv"
    df = pd.read_csv(csv, header=None)
    df.loc[0, [4, 5]] = df.loc[1, [4, 5]].to_numpy() + 500  # a spot far from its array position
    df.to_csv(csv, header=False, index=False)
    with pytest.raises(SampleError, match=r"tissue_positions_list\.csv.*do not follow the array"):
        read_spaceranger(squidpy_copy)


def set_scalefactors(folder: Path, **changes) -> None:
    path = folder / "spatial" / "scalefactors_json.json"
    sf = json.loads(path.read_text())
    sf.update(changes)
    path.write_text(json.dumps(sf))


def test_hires_scale_factor_contradicting_lowres(squidpy_copy):
    set_scalefactors(squidpy_copy, tissue_hires_scalef=0.3)
    with pytest.raises(SampleError, match=r"scalefactors_json\.json.*contradict the image sizes"):
        read_spaceranger(squidpy_copy)


def test_scale_factors_putting_spots_outside_the_image(squidpy_copy):
    set_scalefactors(squidpy_copy, tissue_hires_scalef=0.3, tissue_lowres_scalef=0.09)
    with pytest.raises(SampleError, match=r"tissue_hires_image\.png.*outside.*scale factor"):
        read_spaceranger(squidpy_copy, image="hires")


def test_spot_diameter_contradicting_positions(squidpy_copy):
    set_scalefactors(squidpy_copy, spot_diameter_fullres=300.0)
    with pytest.raises(SampleError, match="spot_diameter_fullres"):
        read_spaceranger(squidpy_copy)


def test_wrong_hires_image(squidpy_copy):
    hires = squidpy_copy / "spatial" / "tissue_hires_image.png"
    Image.new("RGB", (1000, 1000), (200, 100, 150)).save(hires)
    with pytest.raises(SampleError, match="contradict the image sizes"):
        read_spaceranger(squidpy_copy)
    (squidpy_copy / "spatial" / "tissue_lowres_image.png").unlink()
    with pytest.raises(SampleError, match=r"tissue_hires_image\.png: \d+ of 100 tissue spots"):
        read_spaceranger(squidpy_copy)


def test_v2_csv_and_parquet_positions_match_v1(squidpy_copy):
    ref = read_spaceranger(squidpy_copy)
    spatial = squidpy_copy / "spatial"
    df = pd.read_csv(spatial / "tissue_positions_list.csv", header=None)
    df.columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                  "pxl_col_in_fullres"]
    (spatial / "tissue_positions_list.csv").unlink()
    df.to_csv(spatial / "tissue_positions.csv", index=False)
    v2 = read_spaceranger(squidpy_copy)
    df.to_parquet(spatial / "tissue_positions.parquet")
    pq = read_spaceranger(squidpy_copy)
    assert pq.meta["positions_path"].endswith("tissue_positions.parquet")
    for other in (v2, pq):
        np.testing.assert_array_equal(other.expr, ref.expr)
        np.testing.assert_allclose(other.affine, ref.affine)


def test_matrix_market_folder_matches_h5(squidpy_copy):
    ref = read_spaceranger(squidpy_copy)
    h5 = squidpy_copy / "filtered_feature_bc_matrix.h5"
    dense, bcs, names = h5_dense(h5)
    mtx = squidpy_copy / "filtered_feature_bc_matrix"
    mtx.mkdir()
    with gzip.open(mtx / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.coo_matrix(dense.T.astype(np.int64)))
    pd.DataFrame({"id": [f"ID{i}" for i in range(len(names))], "name": names,
                  "type": "Gene Expression"}).to_csv(mtx / "features.tsv.gz", sep="\t",
                                                      header=False, index=False)
    pd.Series(bcs).to_csv(mtx / "barcodes.tsv.gz", header=False, index=False)
    h5.rename(squidpy_copy / "raw_feature_bc_matrix.h5")
    back = read_spaceranger(squidpy_copy)
    np.testing.assert_array_equal(back.expr, ref.expr)
    assert back.genes == ref.genes
    (mtx / "barcodes.tsv.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"barcodes.*filtered_feature_bc_matrix"):
        read_spaceranger(squidpy_copy)
    shutil.rmtree(mtx)
    with pytest.raises(FileNotFoundError, match="matrix='raw'"):
        read_spaceranger(squidpy_copy)
    assert read_quietly(squidpy_copy, matrix="raw").mask.sum() == 100


# ---------------------------------------------------------------------------- Visium HD
def write_10x_h5(path: Path, counts: np.ndarray, barcodes: list[str], genes: list[str]) -> None:
    """Write (spots, genes) counts in the 10x feature-barcode HDF5 layout."""
    csc = sp.csc_matrix(counts.T)  # genes x barcodes
    with h5py.File(path, "w") as fh:
        g = fh.create_group("matrix")
        g["data"] = csc.data.astype(np.int32)
        g["indices"] = csc.indices.astype(np.int64)
        g["indptr"] = csc.indptr.astype(np.int64)
        g["shape"] = np.array(csc.shape, dtype=np.int32)
        g["barcodes"] = np.array(barcodes, dtype="S")
        f = g.create_group("features")
        f["name"] = np.array(genes, dtype="S")
        f["id"] = np.array([f"ENSG{i:05d}" for i in range(len(genes))], dtype="S")
        f["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")


HD_UM_PER_PX = 0.5
HD_ANGLE = np.deg2rad(3.0)


def hd_pixel(rows: np.ndarray, cols: np.ndarray, bin_um: int) -> np.ndarray:
    """Full-res (x, y) centres of bins: slight rotation, 0.5 µm per pixel."""
    u = (cols + 0.5) * bin_um / HD_UM_PER_PX
    v = (rows + 0.5) * bin_um / HD_UM_PER_PX
    c, s = np.cos(HD_ANGLE), np.sin(HD_ANGLE)
    return np.column_stack([60 + c * u - s * v, 40 + s * u + c * v])


def write_hd_bin(outs: Path, bin_um: int, counts2: np.ndarray, tissue2: np.ndarray,
                 sf_extra: dict | None = None) -> None:
    """Write square_XXXum from 8 µm-level counts (G, H, W) pooled by bin_um // 8."""
    k = bin_um // 8
    counts = pool_sum(counts2, k) if k > 1 else counts2
    tissue = pool_sum(tissue2.astype(np.int64), k) > 0 if k > 1 else tissue2
    g, h, w = counts.shape
    rows, cols = np.mgrid[0:h, 0:w]
    rows, cols = rows.ravel(), cols.ravel()
    barcodes = [f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
    xy = hd_pixel(rows, cols, bin_um)
    folder = outs / "binned_outputs" / f"square_{bin_um:03d}um"
    (folder / "spatial").mkdir(parents=True)
    pd.DataFrame({
        "barcode": barcodes, "in_tissue": tissue.ravel().astype(np.int32),
        "array_row": rows, "array_col": cols,
        "pxl_row_in_fullres": xy[:, 1], "pxl_col_in_fullres": xy[:, 0],
    }).to_parquet(folder / "spatial" / "tissue_positions.parquet")
    keep = tissue.ravel()
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5",
                 counts.reshape(g, -1).T[keep], [b for b, t in zip(barcodes, keep, strict=True)
                                                  if t], [f"G{i}" for i in range(g)])
    sf = {"tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1, "bin_size_um": float(bin_um),
          "microns_per_pixel": HD_UM_PER_PX, "spot_diameter_fullres": bin_um / HD_UM_PER_PX}
    sf.update(sf_extra or {})
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))


@pytest.fixture
def hd_run(tmp_path):
    """A tiny Visium HD run (8 and 16 µm bins) over a 400 x 400 px full-res image."""
    rng = np.random.default_rng(0)
    h, w = 20, 24
    counts = rng.poisson(2.0, size=(4, h, w)).astype(np.int64)
    rr, cc = np.mgrid[0:h, 0:w]
    tissue = (rr - 9.5) ** 2 + (cc - 11.5) ** 2 < 9**2
    outs = tmp_path / "hdrun" / "outs"
    write_hd_bin(outs, 8, counts, tissue)
    write_hd_bin(outs, 16, counts, tissue)
    spatial = outs / "spatial"
    spatial.mkdir()
    for size, fname in ((200, "tissue_hires_image.png"), (40, "tissue_lowres_image.png")):
        # stained everywhere, with texture (a uniform image is refused as blank)
        pink = np.array([230, 180, 200]) + rng.integers(-20, 20, size=(size, size, 3))
        Image.fromarray(pink.astype(np.uint8)).save(spatial / fname)
    return outs, counts, tissue


def test_visium_hd_reads_square_bins_exactly(hd_run):
    outs, counts, tissue = hd_run
    sample = read_visium_hd(outs, bin_um=8, work_um_per_px=None)
    assert sample.image.shape == (100, 100, 3)  # default: reduced to bin_um / 4 = 2 µm per px
    sample = read_visium_hd(outs, bin_um=8, work_um_per_px=0.1)
    assert sample.image.shape == (200, 200, 3)
    r0, c0 = sample.meta["raster_origin"]
    h, w = sample.shape
    np.testing.assert_array_equal(sample.mask, tissue[r0:r0 + h, c0:c0 + w])
    expected = np.where(tissue, counts, 0)[:, r0:r0 + h, c0:c0 + w]
    np.testing.assert_array_equal(sample.expr, expected.astype(np.float32))
    assert sample.cell_um == 8.0 and sample.genes == ["G0", "G1", "G2", "G3"]
    assert sample.image_um_per_px == pytest.approx(HD_UM_PER_PX / 0.5, rel=1e-6)
    truth = hd_pixel(np.array([r0 + 3]), np.array([c0 + 5]), 8) * 0.5
    np.testing.assert_allclose(sample.cell_centres_px()[3, 5], truth[0], atol=1e-6)
    assert sample.meta["lattice_max_deviation_cells"] < 1e-6
    assert detect_format(outs) == "visium_hd" and detect_format(outs.parent) == "visium_hd"
    assert read_sample(outs.parent, bin_um=8).shape == sample.shape


def test_visium_hd_16um_bins_cover_their_8um_children(hd_run):
    outs, counts, _ = hd_run
    fine = read_visium_hd(outs, bin_um=8, work_um_per_px=0.1)  # same image frame for both
    coarse = read_visium_hd(outs / "binned_outputs" / "square_016um", bin_um=None,
                            work_um_per_px=0.1)
    assert coarse.cell_um == 16.0
    fr0, fc0 = fine.meta["raster_origin"]
    cr0, cc0 = coarse.meta["raster_origin"]
    h, w = coarse.shape
    pooled = pool_sum(counts, 2)[:, cr0:cr0 + h, cc0:cc0 + w]
    np.testing.assert_array_equal(coarse.expr, np.where(coarse.mask, pooled, 0))
    r, c = 4, 5  # a coarse cell; its children are fine rows 2r..2r+1 (absolute indices)
    child_rows = np.array([2 * (r + cr0), 2 * (r + cr0) + 1]) - fr0
    child_cols = np.array([2 * (c + cc0), 2 * (c + cc0) + 1]) - fc0
    children = fine.cell_centres_px()[np.ix_(child_rows, child_cols)].reshape(-1, 2)
    np.testing.assert_allclose(coarse.cell_centres_px()[r, c], children.mean(axis=0), atol=1e-6)


def test_visium_hd_errors(hd_run, tmp_path):
    outs, _, _ = hd_run
    with pytest.raises(FileNotFoundError, match=r"square_002um.*square_008um, square_016um"):
        read_visium_hd(outs, bin_um=2)
    with pytest.raises(SampleError, match=r"max_dense_gb.*n_top_genes"):
        read_visium_hd(outs, bin_um=8, max_dense_gb=1e-9)
    with pytest.raises(FileNotFoundError, match="binned_outputs"):
        read_visium_hd(tmp_path)
    sf_path = outs / "binned_outputs" / "square_008um" / "spatial" / "scalefactors_json.json"
    sf = json.loads(sf_path.read_text())
    sf["microns_per_pixel"] = 0.8
    sf_path.write_text(json.dumps(sf))
    with pytest.raises(SampleError, match=r"scalefactors_json\.json: microns_per_pixel=0\.8"):
        read_visium_hd(outs, bin_um=8)


# ---------------------------------------------------------------------------- detection, inspect
def test_detect_format_layouts(tmp_path):
    def make(folder: str, *files: str) -> Path:
        d = tmp_path / folder
        d.mkdir()
        for f in files:
            (d / f).write_text("")
        return d

    assert detect_format(make("istar", "he-raw.jpg", "cnts.tsv", "locs-raw.tsv",
                              "pixel-size-raw.txt", "radius-raw.txt")) == "istar"
    assert detect_format(make("xen", "transcripts.parquet")) == "xenium"
    assert detect_format(make("xen2", "cells.parquet")) == "xenium"
    st = make("st", "C2.counts.tsv.gz", "C2.spots.tsv", "C2.HE.jpg")
    assert detect_format(st) == "legacy_st"
    assert detect_format(st / "C2.counts.tsv.gz") == "legacy_st"
    sr = make("sr", "filtered_feature_bc_matrix.h5")
    (sr / "spatial").mkdir()
    assert detect_format(sr) == "spaceranger"
    with pytest.raises(ValueError, match="unrecognised layout"):
        detect_format(make("empty"))
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "nope")


def test_read_sample_needs_a_section_for_several_st_sections(tmp_path):
    for sec in ("C2", "C3"):
        for suffix in (".counts.tsv.gz", ".spots.tsv", ".HE.jpg"):
            (tmp_path / f"{sec}{suffix}").write_text("")
    with pytest.raises(ValueError, match=r"C2, C3.*section="):
        read_sample(tmp_path)
    with pytest.raises(FileNotFoundError, match="no section 'C9'"):
        read_sample(tmp_path, section="C9")


def test_read_sample_dispatches_spaceranger_and_npz(tmp_path):
    folder = need(SQUIDPY)
    assert detect_format(folder) == "spaceranger"
    sample = read_sample(folder, image="lowres")
    path = sample.save_npz(tmp_path / "s.npz")
    assert detect_format(path) == "npz"
    back = read_sample(path, genes=sample.genes[:2])
    np.testing.assert_array_equal(back.expr, sample.expr[:2])
    np.testing.assert_array_equal(back.affine, sample.affine)


def test_inspect_reports_and_draws_overlay(tmp_path):
    folder = need(SQUIDPY)
    png = tmp_path / "overlay.png"
    info = inspect_path(folder, overlay_png=png, image="hires", alignment_check=False)
    assert any("blank" in w for w in info["warnings"])
    assert info["format"] == "spaceranger" and info["n_spots"] == 100 and info["n_genes"] == 100
    assert info["image_size"] == [2000, 2000] and info["lattice"] == "hexagonal"
    assert info["cell_um"] == pytest.approx(93.3, abs=0.5)
    with Image.open(png) as im:
        assert max(im.size) == 2000
        arr = np.asarray(im.convert("RGB"))
    assert (arr == [0, 200, 255]).all(axis=2).sum() > 100  # circles drawn on the black image
    text = format_inspection(info)
    assert "spaceranger" in text and "100 tissue cells" in text and "overlay" in text


def test_inspect_sr3_names_fallback_and_duplicates(sr3):
    info = inspect_path(SR3)
    assert info["n_genes"] == 19465 and info["image_size"] == [600, 600]
    assert any("tissue_hires_image.png is missing" in w for w in info["warnings"])
    assert any("Aldoa" in n for n in info["notes"])

"""Tests for the Xenium readers and the pseudo-Visium simulation.

Tiny Xenium bundles are written to tmp_path; the NCBI858 fixture is read from
../shared/data/fixtures/xenium_cells_ncbi858 (skipped when absent).
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from PIL import Image

from diffst.data.sample import SampleError, STSample
from diffst.io.alignment import AlignmentError
from diffst.io.xenium import (
    XENIUM_UM_PER_PX,
    pseudo_visium,
    read_alignment,
    read_xenium,
    read_xenium_cells_h5ad,
)

FIXTURE = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "fixtures" / "xenium_cells_ncbi858"
)
GENES = ["GeneA", "GeneB", "GeneC"]
CONTROLS = [
    "NegControlProbe_00042",
    "NegControlCodeword_0500",
    "BLANK_0001",
    "UnassignedCodeword_0007",
    "DeprecatedCodeword_0002",
]
HE_UM_PER_PX = 0.5
CLUSTER_UM = (61.0, 43.0)  # a dense GeneA cluster, drawn dark on the H&E


def _apply(affine: np.ndarray, cols, rows) -> np.ndarray:
    pts = np.stack([np.asarray(cols, float), np.asarray(rows, float), np.ones(np.size(cols))])
    return (affine @ pts)[:2].T


def _he_to_morph(angle_deg: float = 4.0) -> np.ndarray:
    """H&E pixel -> morphology pixel: H&E pixels are 0.5 µm, rotated and shifted."""
    s = HE_UM_PER_PX / XENIUM_UM_PER_PX
    a = math.radians(angle_deg)
    return np.array(
        [
            [s * math.cos(a), -s * math.sin(a), -30.0],
            [s * math.sin(a), s * math.cos(a), -45.0],
            [0.0, 0.0, 1.0],
        ]
    )


def _um_to_he(x_um, y_um, m: np.ndarray) -> np.ndarray:
    morph = np.stack([np.asarray(x_um) / XENIUM_UM_PER_PX, np.asarray(y_um) / XENIUM_UM_PER_PX])
    he = np.linalg.inv(m) @ np.vstack([morph, np.ones(morph.shape[1])])
    return he[:2].T


def _transcripts(rng: np.random.Generator) -> pd.DataFrame:
    n = 3000
    names = rng.choice(GENES + CONTROLS, n, p=[0.3, 0.25, 0.25] + [0.04] * len(CONTROLS))
    x = rng.uniform(5.0, 155.0, n)
    y = rng.uniform(3.0, 97.0, n)
    qv = rng.uniform(5.0, 40.0, n)
    k = 200  # the GeneA cluster, all high quality
    names = np.concatenate([names, ["GeneA"] * k])
    x = np.concatenate([x, rng.uniform(-1.5, 1.5, k) + CLUSTER_UM[0]])
    y = np.concatenate([y, rng.uniform(-1.5, 1.5, k) + CLUSTER_UM[1]])
    qv = np.concatenate([qv, np.full(k, 35.0)])
    return pd.DataFrame({"feature_name": names, "x_location": x, "y_location": y, "qv": qv})


def _write_bundle(folder: Path, as_bytes: bool = False, seed: int = 0) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    df = _transcripts(np.random.default_rng(seed))
    names = [n.encode() for n in df.feature_name] if as_bytes else list(df.feature_name)
    table = pa.table(
        {
            "transcript_id": pa.array(np.arange(len(df), dtype=np.uint64)),
            "feature_name": pa.array(names, type=pa.binary() if as_bytes else pa.string()),
            "x_location": pa.array(df.x_location.to_numpy(np.float32)),
            "y_location": pa.array(df.y_location.to_numpy(np.float32)),
            "qv": pa.array(df.qv.to_numpy(np.float32)),
        }
    )
    if as_bytes:  # exercise bytes names (older XOA) and the is_gene column (newer XOA)
        table = table.append_column("is_gene", pa.array(df.feature_name.isin(GENES).to_numpy()))
    pq.write_table(table, folder / "transcripts.parquet", row_group_size=700)  # several chunks
    df["x_location"] = df.x_location.astype(np.float32).astype(np.float64)
    df["y_location"] = df.y_location.astype(np.float32).astype(np.float64)
    df["qv"] = df.qv.astype(np.float32)
    return df


def _write_he(folder: Path, m: np.ndarray) -> tuple[Path, Path]:
    corners = _um_to_he([0, 170, 0, 170], [0, 0, 110, 110], m)
    w, h = (np.ceil(corners.max(axis=0)) + 20).astype(int)
    img = np.full((h, w, 3), 245, np.uint8)
    cx, cy = _um_to_he([CLUSTER_UM[0]], [CLUSTER_UM[1]], m)[0]
    yy, xx = np.mgrid[0:h, 0:w]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= 8**2] = (60, 20, 90)
    Image.fromarray(img).save(folder / "he.png")
    np.savetxt(folder / "he_imagealignment.csv", m, delimiter=",")
    return folder / "he.png", folder / "he_imagealignment.csv"


def _expected(df: pd.DataFrame, bin_um: float) -> tuple[np.ndarray, np.ndarray]:
    kept = df[(df.qv >= 20) & df.feature_name.isin(GENES)]
    ox = math.floor(kept.x_location.min() / bin_um) * bin_um
    oy = math.floor(kept.y_location.min() / bin_um) * bin_um
    w = math.floor((kept.x_location.max() - ox) / bin_um) + 1
    h = math.floor((kept.y_location.max() - oy) / bin_um) + 1
    xe, ye = ox + bin_um * np.arange(w + 1), oy + bin_um * np.arange(h + 1)
    out = np.zeros((len(GENES), h, w))
    for g, gene in enumerate(GENES):
        sel = kept[kept.feature_name == gene]
        out[g] = np.histogram2d(sel.y_location, sel.x_location, bins=[ye, xe])[0]
    return out, np.array([ox, oy])


# ============================================================================ transcripts
@pytest.mark.parametrize("as_bytes", [False, True])
def test_read_xenium_transcripts_counts_and_filters(tmp_path, as_bytes):
    df = _write_bundle(tmp_path / "xen", as_bytes=as_bytes)
    s = read_xenium(tmp_path / "xen", bin_um=8.0)
    assert s.genes == GENES and s.image is None
    kept = df[(df.qv >= 20) & df.feature_name.isin(GENES)]
    for g, gene in enumerate(GENES):  # per-gene totals = kept transcripts of that gene
        assert s.expr[g].sum() == (kept.feature_name == gene).sum()
    assert s.meta["n_transcripts_kept"] == len(kept)
    assert s.meta["n_dropped_low_qv"] == (df.qv < 20).sum()
    assert s.meta["n_dropped_control"] == df.feature_name.isin(CONTROLS).sum()
    assert sorted(s.meta["control_features"]) == sorted(CONTROLS)
    expected, origin = _expected(df, 8.0)
    np.testing.assert_array_equal(s.expr, expected)
    assert s.meta["origin_um"] == pytest.approx(origin.tolist())
    # without an image the affine maps raster cell centres to Xenium µm
    row, col = (int(v) for v in np.argwhere(s.expr[0] == s.expr[0].max())[0])
    x_um, y_um = _apply(s.affine, [col], [row])[0]
    assert abs(x_um - CLUSTER_UM[0]) <= 4.0 + 1.5 and abs(y_um - CLUSTER_UM[1]) <= 4.0 + 1.5
    assert s.mask[s.expr.sum(axis=0) > 0].all()  # every cell with counts is in the mask


def test_read_xenium_with_aligned_he(tmp_path):
    _write_bundle(tmp_path / "xen")
    m = _he_to_morph()
    he, csv = _write_he(tmp_path / "xen", m)
    # the synthetic H&E stains only a small disk: no tissue check
    s = read_xenium(tmp_path / "xen", bin_um=4.0, he_image=he, alignment_csv=csv,
                    alignment_check=False)
    assert s.image_um_per_px == pytest.approx(HE_UM_PER_PX, rel=1e-6)
    assert s.px_per_cell * s.image_um_per_px == pytest.approx(4.0, rel=1e-6)
    row, col = (int(v) for v in np.argwhere(s.expr[0] == s.expr[0].max())[0])
    x, y = _apply(s.affine, [col], [row])[0]
    gray = s.image.astype(float).mean(axis=2)
    assert gray[round(y), round(x)] < 100  # the GeneA cluster sits on the dark disk
    far = _apply(s.affine, [col + 6], [row])[0].round().astype(int)
    assert gray[far[1], far[0]] > 200
    # the same at a reduced working resolution
    w = read_xenium(
        tmp_path / "xen", bin_um=4.0, he_image=he, alignment_csv=csv, work_um_per_px=1.0,
        alignment_check=False,
    )
    assert w.image_um_per_px == pytest.approx(1.0, rel=0.02)
    x, y = _apply(w.affine, [col], [row])[0]
    assert w.image.astype(float).mean(axis=2)[round(y), round(x)] < 120


def test_read_xenium_genes_and_bad_inputs(tmp_path):
    df = _write_bundle(tmp_path / "xen")
    s = read_xenium(tmp_path / "xen", genes=["GeneC", "GeneA"])
    full = read_xenium(tmp_path / "xen")
    assert s.genes == ["GeneC", "GeneA"]
    np.testing.assert_array_equal(s.expr, full.expr[[2, 0]])
    with pytest.raises(SampleError, match="NoSuchGene"):
        read_xenium(tmp_path / "xen", genes=["NoSuchGene"])
    with pytest.raises(SampleError, match="control filter"):
        read_xenium(tmp_path / "xen", min_qv=1000)
    with pytest.raises(FileNotFoundError, match="nothing"):
        read_xenium(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="transcripts.parquet"):
        read_xenium(tmp_path / "empty")
    he, csv = _write_he(tmp_path / "xen", _he_to_morph())
    with pytest.raises(ValueError, match="alignment"):
        read_xenium(tmp_path / "xen", he_image=he)
    (tmp_path / "bad.csv").write_text("1,0,0\n0,1,0\n")
    with pytest.raises(SampleError, match="3x3"):
        read_xenium(tmp_path / "xen", he_image=he, alignment_csv=tmp_path / "bad.csv")
    with pytest.raises(SampleError, match="singular"):
        read_alignment(np.array([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]))
    # an alignment for a different image puts the tissue outside this one
    shifted = _he_to_morph()
    shifted[:2, 2] += 5000
    with pytest.raises(SampleError, match="outside"):
        read_xenium(tmp_path / "xen", he_image=he, alignment_csv=shifted)
    df.drop(columns="qv").to_parquet(tmp_path / "xen" / "transcripts.parquet")
    with pytest.raises(SampleError, match="qv"):
        read_xenium(tmp_path / "xen")


# ============================================================================ cells
def _cells(rng: np.random.Generator):
    n = 40
    ids = [f"cell{i:03d}-1" for i in range(n)]
    x = rng.uniform(0, 80, n)
    y = rng.uniform(0, 50, n)
    features = GENES + ["NegControlProbe_00042", "BLANK_0001"]
    types = ["Gene Expression"] * 3 + ["Negative Control Probe", "Unassigned Codeword"]
    counts = rng.poisson(2.0, (n, len(features)))
    return ids, x, y, features, types, counts


def _write_cells_parquet(folder: Path, ids, x, y) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    order = np.arange(len(ids))[::-1]  # table order differs from the matrix
    pd.DataFrame(
        {"cell_id": np.array(ids)[order], "x_centroid": x[order], "y_centroid": y[order]}
    ).to_parquet(folder / "cells.parquet")


def _check_cells_sample(s: STSample, x, y, counts) -> None:
    assert s.genes == GENES
    np.testing.assert_allclose(s.expr.sum(axis=(1, 2)), counts[:, :3].sum(axis=0))
    ox, oy = s.meta["origin_um"]
    for k in range(len(x)):
        r, c = int((y[k] - oy) // 8), int((x[k] - ox) // 8)
        assert (s.expr[:, r, c] >= counts[k, :3]).all()


def test_read_xenium_cells_mtx_and_h5(tmp_path):
    import h5py

    ids, x, y, features, types, counts = _cells(np.random.default_rng(2))
    a = tmp_path / "mtx"
    _write_cells_parquet(a, ids, x, y)
    (a / "cell_feature_matrix").mkdir()
    with gzip.open(a / "cell_feature_matrix" / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.coo_matrix(counts.T))
    feats = pd.DataFrame({"id": [f"ENSG{i}" for i in range(5)], "name": features, "t": types})
    feats.to_csv(a / "cell_feature_matrix" / "features.tsv.gz", sep="\t", header=False, index=False)
    pd.Series(ids).to_csv(
        a / "cell_feature_matrix" / "barcodes.tsv.gz", sep="\t", header=False, index=False
    )
    _check_cells_sample(read_xenium(a), x, y, counts)

    b = tmp_path / "h5"
    _write_cells_parquet(b, ids, x, y)
    csc = sp.csc_matrix(counts.T)
    with h5py.File(b / "cell_feature_matrix.h5", "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = csc.data, csc.indices, csc.indptr
        g["shape"] = np.array(csc.shape)
        g["barcodes"] = np.array([i.encode() for i in ids])
        fg = g.create_group("features")
        fg["name"] = np.array([n.encode() for n in features])
        fg["id"] = np.array([f"ENSG{i}".encode() for i in range(5)])
        fg["feature_type"] = np.array([t.encode() for t in types])
    _check_cells_sample(read_xenium(b), x, y, counts)
    # a matrix cell without a centroid
    _write_cells_parquet(b, ids[1:], x[1:], y[1:])
    with pytest.raises(SampleError, match="no centroid"):
        read_xenium(b)


# ============================================================================ NCBI858 fixture
@pytest.fixture(scope="module")
def ncbi858():
    if not (FIXTURE / "NCBI858.h5ad").exists():
        pytest.skip(f"Xenium fixture not found at {FIXTURE}")
    # The file records no pixel size; nuclei (~7 µm) span ~2.7 px, so ~2.7 µm per pixel.
    return read_xenium_cells_h5ad(
        FIXTURE / "NCBI858.h5ad", FIXTURE / "NCBI858.jpg", bin_um=16.0, image_um_per_px=2.7
    )


def test_ncbi858_cells_land_on_tissue(ncbi858):
    import anndata

    adata = anndata.read_h5ad(FIXTURE / "NCBI858.h5ad")
    s = ncbi858
    assert s.expr.sum() == pytest.approx(float(adata.X.sum()))
    assert s.n_genes == adata.n_vars
    occupied = s.expr.sum(axis=0) > 0
    xy = s.cell_centres_px()[occupied].round().astype(int)
    gray = s.image.astype(float).mean(axis=2)
    h, w = gray.shape

    def darkest(px):  # darkest pixel within +-3 px (tissue is stained, background white)
        return gray[max(px[1] - 3, 0) : px[1] + 4, max(px[0] - 3, 0) : px[0] + 4].min()

    on = np.array([darkest(p) for p in xy])
    mirrored = np.column_stack([w - 1 - xy[:, 0], h - 1 - xy[:, 1]])  # same spread, wrong place
    off = np.array([darkest(p) for p in mirrored])
    assert (on < 215).mean() > 0.9  # random positions: about 0.7
    assert np.median(on) < np.median(off) - 25


def test_ncbi858_row_col_keys_matter():
    if not (FIXTURE / "NCBI858.h5ad").exists():
        pytest.skip(f"Xenium fixture not found at {FIXTURE}")
    # swapping rows and columns sends cells off the tissue: named error with the fix
    with pytest.raises(AlignmentError, match=r"if corrected for 'x/y swapped'.*--swap-xy"):
        read_xenium_cells_h5ad(
            FIXTURE / "NCBI858.h5ad",
            FIXTURE / "NCBI858.jpg",
            image_um_per_px=2.7,
            row_key="y_pixel",
            col_key="x_pixel",
        )
    with pytest.raises(SampleError, match="image_um_per_px"):
        read_xenium_cells_h5ad(FIXTURE / "NCBI858.h5ad", FIXTURE / "NCBI858.jpg")


# ============================================================================ pseudo-Visium
def _hr_sample(h=70, w=90, cell=5.0) -> STSample:
    rng = np.random.default_rng(4)
    expr = rng.poisson(1.5, (3, h, w)).astype(np.float32)
    mask = np.ones((h, w), bool)
    mask[:, :10] = False
    expr[:, ~mask] = 0
    affine = np.array([[cell, 0, cell / 2], [0, cell, cell / 2], [0, 0, 1.0]])  # -> µm
    return STSample(expr=expr, genes=GENES, cell_um=cell, mask=mask, affine=affine, name="hr")


def test_pseudo_visium_sums_disks_on_hex_grid():
    hr = _hr_sample()
    lr, spots = pseudo_visium(hr)
    yy, xx = np.mgrid[0 : hr.shape[0], 0 : hr.shape[1]]
    cx, cy = (xx + 0.5) * hr.cell_um, (yy + 0.5) * hr.cell_um
    used = np.zeros(hr.shape, int)
    for sp_ in spots.itertuples():
        disk = (cx - sp_.x_um) ** 2 + (cy - sp_.y_um) ** 2 <= 27.5**2
        used += disk
        assert sp_.n_cells == disk.sum()
        got = lr.expr[:, sp_.row, sp_.col]
        want = hr.expr[:, disk].sum(axis=1) if sp_.in_tissue else np.zeros(3)
        np.testing.assert_allclose(got, want)
        assert lr.mask[sp_.row, sp_.col] == (hr.mask[disk].any())
    assert used.max() == 1  # no HR cell counted twice
    # spots are 100 µm apart: along rows, and to their nearest neighbours overall
    xy = spots[["x_um", "y_um"]].to_numpy()
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert np.allclose(d.min(axis=1), 100.0)
    assert np.allclose(np.diff(spots[spots.row == 0].x_um), 100.0)
    assert spots.groupby("row").y_um.first().diff().dropna().to_numpy() == pytest.approx(
        100 * math.sqrt(3) / 2
    )
    # the LR affine maps each spot's raster cell to within a quarter pitch of its centre (µm)
    pred = _apply(lr.affine, spots.col, spots.row)
    assert np.allclose(np.linalg.norm(pred - xy, axis=1), 25.0)
    assert lr.meta["cell_um_xy"] == pytest.approx([100.0, 100 * math.sqrt(3) / 2])
    assert lr.px_per_cell == pytest.approx(lr.cell_um)  # affine to µm: 1 "px" = 1 µm


def test_pseudo_visium_rejects_bad_parameters():
    hr = _hr_sample()
    with pytest.raises(SampleError, match="overlap"):
        pseudo_visium(hr, spot_diameter_um=120.0)
    coarse = _hr_sample(h=10, w=10, cell=40.0)
    with pytest.raises(SampleError, match="too coarse"):
        pseudo_visium(coarse)


def test_pseudo_visium_from_xenium_keeps_origin(tmp_path):
    _write_bundle(tmp_path / "xen")
    s = read_xenium(tmp_path / "xen", bin_um=4.0)
    lr, spots = pseudo_visium(s)
    ox, oy = s.meta["origin_um"]
    assert spots.x_um.iloc[0] == pytest.approx(ox + 27.5)
    assert spots.y_um.iloc[0] == pytest.approx(oy + 27.5)
    assert lr.expr.sum() <= s.expr.sum() and lr.expr.sum() > 0

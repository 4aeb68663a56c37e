"""AnnData (.h5ad) reading, writing and round trips.

Uses ../shared/data/fixtures/visium_squidpy (test_data.h5ad and the Space Ranger folder; skipped
when absent) plus synthetic samples. Runtime: about 3 s.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from diffst.data.sample import SampleError, STSample
from diffst.io import (
    anndata_to_sample,
    detect_format,
    read_anndata,
    read_sample,
    read_spaceranger,
    sample_to_anndata,
    write_anndata,
)
from diffst.io.anndata_io import infer_lattice

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "data" / "fixtures"
SQUIDPY = FIXTURES / "visium_squidpy"
H5AD = SQUIDPY / "test_data.h5ad"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"fixture {path} is not available (../shared/data is absent)")
    return path


def squidpy_h5ad_sample() -> STSample:
    return read_anndata(need(H5AD), image="lowres", require_integer=False)


def assert_same_sample(a: STSample, b: STSample) -> None:
    np.testing.assert_array_equal(a.expr, b.expr)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.affine, b.affine, rtol=1e-12, atol=1e-9)
    assert a.genes == b.genes and a.cell_um == pytest.approx(b.cell_um, rel=1e-12)
    assert a.image_um_per_px == pytest.approx(b.image_um_per_px, rel=1e-12)
    if a.image is None:
        assert b.image is None
    else:
        np.testing.assert_array_equal(a.image, b.image)


def synthetic_sample(image_hw=(300, 400), rng_seed=0) -> STSample:
    rng = np.random.default_rng(rng_seed)
    expr = rng.gamma(2.0, 1.5, size=(3, 6, 8)).astype(np.float32)  # fractional SR output
    mask = np.ones((6, 8), dtype=bool)
    mask[0, :3] = False
    expr[:, ~mask] = 0
    affine = np.array([[40.0, 2.0, 30.0], [-2.0, 40.0, 25.0], [0, 0, 1]])
    image = rng.integers(0, 256, size=(*image_hw, 3), dtype=np.uint8)
    return STSample(expr=expr, genes=["A", "B", "C"], cell_um=20.0, mask=mask, image=image,
                    image_um_per_px=0.5, affine=affine, name="syn", meta={"note": [1, 2]})


# ---------------------------------------------------------------------------- reading test_data
def test_normalised_x_is_rejected_with_the_fix():
    with pytest.raises(SampleError, match=r"test_data\.h5ad: X: .*non-integer.*layer='counts'"):
        read_anndata(need(H5AD))


def test_standardised_hires_image_is_rejected():
    with pytest.raises(SampleError, match=r"\['hires'\]: float image values must lie in"):
        read_anndata(need(H5AD), require_integer=False)


def test_test_data_lattice_counts_and_geometry():
    adata = ad.read_h5ad(need(H5AD))
    sample = squidpy_h5ad_sample()
    assert sample.mask.sum() == adata.n_obs == 49 and sample.genes == list(adata.var_names)
    assert sample.meta["lattice"] == "hexagonal"
    assert sample.meta["lattice_from"].startswith("inferred")
    xy = adata.obsm["spatial"].astype(float)
    nn = np.sort(np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)), axis=1)[:, 1]
    assert sample.meta["um_per_px_fullres"] == pytest.approx(100 / np.median(nn), rel=0.01)
    # each spot's counts sit in the mask cell whose centre is nearest (within a quarter cell)
    sf = adata.uns["spatial"]["V1_Adult_Mouse_Brain"]["scalefactors"]["tissue_lowres_scalef"]
    centres = sample.cell_centres_px()
    cells = np.argwhere(sample.mask)
    cxy = centres[sample.mask]
    dense = adata.X.toarray()
    col_px = np.hypot(*sample.affine[:2, 0])
    for i in range(adata.n_obs):
        d = np.hypot(*(cxy - xy[i] * sf).T)
        j = int(np.argmin(d))
        assert d[j] < 0.26 * col_px
        np.testing.assert_allclose(sample.expr[:, cells[j][0], cells[j][1]], dense[i], rtol=1e-6)


def test_hires_missing_falls_back_to_lowres_with_warning():
    adata = ad.read_h5ad(need(H5AD))
    del adata.uns["spatial"]["V1_Adult_Mouse_Brain"]["images"]["hires"]
    with pytest.warns(UserWarning, match="no 'hires' image; using 'lowres'"):
        sample = anndata_to_sample(adata, require_integer=False)
    assert sample.image.shape == (88, 49, 3)


def test_array_coordinates_from_obs_match_spaceranger_reader():
    folder = need(SQUIDPY)
    ref = read_spaceranger(folder)
    names = ["bc", "in_tissue", "array_row", "array_col", "py", "px"]
    pos = pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None,
                      names=names).set_index("bc")
    with h5py.File(folder / "filtered_feature_bc_matrix.h5") as fh:
        g = fh["matrix"]
        mat = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]),
                            shape=tuple(g["shape"][:])).T.tocsr()
        bcs = [b.decode() for b in g["barcodes"][:]]
        names = [b.decode() for b in g["features/name"][:]]
    pos = pos.loc[bcs]
    sf = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    adata = ad.AnnData(X=mat, obs=pos[["in_tissue", "array_row", "array_col"]].copy(),
                       var=pd.DataFrame(index=names))
    adata.obsm["spatial"] = pos[["px", "py"]].to_numpy(dtype=float)
    adata.uns["spatial"] = {"lib": {"images": {"lowres": ref.image}, "scalefactors": sf}}
    sample = anndata_to_sample(adata, image="lowres")  # the reader skips the blank hires PNG
    assert sample.meta["lattice_from"] == "obs array_row/array_col"
    assert_same_sample(sample, ref)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicate_genes_and_missing_spatial():
    adata = ad.AnnData(X=np.ones((3, 2), dtype=np.float32),
                       var=pd.DataFrame(index=["G", "G"]))
    with pytest.raises(SampleError, match=r"duplicated gene name.*'G'.*make_unique=True"):
        anndata_to_sample(adata)
    with pytest.raises(SampleError, match=r"no obsm\['spatial'\]"):
        anndata_to_sample(adata, make_unique=True)


def test_square_grid_needs_a_pitch_and_genes_must_exist():
    rr, cc = np.mgrid[0:4, 0:5]
    xy = np.column_stack([10 + 20.0 * cc.ravel(), 5 + 20.0 * rr.ravel()])
    adata = ad.AnnData(X=np.arange(40, dtype=np.float32).reshape(20, 2),
                       var=pd.DataFrame(index=["A", "B"]))
    adata.obsm["spatial"] = xy
    with pytest.raises(SampleError, match="pitch_um"):
        anndata_to_sample(adata, image=None)
    s = anndata_to_sample(adata, image=None, pitch_um=10.0)
    assert s.shape == (4, 5) and s.cell_um == pytest.approx(10.0)
    assert s.meta["um_per_px_fullres"] == pytest.approx(0.5)
    np.testing.assert_array_equal(s.expr[1].ravel(), adata.X[:, 1])
    with pytest.raises(SampleError, match="'Z'"):
        anndata_to_sample(adata, image=None, pitch_um=10.0, genes=["Z"])


@pytest.mark.parametrize("hexagonal", [True, False])
def test_infer_lattice_recovers_rotated_noisy_grids(hexagonal):
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[0:9, 0:12]
    rows, cols = rows.ravel(), cols.ravel()
    if hexagonal:
        cols = 2 * cols + (rows % 2)
        u, v = cols * 25.0, rows * 50.0 * np.sqrt(3) / 2
    else:
        u, v = cols * 50.0, rows * 50.0
    t = np.deg2rad(7)
    xy = np.column_stack([np.cos(t) * u - np.sin(t) * v, np.sin(t) * u + np.cos(t) * v])
    xy += 300 + rng.normal(0, 1.0, xy.shape)
    keep = rng.random(len(xy)) > 0.15  # holes
    ar, ac, is_hex = infer_lattice(xy[keep])
    assert is_hex == hexagonal
    np.testing.assert_array_equal(ar - ar.min(), rows[keep] - rows[keep].min())
    np.testing.assert_array_equal(ac - ac.min(), cols[keep] - cols[keep].min())


def test_infer_lattice_rejects_scattered_points():
    xy = np.random.default_rng(2).uniform(0, 1000, size=(40, 2))
    with pytest.raises(SampleError, match="array_row"):
        infer_lattice(xy)


# ---------------------------------------------------------------------------- writing
def test_written_layout_follows_the_scanpy_convention(tmp_path):
    s = synthetic_sample()
    layers = {"mean": s.expr * 2, "std": s.expr + 1}
    path = write_anndata(s, tmp_path / "out" / "res.h5ad", layers=layers)
    assert [p.name for p in path.parent.iterdir()] == ["res.h5ad"]  # no temporary left
    adata = ad.read_h5ad(path)
    rows, cols = np.nonzero(s.mask)
    assert adata.n_obs == s.mask.sum() and list(adata.var_names) == s.genes
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.obs["row"], rows)
    np.testing.assert_array_equal(adata.X, s.expr[:, rows, cols].T)
    np.testing.assert_array_equal(adata.layers["std"], (s.expr + 1)[:, rows, cols].T)
    centres = s.cell_centres_px()[rows, cols]
    np.testing.assert_allclose(adata.obsm["spatial"], centres)
    np.testing.assert_allclose(adata.obs["x_um"], centres[:, 0] * s.image_um_per_px)
    lib = adata.uns["spatial"]["syn"]
    assert lib["images"]["hires"].shape == s.image.shape
    assert lib["scalefactors"]["tissue_hires_scalef"] == 1.0
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(s.px_per_cell)
    assert adata.uns["diffst"]["cell_um"] == 20.0
    with pytest.raises(ValueError, match="layer 'bad'"):
        sample_to_anndata(s, layers={"bad": np.zeros((1, 2, 3))})


def test_round_trip_exact_for_small_images(tmp_path):
    s = synthetic_sample()
    path = write_anndata(s, tmp_path / "a.h5ad")
    assert detect_format(path) == "h5ad"
    back = read_sample(path)  # fractional values are fine in a diffst-written file
    assert_same_sample(back, s)
    assert back.name == "syn" and back.meta["note"] == [1, 2]
    again = sample_to_anndata(back, library_id="syn")
    first = ad.read_h5ad(path)
    np.testing.assert_array_equal(again.X, first.X)
    np.testing.assert_array_equal(again.obsm["spatial"], first.obsm["spatial"])


def test_round_trip_downscales_big_images_consistently(tmp_path):
    s = synthetic_sample(image_hw=(2500, 3000))
    back = read_anndata(write_anndata(s, tmp_path / "big.h5ad"))
    scale = 2000 / 3000
    assert back.image.shape == (1667, 2000, 3)
    np.testing.assert_allclose(back.affine, np.diag([scale, scale, 1]) @ s.affine)
    assert back.image_um_per_px == pytest.approx(s.image_um_per_px / scale)
    np.testing.assert_array_equal(back.expr, s.expr)
    full = read_anndata(write_anndata(s, tmp_path / "full.h5ad", max_image_px=None))
    assert_same_sample(full, s)


def test_round_trip_without_image(tmp_path):
    s = synthetic_sample()
    s.image = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_anndata(write_anndata(s, tmp_path / "noimg.h5ad"))
    assert_same_sample(back, s)


def test_h5ad_to_sample_to_h5ad_keeps_counts_coordinates_and_image(tmp_path):
    original = ad.read_h5ad(need(H5AD))
    sample = squidpy_h5ad_sample()
    path = write_anndata(sample, tmp_path / "rt.h5ad")
    written = ad.read_h5ad(path)
    back = read_anndata(path)
    assert_same_sample(back, sample)
    # counts per spot survive; coordinates stay within the documented quarter cell
    sf = original.uns["spatial"]["V1_Adult_Mouse_Brain"]["scalefactors"]["tissue_lowres_scalef"]
    spots = original.obsm["spatial"] * sf  # lowres pixels = the sample's image frame
    col_px = np.hypot(*sample.affine[:2, 0])
    dense = original.X.toarray()
    for i in range(original.n_obs):
        d = np.hypot(*(written.obsm["spatial"] - spots[i]).T)
        j = int(np.argmin(d))
        assert d[j] < 0.26 * col_px
        np.testing.assert_allclose(written.X[j], dense[i], rtol=1e-6)
    lowres = original.uns["spatial"]["V1_Adult_Mouse_Brain"]["images"]["lowres"]
    np.testing.assert_array_equal(
        written.uns["spatial"]["test_data"]["images"]["hires"],
        np.clip(lowres * 255 + 0.5, 0, 255).astype(np.uint8),
    )


def test_reading_spaceranger_then_h5ad_round_trip(tmp_path):
    ref = read_spaceranger(need(SQUIDPY))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the round trip must not warn
        back = read_anndata(write_anndata(ref, tmp_path / "sr.h5ad"))
    assert_same_sample(back, ref)
    assert back.meta["raster_origin"] == ref.meta["raster_origin"]

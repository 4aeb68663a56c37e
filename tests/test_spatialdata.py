"""SpatialData in and out (optional extra ``diffst[spatialdata]``; skipped without it).

The fixture is diffst's simulated tissue (8 µm HR truth, 2 µm/px H&E) pooled to 40 µm spots and
stored the way spatialdata-io stores assays: an image element, a shapes (circles, squares) or
points element of the spots and a table of counts annotating it, with transformations into a
"global" coordinate system in µm that also holds a translation. Also uses the squidpy Visium
fixture under ../shared/data/fixtures when present. Runtime: about 30 s on 2 cores.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

sd = pytest.importorskip("spatialdata")

from conftest import SHARED_DATA, tiny_config  # noqa: E402
from spatialdata.models import Image2DModel, PointsModel, ShapesModel, TableModel  # noqa: E402
from spatialdata.transformations import (  # noqa: E402
    Identity,
    Scale,
    Sequence,
    Translation,
    get_transformation,
    remove_transformation,
    set_transformation,
)

import diffst as ds  # noqa: E402
from diffst.api import train_model  # noqa: E402
from diffst.data.lr import simulate_lr  # noqa: E402
from diffst.data.simulate import simulate_tissue  # noqa: E402
from diffst.io import detect_format, inspect_path, read_anndata, read_sample  # noqa: E402
from diffst.io.spatialdata_io import (  # noqa: E402
    SpatialDataError,
    element_names,
    sample_to_spatialdata,
    spatialdata_to_sample,
)

pytestmark = pytest.mark.filterwarnings("ignore:zarr v3 autosharding:UserWarning",
                                        "ignore::DeprecationWarning:ome_zarr")

F = 5
UM_PER_PX = 2.0
OFFSET_UM = np.array([100.0, 50.0])  # where the image's top-left corner sits in "global"
SQUIDPY_H5AD = SHARED_DATA / "fixtures" / "visium_squidpy" / "test_data.h5ad"


@pytest.fixture(scope="module")
def truth():
    return simulate_tissue(seed=0, size_um=240, n_genes=4, image_um_per_px=UM_PER_PX)


@pytest.fixture(scope="module")
def spots(truth):
    return simulate_lr(truth, F)  # 6 x 6 spots of 40 µm


@pytest.fixture(scope="module")
def model(truth, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return train_model([truth], F, tmp_path_factory.mktemp("sd") / "tiny.pt", steps=2,
                       batch_size=2, patch=10, work_um_per_px=2.0, model_config=tiny_config(),
                       progress=False)


def image_to_global() -> Sequence:
    """H&E pixels (SpatialData convention) -> µm with the section at ``OFFSET_UM``."""
    return Sequence([Scale([UM_PER_PX, UM_PER_PX], axes=("x", "y")),
                     Translation(OFFSET_UM, axes=("x", "y"))])


def spot_centres_um(sample) -> np.ndarray:
    """Tissue spot centres in "global" µm (diffst pixel centres sit at integers: +0.5 px)."""
    px = sample.cell_centres_px()[sample.mask]
    return (px + 0.5) * UM_PER_PX + OFFSET_UM


def make_sdata(sample, kind: str = "circles", name: str = "spots", image_key: str = "he"):
    """An H&E image, the tissue spots as ``kind`` and a counts table annotating them."""
    import geopandas as gpd
    from shapely.geometry import box

    image = Image2DModel.parse(np.moveaxis(sample.image, 2, 0), dims=("c", "y", "x"),
                               c_coords=["r", "g", "b"],
                               transformations={"global": image_to_global()})
    um = spot_centres_um(sample)
    half = sample.cell_um / 2
    if kind == "circles":  # stored in H&E pixels, like Visium's full-resolution coordinates
        px = (um - OFFSET_UM) / UM_PER_PX
        spots = ShapesModel.parse(px, geometry=0, radius=np.full(len(px), half / UM_PER_PX),
                                  transformations={"global": image_to_global()})
    elif kind == "squares":  # in µm, like bins
        frame = gpd.GeoDataFrame(geometry=[box(x - half, y - half, x + half, y + half)
                                           for x, y in um])
        spots = ShapesModel.parse(frame, transformations={"global": Identity()})
    else:
        spots = PointsModel.parse(pd.DataFrame({"x": um[:, 0], "y": um[:, 1]}),
                                  transformations={"global": Identity()})
    counts = sample.expr[:, sample.mask].T.astype(np.float32)
    n = len(counts)
    table = ad.AnnData(X=counts, var=pd.DataFrame(index=sample.genes),
                       obs=pd.DataFrame({"region": pd.Categorical([name] * n),
                                         "spot_id": np.arange(n)},
                                        index=[f"spot{i}" for i in range(n)]))
    table = TableModel.parse(table, region=name, region_key="region", instance_key="spot_id")
    elements = {"images": {image_key: image}, "tables": {"table": table}}
    elements["points" if kind == "points" else "shapes"] = {name: spots}
    return sd.SpatialData(**elements)


def by_position(sample) -> tuple[np.ndarray, np.ndarray]:
    """Tissue cells as (centre px, counts) sorted by position: compares rasters up to a crop."""
    px = sample.cell_centres_px()[sample.mask]
    order = np.lexsort((px[:, 0], px[:, 1]))
    return px[order], sample.expr[:, sample.mask].T[order]


def to_matrix(transformation) -> np.ndarray:
    return transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))


# ---------------------------------------------------------------------------- reading
@pytest.mark.parametrize(("kind", "name", "kw"), [
    ("circles", "spots", {"um_per_unit": 1.0}),
    ("squares", "square_040um", {}),  # Visium HD naming gives the bin size
    ("points", "spots", {"pitch_um": 40.0}),
])
def test_spots_reach_the_image_through_the_transformations(spots, kind, name, kw):
    sample = spatialdata_to_sample(make_sdata(spots, kind, name), **kw)
    assert sample.cell_um == pytest.approx(40.0) and sample.genes == spots.genes
    assert sample.image_um_per_px == pytest.approx(UM_PER_PX)
    np.testing.assert_array_equal(sample.image, spots.image)
    px, counts = by_position(sample)
    px_in, counts_in = by_position(spots)
    np.testing.assert_allclose(px, px_in, atol=1e-6)
    np.testing.assert_array_equal(counts, counts_in)
    np.testing.assert_allclose(sample.affine[:2, :2], spots.affine[:2, :2], atol=1e-9)
    link = sample.meta["spatialdata"]
    assert (link["table"], link["region"], link["image"], link["coordinate_system"]) == \
        ("table", name, "he", "global")


def test_square_grid_without_a_pitch_is_refused_with_the_options(spots):
    with pytest.raises(SpatialDataError, match="pitch_um="):
        spatialdata_to_sample(make_sdata(spots, "points"))


def test_read_accepts_a_spatialdata_object_and_a_zarr_store(spots, tmp_path):
    sdata = make_sdata(spots)
    adata = ds.read(sdata, um_per_unit=1.0)
    assert adata.n_obs == int(spots.mask.sum()) and list(adata.var_names) == spots.genes
    sdata.write(tmp_path / "spots.zarr")
    assert detect_format(tmp_path / "spots.zarr") == "spatialdata"
    back = read_sample(tmp_path / "spots.zarr", um_per_unit=1.0)
    np.testing.assert_array_equal(by_position(back)[1], by_position(spots)[1])
    with pytest.raises(ValueError, match="bin_um= .* does not apply to spatialdata"):
        read_sample(tmp_path / "spots.zarr", bin_um=8)
    info = inspect_path(tmp_path / "spots.zarr", um_per_unit=1.0)
    assert info["format"] == "spatialdata" and info["cell_um"] == pytest.approx(40.0)


def test_train_takes_spatialdata_sections(spots, monkeypatch, tmp_path):
    import diffst.tl

    seen = {}
    monkeypatch.setattr(diffst.tl, "train_model",
                        lambda samples, factor, out, **kw: seen.update(samples=samples))
    ds.tl.train([make_sdata(spots), make_sdata(spots, "points")], 2, tmp_path / "m.pt",
                spots_only=True, read_kw={"um_per_unit": 1.0})
    assert [s.shape for s in seen["samples"]] == [(6, 6), (6, 6)]


def test_missing_parts_are_named(spots):
    full = make_sdata(spots)
    no_table = sd.SpatialData(images=dict(full.images), shapes=dict(full.shapes))
    with pytest.raises(SpatialDataError, match="has no table"):
        spatialdata_to_sample(no_table)
    no_image = sd.SpatialData(shapes=dict(full.shapes), tables=dict(full.tables))
    with pytest.raises(SpatialDataError, match="has no image element"):
        spatialdata_to_sample(no_image)
    plain = ad.AnnData(X=full.tables["table"].X.copy())
    unlinked = sd.SpatialData(images=dict(full.images), shapes=dict(full.shapes),
                              tables={"table": plain})
    with pytest.raises(SpatialDataError, match="does not annotate any element"):
        spatialdata_to_sample(unlinked)
    elsewhere = make_sdata(spots)
    set_transformation(elsewhere.shapes["spots"], Identity(), to_coordinate_system="aligned")
    remove_transformation(elsewhere.shapes["spots"], "global")
    with pytest.raises(SpatialDataError, match="no image shares a coordinate system"):
        spatialdata_to_sample(elsewhere)
    with pytest.raises(SpatialDataError, match="share no coordinate system"):
        spatialdata_to_sample(elsewhere, image_key="he")
    two = make_sdata(spots)
    two["he_copy"] = Image2DModel.parse(np.moveaxis(spots.image, 2, 0), dims=("c", "y", "x"),
                                        transformations={"global": image_to_global()})
    with pytest.raises(SpatialDataError, match="several images .*image_key="):
        spatialdata_to_sample(two, um_per_unit=1.0)
    assert spatialdata_to_sample(two, image_key="he_copy", um_per_unit=1.0).shape == (6, 6)
    with pytest.raises(TypeError, match="image_key="):
        spatialdata_to_sample(full, image="hires")


def test_rows_without_a_shape_are_named(spots):
    sdata = make_sdata(spots)
    sdata.tables["table"].obs["spot_id"] = np.arange(sdata.tables["table"].n_obs) + 1000
    with pytest.raises(SpatialDataError, match="not in 'spots'"):
        spatialdata_to_sample(sdata, um_per_unit=1.0)


def test_a_multiscale_level_is_read_on_its_own_pixels(spots):
    sdata = make_sdata(spots)
    sdata["he"] = Image2DModel.parse(np.moveaxis(spots.image, 2, 0), dims=("c", "y", "x"),
                                     scale_factors=[2],
                                     transformations={"global": image_to_global()})
    fine = spatialdata_to_sample(sdata, um_per_unit=1.0)
    coarse = spatialdata_to_sample(sdata, scale="scale1", um_per_unit=1.0)
    assert coarse.image.shape == (60, 60, 3)
    np.testing.assert_allclose(coarse.affine[:2, :2], fine.affine[:2, :2] / 2, atol=1e-9)
    np.testing.assert_allclose((coarse.affine[:2, 2] + 0.5) * 2, fine.affine[:2, 2] + 0.5,
                               atol=1e-9)


def test_visium_fixture_reads_as_its_anndata(tmp_path):
    """Real Visium spots (hexagonal grid, lowres image): the SpatialData route gives the
    AnnData route's sample, half a pixel apart (SpatialData's pixel centres sit at +0.5)."""
    if not SQUIDPY_H5AD.exists():
        pytest.skip(f"fixture {SQUIDPY_H5AD} is not available (../shared/data is absent)")
    adata = ad.read_h5ad(SQUIDPY_H5AD)
    lib = next(iter(adata.uns["spatial"]))
    entry = adata.uns["spatial"][lib]
    scalef = float(entry["scalefactors"]["tissue_lowres_scalef"])
    radius = float(entry["scalefactors"]["spot_diameter_fullres"]) / 2
    image = Image2DModel.parse(np.moveaxis(entry["images"]["lowres"], 2, 0), dims=("c", "y", "x"),
                               transformations={"global": Scale([1 / scalef] * 2, ("x", "y"))})
    circles = ShapesModel.parse(np.asarray(adata.obsm["spatial"], dtype=np.float64), geometry=0,
                                radius=np.full(adata.n_obs, radius))
    table = ad.AnnData(X=adata.X, var=adata.var[[]],
                       obs=pd.DataFrame({"region": pd.Categorical([lib] * adata.n_obs),
                                         "spot": np.arange(adata.n_obs),
                                         "in_tissue": adata.obs["in_tissue"].to_numpy()},
                                        index=adata.obs_names))
    table = TableModel.parse(table, region=lib, region_key="region", instance_key="spot")
    sdata = sd.SpatialData(images={"lowres": image}, shapes={lib: circles},
                           tables={"table": table})
    got = spatialdata_to_sample(sdata, require_integer=False)
    want = read_anndata(SQUIDPY_H5AD, image="lowres", require_integer=False)
    np.testing.assert_array_equal(got.expr, want.expr)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.affine[:2, :2], want.affine[:2, :2], rtol=1e-9)
    np.testing.assert_allclose(got.affine[:2, 2], want.affine[:2, 2] - 0.5, atol=1e-6)
    assert got.cell_um == pytest.approx(want.cell_um)


# ---------------------------------------------------------------------------- writing
def check_grid_on_image(sdata, key: str, truth) -> None:
    """Every HR pixel of the result lands exactly on one truth HR cell of the H&E."""
    k = truth.px_per_cell
    he = to_matrix(get_transformation(sdata.images["he"], "global"))
    for name in (f"{key}_mean", f"{key}_cells"):
        element = sdata[name]
        m = np.linalg.inv(he) @ to_matrix(get_transformation(element, "global"))
        h, w = element.shape[-2:]
        rr, cc = np.mgrid[0:h, 0:w]
        centres = np.stack([cc.ravel() + 0.5, rr.ravel() + 0.5, np.ones(h * w)])
        px = (m @ centres)[:2]  # H&E pixels, SpatialData convention
        cell = (px - k / 2) / k  # truth cell index whose centre this is
        np.testing.assert_allclose(cell, np.round(cell), atol=1e-9)
        np.testing.assert_allclose(np.diag(m)[:2], [k, k])  # one HR cell = k x k H&E pixels


def test_super_resolve_adds_elements_that_sit_on_the_h_and_e(spots, truth, model, tmp_path):
    sdata = make_sdata(spots)
    out = ds.tl.super_resolve(sdata, model, key_added="sr", n_samples=2, steps=2,
                              progress=False, read_kw={"um_per_unit": 1.0})
    assert out is sdata
    names = element_names("sr", dict.fromkeys(("mean", "std", "q05", "q95")))
    assert names == {"table": "sr", "labels": "sr_cells", "mean": "sr_mean", "std": "sr_std",
                     "q05": "sr_q05", "q95": "sr_q95"}
    table = sdata.tables["sr"]
    genes = list(table.var_names)  # the model's genes, in its order
    assert sorted(genes) == sorted(spots.genes)
    for layer in ("mean", "std", "q05", "q95"):
        image = sdata.images[names[layer]]
        assert image.dims == ("c", "y", "x") and image.shape == (4, 30, 30)
        assert list(image.coords["c"].values) == genes
    labels = np.asarray(sdata.labels["sr_cells"])
    assert table.n_obs == int((labels > 0).sum()) == int(spots.mask.sum()) * F * F
    assert table.uns["spatialdata_attrs"]["region"] == "sr_cells"
    assert table.uns["sr"]["factor"] == F and table.uns["sr"]["input_table"] == "table"
    assert set(table.layers) == {"mean", "std", "q05", "q95"}
    check_grid_on_image(sdata, "sr", truth)

    # the mean sums back to each measured spot over the HR cells that fall inside it (µm)
    mean = np.asarray(sdata.images["sr_mean"])
    to_um = to_matrix(get_transformation(sdata.images["sr_mean"], "global"))
    rr, cc = np.nonzero(labels)
    um = (to_um @ np.stack([cc + 0.5, rr + 0.5, np.ones(len(rr))]))[:2].T
    centres = spot_centres_um(spots)
    nearest = np.argmin(((um[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert np.abs(um - centres[nearest]).max() < spots.cell_um / 2
    pooled = np.stack([np.bincount(nearest, mean[g, rr, cc], len(centres)) for g in range(4)])
    measured = sdata.tables["table"][:, genes].X
    np.testing.assert_allclose(pooled.T, measured, rtol=1e-3, atol=1e-3)

    # and the table agrees with the images cell by cell
    obs = table.obs
    np.testing.assert_array_equal(labels[obs["row"], obs["col"]], obs["cell_id"])
    np.testing.assert_allclose(table.X, mean[:, obs["row"], obs["col"]].T, rtol=1e-6)


def test_a_key_that_would_replace_the_input_is_refused(spots, model):
    sdata = make_sdata(spots, name="sr_cells")
    with pytest.raises(ValueError, match="would replace the input"):
        ds.tl.super_resolve(sdata, model, key_added="sr", n_samples=1, steps=1,
                            progress=False, read_kw={"um_per_unit": 1.0})
    assert set(sdata.shapes) == {"sr_cells"} and set(sdata.images) == {"he"}


def test_result_writes_to_zarr_and_reads_back_equal(spots, model, tmp_path):
    sdata = make_sdata(spots)
    ds.tl.super_resolve(sdata, model, n_samples=2, steps=2, progress=False,
                        read_kw={"um_per_unit": 1.0})
    sdata.write(tmp_path / "result.zarr")
    back = sd.read_zarr(tmp_path / "result.zarr")
    names = element_names("diffst_sr", dict.fromkeys(("mean", "std", "q05", "q95")))
    for role, name in names.items():
        if role == "table":
            continue
        np.testing.assert_array_equal(np.asarray(back[name]), np.asarray(sdata[name]))
        np.testing.assert_allclose(to_matrix(get_transformation(back[name], "global")),
                                   to_matrix(get_transformation(sdata[name], "global")))
    np.testing.assert_array_equal(back.images["diffst_sr_mean"].coords["c"].values,
                                  sdata.tables["diffst_sr"].var_names)
    table, table_back = sdata.tables["diffst_sr"], back.tables["diffst_sr"]
    np.testing.assert_array_equal(table_back.X, table.X)
    for layer in table.layers:
        np.testing.assert_array_equal(table_back.layers[layer], table.layers[layer])
    pd.testing.assert_frame_equal(table_back.obs, table.obs)
    assert table_back.uns["diffst_sr"]["n_hr_cells"] == table.n_obs


def test_sample_to_spatialdata_builds_a_new_object(truth, tmp_path):
    sdata = sample_to_spatialdata(truth, key="truth")
    assert set(sdata.images) == {"he", "truth_mean"} and set(sdata.labels) == {"truth_cells"}
    np.testing.assert_array_equal(np.asarray(sdata.images["truth_mean"]), truth.expr)
    check_grid_on_image(sdata, "truth", truth)
    sdata.write(tmp_path / "truth.zarr")
    assert set(sd.read_zarr(tmp_path / "truth.zarr").tables) == {"truth"}


def test_without_the_extra_the_message_names_it(monkeypatch):
    import sys

    from diffst.io import spatialdata_io

    monkeypatch.setitem(sys.modules, "spatialdata", None)
    with pytest.raises(ImportError, match=r"diffst\[spatialdata\]"):
        spatialdata_io.require_spatialdata()
    assert not spatialdata_io.is_spatialdata(object())


def test_readme_spatialdata_example_runs_as_written(spots, model, tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### SpatialData (optional extra)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    make_sdata(spots, "squares", "square_040um", image_key="hires_image").write(
        tmp_path / "spots.zarr")
    shutil.copy(model, tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    back = sd.read_zarr(tmp_path / "spots_sr.zarr")
    assert {"sr_mean", "sr_std", "sr_q05", "sr_q95"} <= set(back.images)
    assert set(back.labels) == {"sr_cells"} and {"table", "sr"} == set(back.tables)

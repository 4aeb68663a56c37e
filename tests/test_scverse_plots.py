"""The AnnData that ``ds.tl.super_resolve`` returns draws with scanpy's and squidpy's spatial
plots over its H&E (optional extras ``diffst[scanpy]``, ``diffst[squidpy]``; each test is skipped
when its package is absent). Runtime: about 15 s on 2 cores, mostly importing the packages.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from conftest import tiny_config  # noqa: E402

import diffst as ds  # noqa: E402
from diffst.data.simulate import simulate_tissue  # noqa: E402
from diffst.io import sample_to_anndata  # noqa: E402


@pytest.fixture(scope="module")
def sr(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    truth = sample_to_anndata(simulate_tissue(seed=0, size_um=240, n_genes=4,
                                              image_um_per_px=2.0))
    model = ds.tl.train(truth, factor=5, out=tmp_path_factory.mktemp("m") / "tiny.pt", steps=2,
                        batch_size=2, patch=10, work_um_per_px=2.0, model_config=tiny_config(),
                        progress=False)
    return ds.tl.super_resolve(ds.pp.pool(truth, factor=5), model, n_samples=2, steps=2,
                               progress=False)


def markers(ax, n: int):
    """The collection that draws one marker per HR cell (points or patches)."""
    found = [c for c in ax.collections if n in (len(c.get_offsets()), len(c.get_paths()))]
    assert found, "no collection with one marker per HR cell"
    return found[0]


def drawn_on_the_image(ax, sr) -> None:
    """The axes show the H&E and one marker per HR cell at the cell's image position."""
    lib = next(iter(sr.uns["spatial"]))
    image = sr.uns["spatial"][lib]["images"]["hires"]
    shown = [im for im in ax.get_images() if im.get_array().shape[:2] == image.shape[:2]]
    assert shown, "the H&E is not drawn"
    scalef = sr.uns["spatial"][lib]["scalefactors"]["tissue_hires_scalef"]
    cells = sr.obsm["spatial"] * scalef
    markers(ax, sr.n_obs)
    xlim, ylim = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    assert xlim[0] <= cells[:, 0].min() and cells[:, 0].max() <= xlim[1]
    assert ylim[0] <= cells[:, 1].min() and cells[:, 1].max() <= ylim[1]


def test_scanpy_spatial_draws_the_result(sr, tmp_path):
    sc = pytest.importorskip("scanpy")
    genes = list(sr.var_names[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sc.pl.spatial points to squidpy
        axes = sc.pl.spatial(sr, color=genes, layer="std", show=False)
    for ax in axes:
        drawn_on_the_image(ax, sr)
    axes[0].figure.savefig(tmp_path / "scanpy.png")
    assert (tmp_path / "scanpy.png").stat().st_size > 1000
    values = markers(axes[0], sr.n_obs).get_array()
    expected = np.asarray(sr[:, genes[0]].layers["std"]).ravel()  # scanpy draws sorted
    np.testing.assert_allclose(np.sort(np.asarray(values)), np.sort(expected), rtol=1e-6)


def test_squidpy_spatial_scatter_draws_the_result(sr, tmp_path):
    sq = pytest.importorskip("squidpy")
    gene = str(sr.var_names[0])
    ax = sq.pl.spatial_scatter(sr, color=gene, layer="mean", shape="square", return_ax=True)
    drawn_on_the_image(ax, sr)
    ax.figure.savefig(tmp_path / "squidpy.png")
    assert (tmp_path / "squidpy.png").stat().st_size > 1000

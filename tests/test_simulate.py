"""Tests for the simulated demo sample (diffst.data.simulate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage, sparse
from scipy.spatial import cKDTree

from diffst.data.image import aligned_image
from diffst.data.sample import load_npz
from diffst.data.simulate import ADI, EPI, FIB, IMM, TYPES, simulate_cells, simulate_tissue


@pytest.fixture(scope="module")
def default_sample():
    return simulate_tissue(seed=0)


@pytest.fixture(scope="module")
def small_sample():
    return simulate_tissue(seed=3, size_um=400.0)


def _r2_linear(features: np.ndarray, target: np.ndarray) -> float:
    """In-sample R^2 of a least-squares fit of target on features (+ squares and intercept)."""
    design = np.c_[features, features**2, np.ones(len(features))]
    beta, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(1 - ((target - design @ beta) ** 2).mean() / target.var())


def test_same_seed_gives_bitwise_identical_sample(small_sample):
    again = simulate_tissue(seed=3, size_um=400.0)
    assert np.array_equal(small_sample.expr, again.expr)
    assert np.array_equal(small_sample.mask, again.mask)
    assert np.array_equal(small_sample.image, again.image)
    assert np.array_equal(small_sample.affine, again.affine)
    assert small_sample.genes == again.genes
    assert small_sample.meta == again.meta


def test_different_seeds_differ(small_sample):
    other = simulate_tissue(seed=4, size_um=400.0)
    assert not np.array_equal(small_sample.expr, other.expr)
    assert not np.array_equal(small_sample.mask, other.mask)
    assert not np.array_equal(small_sample.image, other.image)


def test_layout_does_not_depend_on_gene_count():
    few = simulate_cells(seed=5, size_um=300.0, n_genes=4)
    many = simulate_cells(seed=5, size_um=300.0, n_genes=30)
    assert np.array_equal(few.x_um, many.x_um)
    assert np.array_equal(few.cell_type, many.cell_type)
    assert few.counts.shape == (len(few.x_um), 4)
    assert "field:F0" in few.gene_kinds  # even a small panel has a hidden-field gene


@pytest.mark.parametrize(
    ("size_um", "cell_um", "um_per_px"), [(400.0, 8.0, 1.0), (400.0, 10.0, 0.5), (480.0, 16.0, 2.0)]
)
def test_geometry_units_and_affine(size_um, cell_um, um_per_px):
    s = simulate_tissue(seed=1, size_um=size_um, cell_um=cell_um, image_um_per_px=um_per_px,
                        n_genes=6)
    n = round(size_um / cell_um)
    n_px = round(size_um / um_per_px)
    assert s.expr.shape == (6, n, n) and s.mask.shape == (n, n)
    assert s.image.shape == (n_px, n_px, 3) and s.image.dtype == np.uint8
    assert s.cell_um == cell_um and s.image_um_per_px == um_per_px
    assert s.px_per_cell == pytest.approx(cell_um / um_per_px)
    s.check_alignment(tolerance_cells=0.0)
    centres = s.cell_centres_px()
    half = 0.5 * cell_um / um_per_px
    # Raster cell (0, 0) centre and the outer edge of the last cell match the image borders.
    assert centres[0, 0] == pytest.approx([half - 0.5, half - 0.5])
    assert centres[-1, -1] + half == pytest.approx([n_px - 0.5, n_px - 0.5])


def test_two_mm_sample_works():
    s = simulate_tissue(seed=2, size_um=2000.0, image_um_per_px=2.0, n_genes=8)
    assert s.expr.shape == (8, 250, 250) and s.image.shape == (1000, 1000, 3)
    assert s.meta["n_cells"] > 15000


def test_counts_are_nonnegative_integers_inside_the_mask(small_sample):
    expr = small_sample.expr
    assert expr.dtype == np.float32
    assert (expr >= 0).all()
    assert np.array_equal(expr, np.round(expr))
    assert (expr[:, ~small_sample.mask] == 0).all()
    cells = simulate_cells(seed=3, size_um=400.0)
    assert np.array_equal(expr.sum(axis=(1, 2)), cells.counts.sum(axis=0).astype(np.float32))


def test_mask_is_tissue_with_irregular_outline(default_sample):
    mask = default_sample.mask
    assert 0.5 < mask.mean() < 0.95
    # Not a rectangle: some border cells are tissue and some are not; there are inner holes.
    border = np.r_[mask[0], mask[-1], mask[:, 0], mask[:, -1]]
    assert 0 < border.mean() < 1
    holes = ndimage.binary_fill_holes(mask) & ~mask
    assert holes.sum() > 10


def test_cells_lie_inside_the_mask():
    s = simulate_tissue(seed=6, size_um=400.0, render_image=False)
    cells = simulate_cells(seed=6, size_um=400.0)
    rows = (cells.y_um // s.cell_um).astype(int)
    cols = (cells.x_um // s.cell_um).astype(int)
    assert s.mask[rows, cols].all()
    assert s.image is None


def test_meta_is_small_json_and_marks_simulated(small_sample, tmp_path):
    meta = small_sample.meta
    assert meta["simulated"] is True and meta["seed"] == 3 and meta["size_um"] == 400.0
    assert len(json.dumps(meta)) < 5000
    assert set(meta["gene_kinds"]) == set(small_sample.genes)
    back = load_npz(small_sample.save_npz(tmp_path / "sim.npz"))
    assert back.meta == meta and np.array_equal(back.image, small_sample.image)


def test_genes_are_named_simulated_and_differ_in_abundance(default_sample):
    s = default_sample
    assert all(g.startswith("SIM_") for g in s.genes)
    kinds = s.meta["gene_kinds"]
    for gene, kind in kinds.items():
        if kind.startswith("marker:"):
            assert gene.startswith(f"SIM_{kind.split(':')[1]}") and "FLD" not in gene
        elif kind.startswith("field:"):
            assert gene.startswith("SIM_FIELD")
    totals = s.expr[:, s.mask].sum(axis=1)
    assert totals.max() > 10 * totals.min() > 0
    # Xenium-like sparsity: per raster cell most genes are zero, a few counts at most.
    assert 0.4 < (s.expr[:, s.mask] == 0).mean() < 0.95


def test_cell_types_render_with_distinct_morphology(default_sample):
    s = default_sample
    cells = simulate_cells(seed=0)
    px = np.minimum((cells.x_um / s.image_um_per_px).astype(int), s.image.shape[1] - 1)
    py = np.minimum((cells.y_um / s.image_um_per_px).astype(int), s.image.shape[0] - 1)
    rgb = s.image[py, px].astype(float)
    bright = rgb.mean(axis=1)
    by_type = {t: np.median(bright[cells.cell_type == t]) for t in (EPI, FIB, IMM)}
    assert by_type[IMM] < by_type[EPI] - 20  # dense dark lymphocyte nuclei
    # Adipocyte nuclei sit at the rim, so adipocyte centres are nearly white.
    assert np.median(bright[cells.cell_type == ADI]) > 220
    # Stroma away from nuclei is eosin pink: red > blue > green.
    tree = cKDTree(np.c_[cells.x_um, cells.y_um])
    rows, cols = np.nonzero(s.mask)
    centre_um = (np.c_[cols, rows] + 0.5) * s.cell_um
    far = centre_um[tree.query(centre_um)[0] > 9]
    pix = (far / s.image_um_per_px).astype(int)
    pink = s.image[pix[:, 1], pix[:, 0]].astype(float)
    pink = pink[pink.mean(axis=1) < 235]  # drop lumens and adipocytes
    r, g, b = np.median(pink, axis=0)
    assert r > b > g


def test_markers_are_more_image_predictable_than_hidden_field_genes(default_sample):
    s = default_sample
    k = 8
    img = aligned_image(s, k).astype(np.float32)
    h, w = s.shape
    od = -np.log((img.reshape(h, k, w, k, 3) + 1) / 256)
    stats = np.concatenate([od.mean(axis=(1, 3)), od.std(axis=(1, 3))], axis=-1)
    feats = np.stack([ndimage.uniform_filter(stats[..., i], 3) for i in range(6)], -1)[s.mask]
    r2 = {}
    for gene in s.genes:
        target = ndimage.uniform_filter(s.expr[s.genes.index(gene)], 3)[s.mask]
        r2[gene] = _r2_linear(feats, target)
    kinds = s.meta["gene_kinds"]
    markers = [r2[g] for g, kd in kinds.items() if kd in ("marker:EPI", "marker:IMM")]
    typed = [r2[g] for g, kd in kinds.items() if kd.startswith(("typefield:EPI", "typefield:IMM"))]
    fields = [r2[g] for g, kd in kinds.items() if kd.startswith("field:")]
    assert np.mean(markers) > 0.5
    # Same cell types, but their hidden-field modulation is invisible in the image.
    assert np.mean(markers) > np.mean(typed) + 0.15
    assert np.mean(fields) < 0.4


def test_field_genes_vary_in_space_beyond_cell_type():
    cells = simulate_cells(seed=1, size_um=800.0)
    counts = cells.counts.astype(float)
    type_mean = np.stack([counts[cells.cell_type == t].mean(axis=0) for t in range(len(TYPES))])
    resid = counts - type_mean[cells.cell_type]
    xy = np.c_[cells.x_um, cells.y_um]
    neighbours = cKDTree(xy).query_ball_point(xy, 40.0)
    rows = np.repeat(np.arange(len(xy)), [len(n) for n in neighbours])
    cols = np.concatenate(neighbours)
    keep = rows != cols
    adj = sparse.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), (len(xy),) * 2)
    degree = np.maximum(np.asarray(adj.sum(axis=1)), 1)
    neigh = (adj @ resid) / degree  # mean residual of the neighbours within 40 µm
    corr = np.array([np.corrcoef(resid[:, g], neigh[:, g])[0, 1] for g in range(counts.shape[1])])
    is_field = np.array([not k.startswith("marker:") for k in cells.gene_kinds])
    assert corr[is_field].min() > 0.1
    assert np.median(corr[~is_field]) < 0.05
    assert corr[is_field].mean() > np.median(corr[~is_field]) + 0.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size_um": 1000.0, "cell_um": 7.0}, "whole multiple of cell_um"),
        ({"size_um": 400.0, "image_um_per_px": 0.3}, "whole multiple of image_um_per_px"),
        ({"cell_um": -8.0}, "cell_um must be a positive"),
        ({"n_genes": 0}, "n_genes"),
        ({"size_um": 50.0}, "too small"),
        ({"size_um": 8000.0, "image_um_per_px": 1.0}, "a larger image_um_per_px"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate_tissue(**kwargs)

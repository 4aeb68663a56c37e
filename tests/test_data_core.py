"""LR pooling, normalisation, the sample container and patch extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample

from diffst.data.image import aligned_image
from diffst.data.lr import (
    hr_frame_affine,
    padded_mask,
    pool_sum,
    simulate_lr,
    upsample_bicubic,
    upsample_nearest,
)
from diffst.data.normalize import GeneScaler
from diffst.data.patches import (
    PatchBatch,
    cell_tiles,
    collate,
    extract_patch,
    prepare_training_sample,
    tile_entropy,
)
from diffst.data.sample import SampleError, STSample, load_npz


@pytest.mark.parametrize("factor", [2, 3, 5, 10])
def test_pooling_preserves_totals(factor):
    s = make_sample(size=30)
    lr = simulate_lr(s, factor)
    assert lr.expr.sum(axis=(1, 2)) == pytest.approx(s.expr.sum(axis=(1, 2)))
    assert lr.shape == (-(-30 // factor), -(-30 // factor))
    assert lr.cell_um == s.cell_um * factor


def test_pool_sum_by_hand():
    x = np.arange(16, dtype=float).reshape(1, 4, 4)
    np.testing.assert_array_equal(pool_sum(x, 2)[0], [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7],
                                                     [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])
    with pytest.raises(SampleError, match="multiple"):
        pool_sum(np.zeros((1, 5, 4)), 2)
    with pytest.raises(SampleError, match="positive integer"):
        pool_sum(x, 0)


def test_lr_affine_maps_to_block_centre():
    s = make_sample(size=20)
    lr = simulate_lr(s, 5)
    hr_centres = s.cell_centres_px()
    # LR cell (1, 2) covers HR rows 5..9, cols 10..14; its centre is their mean.
    expected = hr_centres[5:10, 10:15].reshape(-1, 2).mean(0)
    np.testing.assert_allclose(lr.cell_centres_px()[1, 2], expected)
    np.testing.assert_allclose(hr_frame_affine(lr, 5), s.affine)


def test_upsampling_shapes_and_values():
    lr = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    near = upsample_nearest(lr, 2)
    assert near.shape == (1, 4, 6) and near[0, 3, 5] == 5
    flat = upsample_bicubic(np.full((2, 3, 3), 7.0), 4)
    np.testing.assert_allclose(flat, 7.0, rtol=1e-5)
    assert padded_mask(np.ones((3, 4), bool), 3).shape == (3, 6)


def test_normalisation_round_trips():
    s = make_sample()
    scaler = GeneScaler.fit([s.expr], [s.mask], quantile=1.0, clip_max=1.5)
    y = scaler.transform(s.expr)
    assert y.min() >= 0 and y.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(scaler.inverse(y), s.expr, rtol=1e-4, atol=1e-4)
    again = GeneScaler.from_state_dict(scaler.state_dict())
    np.testing.assert_allclose(again.transform(s.expr), y)
    lin = GeneScaler.fit([s.expr], [s.mask], log1p=False, quantile=1.0)
    np.testing.assert_allclose(lin.inverse(lin.transform(s.expr)), s.expr, rtol=1e-5)
    # LR values are compared per HR cell: a block of equal cells maps to the same scaled value.
    lr = pool_sum(np.full((s.n_genes, 5, 5), 3.0), 5)
    np.testing.assert_allclose(scaler.transform_lr(lr, 5)[:, 0, 0],
                               scaler.transform(np.full((s.n_genes, 1), 3.0))[:, 0], rtol=1e-6)


def test_sample_validation_names_the_problem():
    s = make_sample()
    bad = s.expr.copy()
    bad[0, 5, 5] = np.nan
    with pytest.raises(SampleError, match="NaN"):
        STSample(expr=bad, genes=s.genes, cell_um=8, mask=s.mask)
    with pytest.raises(SampleError, match="duplicate gene"):
        STSample(expr=s.expr, genes=["A", "A", "B", "C"], cell_um=8, mask=s.mask)
    with pytest.raises(SampleError, match="not in the data"):
        s.select_genes(["G0", "NOPE"])
    shifted = STSample(expr=s.expr, genes=s.genes, cell_um=8, mask=s.mask, image=s.image,
                       affine=s.affine + np.array([[0, 0, 5000.0], [0, 0, 0], [0, 0, 0]]))
    with pytest.raises(SampleError, match="outside"):
        shifted.check_alignment()
    s.check_alignment()


def test_npz_round_trip(tmp_path):
    s = make_sample()
    path = s.save_npz(tmp_path / "s.npz")
    back = load_npz(path)
    np.testing.assert_array_equal(back.expr, s.expr)
    np.testing.assert_array_equal(back.image, s.image)
    np.testing.assert_allclose(back.affine, s.affine)
    assert back.genes == s.genes and back.cell_um == s.cell_um
    assert not list(tmp_path.glob("*.part"))


def test_aligned_image_puts_cells_on_their_pixels():
    s = make_sample(k=4)
    img = aligned_image(s, 4)
    np.testing.assert_array_equal(img, s.image)
    half = aligned_image(s, 2)
    assert half.shape == (60, 60, 3)
    # A cell's pixels in the half-resolution image average its 4x4 source block.
    block = s.image[8:12, 12:16].astype(float).mean((0, 1))
    np.testing.assert_allclose(half[4:6, 6:8].astype(float).mean((0, 1)), block, atol=12)


def test_tile_entropy_ranks_textured_tiles_first():
    crop = np.full((16, 16, 3), 200, np.uint8)
    rng = np.random.default_rng(0)
    crop[8:, 8:] = rng.integers(0, 255, (8, 8, 3))
    ent = tile_entropy(crop.mean(2).astype(np.uint8), 8)
    assert ent[1, 1] > 0 and ent[0, 0] == 0
    tiles, centres, valid = cell_tiles(crop, 8, 6)
    np.testing.assert_allclose(centres[0], [0.75, 0.75])
    assert valid.sum() == 4 and tiles.shape == (6, 3, 8, 8)


def test_patch_augmentation_is_shared_by_all_modalities():
    s = make_sample(size=30)
    scaler = GeneScaler.fit([s.expr], [s.mask])
    prep = prepare_training_sample(s, 5, scaler, k=4)
    base = extract_patch(prep, 10, 5, 10, 2, 4, 6)
    turned = extract_patch(prep, 10, 5, 10, 2, 4, 6, rot=1, flip=True)
    for key in ("hr", "lr", "lr_up", "mask", "tissue_image"):
        expect = np.flip(np.rot90(base[key].numpy(), 1, axes=(-2, -1)), axis=-1)
        np.testing.assert_allclose(turned[key].numpy(), expect, atol=1e-6, err_msg=key)
    # The LR patch is the sum-pooled HR truth (in per-HR-cell scaled units).
    assert base["lr"].shape == (4, 2, 2) and base["hr"].shape == (4, 10, 10)


def test_patch_batch_is_typed_and_reads_as_a_mapping():
    s = make_sample(size=30)
    scaler = GeneScaler.fit([s.expr], [s.mask])
    prep = prepare_training_sample(s, 5, scaler, k=4)
    items = [extract_patch(prep, 10, 5, 10, 2, 4, 6), extract_patch(prep, 0, 5, 10, 2, 4, 6)]
    batch = collate(items)
    assert isinstance(batch, PatchBatch) and batch.lr.shape == (2, 4, 2, 2)
    assert list(batch) == ["lr", "lr_up", "mask", "hr", "tissue_image", "tiles",
                           "tile_centres", "tile_valid"]
    assert batch["hr"] is batch.hr and len(batch) == 8
    no_truth = PatchBatch.from_dict({k: v for k, v in batch.items() if k != "hr"})
    assert no_truth.hr is None and "hr" not in no_truth and len(no_truth) == 7
    with pytest.raises(KeyError):
        no_truth["hr"]  # noqa: B018
    moved = batch.to("cpu")
    torch.testing.assert_close(moved.tiles, batch.tiles)
    both = PatchBatch.cat([batch, batch])
    assert both.tile_valid.shape == (4, 6) and torch.equal(both.hr[2:], batch.hr)


def test_one_pooling_for_numpy_and_torch():
    from diffst.consistency import pool_cells, spread_cells

    x = np.random.default_rng(0).poisson(3.0, (2, 3, 10, 15)).astype(np.float32)
    reference = x.reshape(2, 3, 2, 5, 3, 5).sum(axis=(3, 5))  # what both copies computed
    np.testing.assert_array_equal(pool_sum(x, 5), reference)
    pooled = pool_cells(torch.from_numpy(x), 5)
    assert isinstance(pooled, torch.Tensor)
    np.testing.assert_array_equal(pooled.numpy(), reference)
    spread = spread_cells(torch.from_numpy(reference), 5)
    assert isinstance(spread, torch.Tensor)
    np.testing.assert_array_equal(spread.numpy(), upsample_nearest(reference, 5))
    with pytest.raises(ValueError, match="not a multiple of the scale factor 2"):
        pool_cells(torch.ones(3, 7), 2)


@pytest.mark.parametrize("log1p", [True, False])
def test_one_gene_scaler_for_numpy_and_torch(log1p):
    s = make_sample(size=20)
    scaler = GeneScaler.fit([s.expr], [s.mask], log1p=log1p)
    counts = np.random.default_rng(1).gamma(1.0, 8.0, (3, s.n_genes, 5, 5)).astype(np.float32)
    counts[0, 0, 0, 0] = -1.0  # negatives are clipped to 0
    x = torch.from_numpy(counts)
    lo = torch.as_tensor(scaler.lo, dtype=x.dtype).view(1, -1, 1, 1)
    hi = torch.as_tensor(scaler.hi, dtype=x.dtype).view(1, -1, 1, 1)
    # the torch formulas inference used before the scaler took tensors
    y_ref = ((torch.log1p(x.clamp_min(0)) if log1p else x) - lo) / (hi - lo)
    y_ref = y_ref.clamp(0, scaler.clip_max)
    y = scaler.transform(x, axis=1)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    z = y * (hi - lo) + lo
    back_ref = (torch.expm1(z) if log1p else z).clamp_min(0)
    torch.testing.assert_close(scaler.inverse(y, axis=1), back_ref, rtol=0, atol=0)
    # NumPy along any axis equals NumPy genes-first, and agrees with torch to float32 precision
    genes_first = scaler.transform(np.moveaxis(counts, 1, 0))
    np.testing.assert_array_equal(scaler.transform(counts, axis=1),
                                  np.moveaxis(genes_first, 0, 1))
    np.testing.assert_allclose(scaler.transform(counts, axis=1), y.numpy(), atol=1e-6)
    np.testing.assert_array_equal(scaler.inverse(y.numpy(), axis=1),
                                  np.moveaxis(scaler.inverse(np.moveaxis(y.numpy(), 1, 0)), 0, 1))
    with pytest.raises(ValueError, match="genes on axis 0"):
        scaler.transform(x)


def test_readme_splicing_replaces_only_marked_blocks(tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "update_readme.py"
    spec = importlib.util.spec_from_file_location("update_readme", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "a.md").write_text("| x |\n")
    text = ("top\n<!-- BEGIN results:a.md -->\nold\n<!-- END results:a.md -->\n"
            "<!-- BEGIN results:b.md -->\nkeep\n<!-- END results:b.md -->\n")
    out, missing = mod.splice(text, tmp_path)
    assert "| x |" in out and "old" not in out and "keep" in out
    assert missing == [str(tmp_path / "b.md")]

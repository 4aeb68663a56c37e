"""The device-resident patch pipeline gives the batches (and the training) of the NumPy one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample, tiny_config

from diffst.data.device_patches import DevicePatchSampler, products_usable, tile_key_map
from diffst.data.normalize import GeneScaler
from diffst.data.patches import (
    PatchSampler,
    collate,
    extract_patch,
    prepare_training_sample,
    tile_entropy,
)
from diffst.data.simulate import simulate_tissue
from diffst.train import TrainConfig, Trainer, batch_scaled_lr


def _prepared(noise: bool = True) -> list:
    """Two sections of different sizes (one needs padding for patch 30); with ``noise`` the
    image is random, so tile entropies rarely tie and tile order is unambiguous."""
    samples = [make_sample(seed=0, size=30), make_sample(seed=1, size=25)]
    rng = np.random.default_rng(7)
    if noise:
        for s in samples:
            s.image[:] = rng.integers(0, 256, s.image.shape)
    scaler = GeneScaler.fit([s.expr for s in samples], [s.mask for s in samples])
    return [prepare_training_sample(s, 5, scaler, k=4) for s in samples]


def _reference(samples: list, sec, rows, cols, transform, patch, t, tile, n):
    return collate([extract_patch(samples[i], int(r), int(c), patch, t, tile, n,
                                  int(x) % 4, bool(x // 4))
                    for i, r, c, x in zip(sec, rows, cols, transform, strict=True)])


@pytest.mark.parametrize("patch,products", [
    (10, (1, 8)), (10, (2, 8)), (10, (4, 8)), (10, (2, 40)), (10, (2, 64)), (10, (2, 6)),
    (10, None), (30, (2, 8)),
])
def test_device_batches_equal_the_numpy_patches(patch, products):
    prepared = _prepared()
    t, tile = products or (2, 8)
    dev = DevicePatchSampler(prepared, patch, 0.3, seed=3, image_products=products)
    assert (dev.products is not None) == (products is not None and products_usable(
        4, 5, patch, t, tile))
    old = PatchSampler(prepared, patch, 0.3, seed=0)
    sec, rows, cols, transform = dev.draw_indices(24)
    assert set(transform) == set(range(8)) or len(set(transform)) > 4
    new = dev.cut(sec, rows, cols, transform, t, tile, 6)
    ref = _reference(old.samples, sec, rows, cols, transform, patch, t, tile, 6)
    assert list(new) == list(ref)
    for key in ref:
        assert new[key].dtype == ref[key].dtype and new[key].shape == ref[key].shape, key
        assert new[key].is_contiguous(), key  # same memory layout as the NumPy batches
    for key in ("lr", "lr_up", "mask", "hr", "tissue_image", "tile_valid"):
        torch.testing.assert_close(new[key], ref[key], atol=1e-6, rtol=0, msg=key)
    # tiles: the same entropies in the same order, and the same tile wherever its entropy
    # is unique in the crop (no equal neighbour in the ranking; the last chosen tile may tie
    # with an unchosen one unless every tile was chosen)
    e_new, e_ref = _entropies(new["tiles"]), _entropies(ref["tiles"])
    np.testing.assert_allclose(e_new, e_ref, atol=1e-9)
    n_valid = int(ref["tile_valid"][0].sum())
    e = np.pad(e_ref[:, :n_valid], ((0, 0), (1, 1)), constant_values=np.inf)
    unique = (np.abs(e[:, 1:-1] - e[:, :-2]) > 1e-9) & (np.abs(e[:, 1:-1] - e[:, 2:]) > 1e-9)
    if n_valid == 6:
        unique[:, -1] = False
    assert unique.mean() > 0.5
    for key in ("tiles", "tile_centres"):
        got, want = new[key][:, :n_valid][unique], ref[key][:, :n_valid][unique]
        torch.testing.assert_close(got, want, atol=0, rtol=0, msg=key)


def _entropies(tiles: torch.Tensor) -> np.ndarray:
    """``(B, N)`` grey-level entropies of ``(B, N, 3, T, T)`` tiles in [0, 1]."""
    img = (tiles.numpy() * 255).round().astype(np.uint8).transpose(0, 1, 3, 4, 2)
    side = img.shape[2]
    return np.array([[tile_entropy(t.mean(2).astype(np.uint8), side)[0, 0] for t in row]
                     for row in img])


def test_precomputed_and_cropped_tiles_agree_even_with_ties():
    prepared = _prepared(noise=False)  # smooth image: many tiles have equal entropy
    fast = DevicePatchSampler(prepared, 10, 0.3, seed=0, image_products=(2, 4))
    slow = DevicePatchSampler(prepared, 10, 0.3, seed=0)
    assert fast.products == (2, 4) and slow.products is None
    idx = fast.draw_indices(32)
    a, b = fast.cut(*idx, 2, 4, 6), slow.cut(*idx, 2, 4, 6)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    # and the NumPy path ranks tiles of the same entropies (ties may be ordered differently)
    ref = _reference(PatchSampler(prepared, 10).samples, *idx, 10, 2, 4, 6)
    np.testing.assert_allclose(_entropies(a["tiles"]), _entropies(ref["tiles"]), atol=1e-9)


def test_tile_key_map_ranks_like_the_entropy():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 32, 3)).astype(np.uint8)
    img[:8, :8] = 100  # one flat tile: lowest entropy
    keys = tile_key_map(torch.from_numpy(img), 8, 4).numpy()
    assert keys.shape == (5, 7)
    ent = np.array([[tile_entropy(img[r : r + 8, c : c + 8].mean(2).astype(np.uint8), 8)[0, 0]
                     for c in range(0, 25, 4)] for r in range(0, 17, 4)])
    order_k, order_e = np.argsort(keys.ravel(), kind="stable"), np.argsort(-ent.ravel(),
                                                                           kind="stable")
    np.testing.assert_array_equal(ent.ravel()[order_k], ent.ravel()[order_e])
    assert keys.ravel().argmax() == 0


def test_sections_over_the_budget_stay_in_host_memory_and_give_the_same_batches():
    prepared = _prepared()
    whole = DevicePatchSampler(prepared, 10, seed=5, image_products=(2, 4))
    split = DevicePatchSampler(prepared, 10, seed=5, image_products=(2, 4),
                               device_budget=whole.pools[0].nbytes // 2)
    assert len(whole.pools) == 1 and len(split.pools) == 2
    assert 0 < split.device_bytes < whole.device_bytes
    for _ in range(3):
        a, b = whole.draw(12, 2, 4, 6), split.draw(12, 2, 4, 6)
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0, msg=key)


def test_the_random_state_alone_decides_the_next_batch():
    prepared = _prepared()
    a = DevicePatchSampler(prepared, 10, seed=11, image_products=(2, 4))
    a.draw(4, 2, 4, 6)
    state = a.rng.bit_generator.state
    first = a.draw(4, 2, 4, 6)
    b = DevicePatchSampler(prepared, 10, seed=0, image_products=(2, 4))
    b.rng.bit_generator.state = state
    second = b.draw(4, 2, 4, 6)
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=0, rtol=0)
    plain = a.draw(64, 2, 4, 6, augment=False)
    assert plain["hr"].shape == (64, 4, 10, 10)
    with pytest.raises(Exception, match="tissue"):
        DevicePatchSampler(prepared, 10, min_tissue=1.01)


def test_trainer_uses_the_device_pipeline_and_the_lr_rule():
    samples = [make_sample(seed=0)]
    tc = TrainConfig(steps=2, batch_size=32, patch=10, work_um_per_px=2.0, lr=1e-3,
                     lr_scaling="sqrt", compile=True)
    trainer = Trainer(samples, samples[0].genes, 5, tiny_config(), tc)
    assert isinstance(trainer.sampler, DevicePatchSampler) and trainer.sampler.products
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(2e-3)
    assert batch_scaled_lr(1e-4, 128, "linear") == pytest.approx(1.6e-3)
    assert batch_scaled_lr(1e-4, 128, "none") == 1e-4
    with pytest.raises(ValueError, match="lr_scaling"):
        batch_scaled_lr(1e-4, 8, "cubic")
    assert trainer.train_module is None  # TrainConfig.compile is used on CUDA only
    with pytest.raises(ValueError, match="data_pipeline"):
        Trainer(samples, samples[0].genes, 5, tiny_config(),
                TrainConfig(patch=10, work_um_per_px=2.0, data_pipeline="gpu"))


def test_fixed_seed_training_follows_the_loss_curve_of_the_numpy_pipeline():
    """Accuracy does not change: same model, seed and noise stream; the training step before
    (NumPy patches, NCHW weights) against today's default (device patches, channels-last
    weights on the CPU). The two pipelines draw different random patches, so the curves are compared
    statistically: in each window of 30 steps the mean losses may differ by at most 4
    standard errors of that difference (estimated from the spread of the per-step losses in
    the window: about a 1e-4 false-alarm rate per window for independent steps; the
    downward trend inside a window only widens the spread, i.e. makes it conservative). The
    tolerance is also required to be well below the loss drop over the run, so a pipeline
    whose batches were misaligned or scaled differently would fail."""
    tissue = simulate_tissue(seed=0, size_um=480.0, cell_um=8.0, n_genes=6)
    curves = {}
    for pipeline in ("numpy", "device"):
        # the disentangling loss at weight 0.1 falls steeply in these 120 steps, which keeps the
        # tolerance well below the drop of the total loss at this small size
        tc = TrainConfig(steps=120, batch_size=4, lr=2e-3, patch=20, work_um_per_px=2.0,
                         seed=0, data_pipeline=pipeline, disentangle_weight=0.1,
                         channels_last=False if pipeline == "numpy" else None)
        trainer = Trainer([tissue], tissue.genes, 5, tiny_config(), tc)
        trainer.fit(progress=False)
        curves[pipeline] = np.array(trainer.history).reshape(4, 30)
    old, new = curves["numpy"], curves["device"]
    diff = np.abs(old.mean(1) - new.mean(1))
    se = np.sqrt(old.var(1, ddof=1) / 30 + new.var(1, ddof=1) / 30)
    assert (diff <= 4 * se).all(), (old.mean(1), new.mean(1), se)
    drop = old.mean(1)[0] - old.mean(1)[-1]
    assert (4 * se[1:] < 0.75 * drop).all() and new.mean(1)[-1] < new.mean(1)[0] - 0.5 * drop

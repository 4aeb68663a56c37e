"""Training pairs pooled on shifted grids (``TrainConfig.grid_shifts``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import make_sample, tiny_config

from diffst.config import TrainConfig
from diffst.data.lr import grid_shifted, grids_within, raster_cells, simulate_lr
from diffst.train import Trainer


def test_one_grid_is_the_samples_themselves():
    samples = [make_sample(0), make_sample(1)]
    out = grid_shifted(samples, 5, 1)
    assert len(out) == 2 and all(a is b for a, b in zip(out, samples, strict=True))


def test_shifted_copies_keep_cells_on_their_image_pixels():
    sample = make_sample(0)
    out = grid_shifted([sample], 5, 2)
    assert len(out) == 4 and out[0] is sample
    offsets = {(sample.shape[0] - c.shape[0], sample.shape[1] - c.shape[1]) for c in out}
    assert offsets == {(0, 0), (0, 2), (2, 0), (2, 2)}
    for copy in out[1:]:
        dy, dx = sample.shape[0] - copy.shape[0], sample.shape[1] - copy.shape[1]
        np.testing.assert_array_equal(copy.expr, sample.expr[:, dy:, dx:])
        np.testing.assert_allclose(copy.cell_centres_px(), sample.cell_centres_px()[dy:, dx:])
        assert copy.image is sample.image  # shared, not copied


def test_a_shifted_grid_gives_other_lr_cells():
    sample = make_sample(0)
    plain, shifted = grid_shifted([sample], 5, 2)[0], grid_shifted([sample], 5, 2)[3]
    a, b = simulate_lr(plain, 5).expr, simulate_lr(shifted, 5).expr
    assert a.sum() > 0 and not np.array_equal(a[:, : b.shape[1], : b.shape[2]], b)


@pytest.mark.parametrize("shifts", [0, 6])
def test_shifts_outside_one_to_the_factor_are_refused(shifts):
    with pytest.raises(ValueError, match="grid_shifts must be between 1 and the factor 5"):
        grid_shifted([make_sample(0)], 5, shifts)


def test_trainer_draws_from_every_grid_and_keeps_the_depth_record():
    sample = make_sample(0, size=40)
    runs = {}
    for shifts in (1, 2):
        tc = TrainConfig(steps=1, batch_size=2, patch=10, work_um_per_px=2.0, seed=0,
                         grid_shifts=shifts, checkpoint_every=10)
        runs[shifts] = Trainer([sample], sample.genes, 5, tiny_config(n_genes=4), tc)
    one, four = runs[1], runs[2]
    assert len(four.sampler.counts) == 4 * len(one.sampler.counts)
    assert four.sampler.counts.sum() > 3 * one.sampler.counts.sum()
    assert four.lr_counts_per_um2 == one.lr_counts_per_um2
    assert four.counts_per_um2 == one.counts_per_um2
    assert np.isfinite(four.train_step())


def test_grids_are_limited_to_the_cell_budget():
    samples = [make_sample(0, size=40), make_sample(1, size=40)]
    cells = raster_cells(samples)
    assert cells == 3200  # 2 x 1600 HR cells
    assert grids_within(cells, 5, 3_000_000) == 5  # small data: never limited
    assert grids_within(cells, 5, 16 * 3200) == 4  # 25 copies would not fit, 16 do
    assert grids_within(cells, 5, 3199) == 1  # even one copy is over: one grid, no copies


def test_trainer_warns_and_uses_fewer_grids_over_the_budget():
    sample = make_sample(0, size=40)
    tc = TrainConfig(steps=1, batch_size=2, patch=10, work_um_per_px=2.0, seed=0,
                     grid_shifts=5, grid_cells_max=9 * 1600, checkpoint_every=10)
    with pytest.warns(UserWarning, match="3 x 3 pooling grids instead of 5 x 5"):
        tr = Trainer([sample], sample.genes, 5, tiny_config(n_genes=4), tc)
    assert tr.grid_shifts == 3 and len(tr.sampler.counts) == 9
    with pytest.warns(UserWarning, match="2 x 2 pooling grids instead of 5 x 5"):  # 2 x 9 > 9
        thin = Trainer([sample], sample.genes, 5, tiny_config(n_genes=4),
                       replace(tc, thin_inputs=0.5))
    assert thin.grid_shifts == 2 and len(thin.sampler.counts) == 2 * 4
    with pytest.raises(ValueError, match="grid_cells_max must be >= 1"):
        Trainer([sample], sample.genes, 5, tiny_config(n_genes=4),
                TrainConfig(steps=1, patch=10, grid_cells_max=0))

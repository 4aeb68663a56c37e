"""Rotations and mirrorings of a patch: inverses, tile centres, and their use while sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sample
from test_model_train import _trainer

from diffst.data.lr import simulate_lr
from diffst.data.symmetry import N_TRANSFORMS, turn, turn_centres, unturn
from diffst.infer import super_resolve


def test_the_eight_transforms_are_distinct_and_undone():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).view(2, 5, 5)
    turned = [turn(x, d) for d in range(N_TRANSFORMS)]
    assert len({tuple(t.flatten().tolist()) for t in turned}) == N_TRANSFORMS
    for d, t in enumerate(turned):
        torch.testing.assert_close(unturn(t, d), x)
    with pytest.raises(ValueError, match="0..7"):
        turn(x, 8)


@pytest.mark.parametrize("d", range(N_TRANSFORMS))
def test_tile_centres_move_with_the_map(d):
    """A one-hot map at grid cell (row 1, col 3) and its centre (x, y) turn to the same place."""
    n = 5
    grid = torch.zeros(n, n)
    grid[1, 3] = 1
    centre = torch.tensor([(3 + 0.5) / n, (1 + 0.5) / n])
    row, col = np.argwhere(turn(grid, d).numpy())[0]
    x, y = turn_centres(centre, d).tolist()
    assert (x, y) == pytest.approx(((col + 0.5) / n, (row + 0.5) / n))


def test_sampling_with_turns_keeps_the_maps_consistent_and_records_it():
    trainer = _trainer(steps=2)
    trainer.fit(progress=False)
    lr = simulate_lr(make_sample(seed=3), 5)
    kw = dict(sampler="mean", n_samples=8, seed=0, progress=False)
    plain = super_resolve(trainer.pipeline(), lr, **kw)
    turned = super_resolve(trainer.pipeline(), lr, turns=True, **kw)
    assert turned.meta["turns"] and not plain.meta["turns"] and turned.meta["steps"] == 1
    assert np.isfinite(turned.mean).all()
    pooled = turned.mean.reshape(turned.mean.shape[0], lr.shape[0], 5, lr.shape[1], 5)
    np.testing.assert_allclose(pooled.sum((2, 4))[:, lr.mask], lr.expr[:, lr.mask], rtol=1e-3)
    assert not np.allclose(turned.mean, plain.mean)  # the untrained model is not invariant

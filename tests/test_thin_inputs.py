"""Shallow, depth-matched training inputs (``TrainConfig.thin_inputs``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_sample, tiny_config

from diffst.config import TrainConfig
from diffst.data.lr import simulate_lr
from diffst.data.normalize import GeneScaler
from diffst.data.patches import depth_matched_lr, prepare_training_sample
from diffst.train import Trainer


def test_depth_matched_lr_is_a_thinned_pool_brought_back_to_depth():
    sample = make_sample(0, size=40)
    full = simulate_lr(sample, 5).expr
    shallow = depth_matched_lr(sample, 5, 0.25, seed=3)
    kept = shallow.expr * 0.25
    np.testing.assert_allclose(kept, np.rint(kept), atol=1e-4)  # whole molecules kept
    assert (kept <= full + 1e-4).all() and kept.sum() < 0.5 * full.sum()
    assert shallow.expr.sum() == pytest.approx(full.sum(), rel=0.1)  # back at the depth
    assert not np.array_equal(shallow.expr, full)
    np.testing.assert_array_equal(depth_matched_lr(sample, 5, 0.25, seed=3).expr, shallow.expr)
    assert not np.array_equal(depth_matched_lr(sample, 5, 0.25, seed=4).expr, shallow.expr)


def test_a_shallow_copy_keeps_the_section_as_its_target():
    sample = make_sample(0, size=40)
    scaler = GeneScaler.fit([sample.expr], [sample.mask], log1p=False)
    plain = prepare_training_sample(sample, 5, scaler, 2)
    shallow = prepare_training_sample(sample, 5, scaler, 2, input_fraction=0.2, seed=1)
    np.testing.assert_array_equal(shallow.hr, plain.hr)
    np.testing.assert_array_equal(shallow.mask, plain.mask)
    assert not np.allclose(shallow.lr, plain.lr)
    assert not np.allclose(shallow.lr_up, plain.lr_up)


def test_trainer_adds_one_shallow_copy_per_section_and_keeps_its_scales():
    sample = make_sample(0, size=40)
    runs = {}
    for thin in (0.0, 0.2):
        tc = TrainConfig(steps=1, batch_size=2, patch=10, work_um_per_px=2.0, seed=0,
                         grid_shifts=2, thin_inputs=thin, checkpoint_every=10)
        runs[thin] = Trainer([sample], sample.genes, 5, tiny_config(n_genes=4), tc)
    plain, both = runs[0.0], runs[0.2]
    assert len(both.sampler.counts) == 2 * len(plain.sampler.counts)  # 4 grids, 4 shallow
    assert both.scheduler_config.residual_scale == plain.scheduler_config.residual_scale
    np.testing.assert_array_equal(both.model.gene_graph.adjacency.numpy(),
                                  plain.model.gene_graph.adjacency.numpy())
    assert both.counts_per_um2 == plain.counts_per_um2
    assert np.isfinite(both.train_step())


@pytest.mark.parametrize("thin", [1.0, -0.1])
def test_thin_inputs_outside_zero_to_one_are_refused(thin):
    sample = make_sample(0, size=40)
    tc = TrainConfig(steps=1, batch_size=2, patch=10, work_um_per_px=2.0, thin_inputs=thin)
    with pytest.raises(ValueError, match="thin_inputs must be in"):
        Trainer([sample], sample.genes, 5, tiny_config(n_genes=4), tc)

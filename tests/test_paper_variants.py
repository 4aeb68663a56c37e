"""The Diff-ST paper's variants of the parts (``paper_variant``, ``--preset paper``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_sample, tiny_config

from diffst.benchmark.presets import get_preset, train_config
from diffst.cli import main
from diffst.config import PAPER_PARTS, TrainConfig, paper_variant
from diffst.data.lr import simulate_lr
from diffst.diffusion.schedule import NoiseSchedule
from diffst.diffusion.vlb import learned_log_variance, posterior_log_variance_bounds, vlb_terms
from diffst.infer import load_model, super_resolve
from diffst.model.config import SchedulerConfig
from diffst.model.gene_graph import expression_ratio, gene_adjacency
from diffst.model.modulation import WindowModulation
from diffst.train import Trainer, curriculum_keep


def test_paper_variant_maps_each_part_to_its_settings():
    model, scheduler, train = paper_variant(PAPER_PARTS)
    assert model == {"modulation": "window", "graph_edges": "paper", "learn_variance": True}
    assert scheduler == {"prediction": "epsilon"}
    assert train == {"curriculum_order": "ascending", "loss": "charbonnier"}
    assert paper_variant(["graph"]) == ({"graph_edges": "paper"}, {}, {})
    assert paper_variant(()) == ({}, {}, {})
    with pytest.raises(ValueError, match="unknown paper variant parts"):
        paper_variant(["everything"])


def test_window_modulation_mixes_only_within_a_window():
    torch.manual_seed(0)
    module = WindowModulation(8, window=3).eval()
    st, hist = torch.randn(2, 8, 9, 10), torch.randn(2, 8, 9, 10)
    changed = hist.clone()
    changed[:, :, :3, :3] += 5.0  # the top-left window only
    with torch.no_grad():
        diff = (module(st, changed) - module(st, hist)).abs().sum(1)
    assert diff.shape == (2, 9, 10)
    assert diff[:, :3, :3].min() > 0
    outside = diff.clone()
    outside[:, :3, :3] = 0
    assert outside.max() == 0
    off = WindowModulation(8, window=3, enabled=False)
    assert off(st, hist) is st


def test_expression_ratio_by_hand_and_the_fused_graph():
    # gene 0 = [1, 0, 0, 0], gene 1 = [1, 1, 0, 0], gene 2 = [0, 0, 2, 0]
    values = [np.array([[1.0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 2, 0]]).reshape(3, 2, 2)]
    masks = [np.ones((2, 2), bool)]
    ratio = expression_ratio(values, masks)
    np.testing.assert_allclose(ratio, [[1, 1, 0], [0.5, 1, 0], [0, 0, 1]], atol=1e-12)
    adj = gene_adjacency(values, masks, "paper")
    np.testing.assert_allclose(adj, adj.T, atol=1e-7)
    assert adj[0, 1] > 0 and adj[0, 2] == 0  # no shared expression, no co-expression
    cosine = gene_adjacency(values, masks, "cosine")
    assert not np.allclose(adj, cosine)
    with pytest.raises(ValueError, match="unknown gene graph edges"):
        gene_adjacency(values, masks, "ratio")


def test_ascending_curriculum_shows_the_lowest_entropy_tiles_first():
    valid = torch.tensor([[True] * 6 + [False] * 2, [True] * 8])
    desc = curriculum_keep(valid, 0.25)
    asc = curriculum_keep(valid, 0.25, "ascending")
    assert desc[0].tolist() == [True, True] + [False] * 6
    assert asc[0].tolist() == [False] * 4 + [True, True, False, False]
    assert asc[1].tolist() == [False] * 6 + [True, True]
    assert curriculum_keep(valid, 1.0, "ascending").equal(valid)


def test_learned_variance_spans_the_two_bounds_and_the_bound_term_vanishes_at_the_truth():
    schedule = NoiseSchedule(100)
    upper, lower = posterior_log_variance_bounds(schedule)
    t = torch.tensor([0, 5, 99])
    ones = torch.ones(3, 1, 2, 2)
    torch.testing.assert_close(learned_log_variance(schedule, ones, t)[:, 0, 0, 0],
                               upper[t].float())
    torch.testing.assert_close(learned_log_variance(schedule, -ones, t)[:, 0, 0, 0],
                               lower[t].float())
    x0, noise = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    t = torch.tensor([5, 50, 99])
    x_t = schedule.add_noise(x0, noise, t)
    exact = vlb_terms(schedule, x0, x_t, t, noise, -ones)  # true noise, true variance
    torch.testing.assert_close(exact, torch.zeros_like(exact), atol=1e-4, rtol=0)
    wrong = vlb_terms(schedule, x0, x_t, t, noise + 0.5, ones)
    assert wrong.min() > 0


def test_the_bound_term_trains_the_variance_output_only():
    samples = [make_sample(seed=0), make_sample(seed=1)]
    tc = TrainConfig(steps=2, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0,
                     loss="charbonnier", vlb_weight=1.0)
    trainer = Trainer(samples, samples[0].genes, 5, tiny_config(learn_variance=True), tc,
                      scheduler_config=SchedulerConfig(prediction="epsilon"))
    batch = trainer.draw_batch()
    torch.manual_seed(0)
    with_bound = trainer.loss(trainer.model, batch, 1.0, torch.Generator().manual_seed(1))
    trainer.tc.vlb_weight = 0.0
    without = trainer.loss(trainer.model, batch, 1.0, torch.Generator().manual_seed(1))
    head = trainer.model.unet.head[-1].weight  # (2G, C, 3, 3): prediction, then variance
    grad = torch.autograd.grad(with_bound - without, head)[0]
    g = len(trainer.genes)
    assert grad[g:].abs().sum() > 0
    assert grad[:g].abs().max() == 0


def test_a_model_with_every_paper_variant_trains_saves_and_samples(tmp_path):
    samples = [make_sample(seed=0), make_sample(seed=1)]
    model, scheduler, train = paper_variant(PAPER_PARTS)
    tc = TrainConfig(steps=3, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0, **train)
    trainer = Trainer(samples, samples[0].genes, 5, tiny_config(**model), tc,
                      scheduler_config=SchedulerConfig(**scheduler))
    losses = trainer.fit(progress=False)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert trainer.model.unet.head[-1].out_channels == 2 * len(trainer.genes)
    path = trainer.export_model(tmp_path / "paper.pt")
    pipeline = load_model(path)
    assert pipeline.model.config.modulation == "window"
    assert pipeline.model.config.graph_edges == "paper"
    assert pipeline.scheduler.prediction == "epsilon"
    lr = simulate_lr(make_sample(seed=2), 5)
    result = super_resolve(pipeline, lr, sampler="ddim", steps=2, n_samples=2, seed=0)
    assert result.mean.shape[0] == len(trainer.genes) and np.isfinite(result.mean).all()


def test_trainer_refuses_unknown_curriculum_order_and_loss():
    samples = [make_sample(seed=0)]
    for field, value in (("curriculum_order", "random"), ("loss", "l1")):
        tc = TrainConfig(steps=1, batch_size=2, patch=10, work_um_per_px=2.0, **{field: value})
        with pytest.raises(ValueError, match=f"{field} must be one of"):
            Trainer(samples, samples[0].genes, 5, tiny_config(), tc)


def test_paper_preset_switches_every_part_and_samples_as_the_paper():
    preset = get_preset("paper", "spots")
    assert preset.paper_variants == PAPER_PARTS
    assert (preset.sampler, preset.sample_steps, preset.self_tune) == ("ddim", 20, 0)
    assert not preset.turns
    assert preset.steps == get_preset("short", "spots").steps
    tc = train_config(preset, [make_sample()], 2, seed=0)
    assert (tc.curriculum_order, tc.loss) == ("ascending", "charbonnier")
    assert train_config(get_preset("short", "spots"), [make_sample()], 2, 0).loss == "mse"


def test_cli_names_an_unknown_paper_variant(tmp_path):
    result = CliRunner().invoke(main, ["benchmark", "--dataset", "simulated", "--preset",
                                       "quick", "--paper-variant", "graph,colour",
                                       "--out", str(tmp_path / "b")])
    assert result.exit_code != 0
    assert "--paper-variant" in result.output and "modulation" in result.output


def test_train_model_applies_the_paper_variants(tmp_path):
    from diffst.api import train_model

    sample = make_sample(seed=0)
    path = train_model([sample], 5, tmp_path / "m.pt", steps=2, batch_size=2, patch=10,
                       work_um_per_px=2.0, model_config=tiny_config(), progress=False,
                       paper_variants=["graph", "loss"])
    pipeline = load_model(path)
    assert pipeline.model.config.graph_edges == "paper"
    assert pipeline.model.config.learn_variance and pipeline.model.config.modulation == "cell"
    assert pipeline.scheduler.prediction == "epsilon"

"""The Diff-ST denoiser's parts, training, checkpoints and inference on tiny data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import make_sample, tiny_config

from diffst.api import ABLATIONS, model_config_for
from diffst.data.lr import simulate_lr
from diffst.data.sample import SampleError
from diffst.infer import blend_window, load_model, model_from_trainer, super_resolve, tile_origins
from diffst.model.config import SchedulerConfig
from diffst.model.diffst import DiffST
from diffst.model.gene_graph import build_gene_graph, coexpression_intensity
from diffst.train import TrainConfig, Trainer, check_choices, curriculum_keep, safe_load


def _trainer(steps=6, seed=0, log1p=False, **cfg) -> Trainer:
    samples = [make_sample(seed=0), make_sample(seed=1)]
    tc = TrainConfig(steps=steps, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0,
                     seed=seed, checkpoint_every=3, log1p=log1p)
    return Trainer(samples, samples[0].genes, 5, tiny_config(**cfg), tc)


def test_coexpression_graph_by_hand():
    a = np.array([[1.0, 0, 1, 0]])
    b = np.array([[1.0, 0, 1, 0]])
    c = np.array([[0.0, 1, 0, 1]])
    values = [np.stack([a, b, c])[:, 0, :].reshape(3, 2, 2)]
    inten = coexpression_intensity(values, [np.ones((2, 2), bool)])
    np.testing.assert_allclose(inten, [[1, 1, 0], [1, 1, 0], [0, 0, 1]], atol=1e-12)
    adj = build_gene_graph(inten, k=1)
    # genes 0 and 1 are linked (normalised weight 1/2), gene 2 only to itself.
    np.testing.assert_allclose(adj, [[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]], atol=1e-6)


@pytest.mark.parametrize("part", sorted(ABLATIONS))
def test_switching_each_part_off_changes_the_output(part):
    trainer = _trainer()
    batch = trainer.draw_batch()
    torch.manual_seed(0)
    full = DiffST(trainer.model_config, trainer.model.gene_graph.adjacency.numpy())
    off_cfg = dataclasses.replace(trainer.model_config, **{ABLATIONS[part]: False})
    off = DiffST(off_cfg, trainer.model.gene_graph.adjacency.numpy())
    off.load_state_dict(full.state_dict())
    for m in (full, off):
        m.eval()
    keep = curriculum_keep(batch.tile_valid, 1.0)
    z = torch.randn_like(batch.hr)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        out_full = full(z, t, full.encode_batch(batch, keep))
        out_off = off(z, t, off.encode_batch(batch, keep))
    assert not getattr(off_cfg, ABLATIONS[part])
    assert (out_full - out_off).abs().max() > 1e-4


def test_dynamic_attention_weights_depend_on_input():
    trainer = _trainer()
    trainer.model.eval()
    b1, b2 = trainer.draw_batch(), trainer.draw_batch()
    with torch.no_grad():
        c1, c2 = trainer.model.encode_batch(b1), trainer.model.encode_batch(b2)
    torch.testing.assert_close(c1.scale_weights.sum(1), torch.ones(2))
    assert (c1.scale_weights - c2.scale_weights).abs().max() > 0
    assert c1.aux_loss.item() > 0


def test_model_config_for_switches_parts_off():
    cfg = model_config_for(["graph", "attention"])
    assert not cfg.use_gene_graph and not cfg.use_dynamic_attention and cfg.use_modulation
    with pytest.raises(ValueError, match="unknown ablation"):
        model_config_for(["everything"])
    with pytest.raises(ValueError, match=r"\['prediction'\] are no longer model"):
        model_config_for(prediction="epsilon")


def test_curriculum_grows_the_visible_tiles():
    tc = TrainConfig(steps=90)
    assert [tc.tile_fraction(s) for s in (0, 40, 80)] == [0.25, 0.5, 1.0]
    valid = torch.ones(1, 8, dtype=torch.bool)
    assert curriculum_keep(valid, 0.25).sum() == 2
    assert curriculum_keep(valid, 1.0).sum() == 8


def test_training_lowers_the_loss_on_a_fixed_batch():
    trainer = _trainer()
    batch = trainer.draw_batch()
    gen = lambda: torch.Generator().manual_seed(123)  # noqa: E731
    before = trainer.loss(trainer.model, batch, 1.0, gen()).item()
    for _ in range(25):
        loss = trainer.loss(trainer.model, batch, 1.0, gen())
        trainer.opt.zero_grad()
        loss.backward()
        trainer.opt.step()
    after = trainer.loss(trainer.model, batch, 1.0, gen()).item()
    assert after < 0.8 * before


def test_checkpoint_resume_gives_the_same_next_steps(tmp_path):
    ref = _trainer(steps=6)
    ref.fit(progress=False)
    first = _trainer(steps=6)
    first.fit(steps=3, checkpoint=tmp_path / "ck.pt", progress=False)
    resumed = _trainer(steps=6)
    resumed.load_checkpoint(tmp_path / "ck.pt")
    assert resumed.step == 3
    resumed.fit(progress=False)
    assert resumed.history == pytest.approx(ref.history, rel=1e-5)
    for a, b in zip(resumed.model.parameters(), ref.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert state["step"] == 3


def test_count_scaling_is_recorded_and_a_checkpoint_resumes_only_with_it(tmp_path):
    linear, logged = _trainer(steps=2), _trainer(steps=2, log1p=True)
    assert not linear.scaler.log1p and logged.scaler.log1p
    assert linear.scaler.hi.max() > logged.scaler.hi.max()  # counts vs log counts
    logged.fit(steps=1, checkpoint=tmp_path / "ck.pt", progress=False)
    with pytest.raises(SampleError, match="log1p count scaling; resume with --log1p"):
        _trainer(steps=2).load_checkpoint(tmp_path / "ck.pt")
    logged.export_model(tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt").scaler.log1p


def test_model_file_round_trip_and_bad_files(tmp_path):
    trainer = _trainer(steps=2)
    trainer.fit(progress=False)
    path = trainer.export_model(tmp_path / "m.pt")
    lm = load_model(path)
    assert lm.genes == trainer.genes and lm.factor == 5
    for a, b in zip(lm.model.state_dict().values(), trainer.ema.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(Exception, match="expected a diffst.model/1"):
        safe_load(tmp_path / "other.pt", "diffst.model/1")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(Exception, match="junk.pt"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")


def test_super_resolve_shapes_mask_and_quantiles():
    trainer = _trainer(steps=2)
    trainer.fit(progress=False)
    hr = make_sample(seed=3, size=25)
    lr = simulate_lr(hr, 5)
    res = super_resolve(model_from_trainer(trainer), lr, steps=3, n_samples=3, patch=10,
                        overlap=5, progress=False)
    assert res.mean.shape == (4, 25, 25)
    assert (res.mean[:, ~res.mask] == 0).all()
    assert (res.q05 <= res.mean + 1e-5).all() and (res.mean <= res.q95 + 1e-5).all()
    assert (res.std >= 0).all() and res.std[:, res.mask].max() > 0
    with pytest.raises(Exception, match="genes not in the data"):
        super_resolve(model_from_trainer(trainer), lr.select_genes(["G0", "G1"]), steps=2,
                      progress=False)


def test_tiling_covers_the_raster():
    starts = tile_origins(47, 10, 5, 5)
    assert starts[0] == 0 and starts[-1] + 10 >= 45 and all(s % 5 == 0 for s in starts)
    w = blend_window(10, 2)
    assert w.shape == (10, 10) and w.min() > 0 and w[5, 5] == 1


def test_consistent_mse_ignores_per_spot_scale_but_not_the_pattern():
    trainer = _trainer(steps=1)
    batch = trainer.draw_batch()
    rs = trainer.scheduler_config.residual_scale
    tripled = (3 * batch.hr - batch.lr_up) / rs  # the truth's pattern, 3x its spot totals
    assert float(trainer.consistent_mse(tripled, batch)) < 1e-5
    flat = (batch.lr_up * 0 + 1 - batch.lr_up) / rs  # a constant map: the pattern is lost
    assert float(trainer.consistent_mse(flat, batch)) > 1e-3


def test_consistency_weight_enters_the_loss_and_needs_sample_prediction():
    plain = _trainer(steps=1)
    weighted = _trainer(steps=1)
    weighted.tc = dataclasses.replace(weighted.tc, consistency_weight=1.0)
    batch = plain.draw_batch()
    gen = [torch.Generator().manual_seed(0) for _ in range(2)]
    a = float(plain.loss(plain.model, batch, 1.0, gen[0]).detach())
    b = float(weighted.loss(weighted.model, batch, 1.0, gen[1]).detach())
    assert b > a
    samples = [make_sample(seed=0)]
    tc = TrainConfig(steps=1, batch_size=2, patch=10, work_um_per_px=2.0, consistency_weight=1.0)
    with pytest.raises(ValueError, match="consistency_weight needs prediction='sample'"):
        Trainer(samples, samples[0].genes, 5, tiny_config(), tc,
                scheduler_config=SchedulerConfig(prediction="epsilon"))


def test_cosine_lr_schedule_decays_to_zero_and_constant_keeps_the_rate():
    tc = TrainConfig(steps=10, lr_schedule="cosine")
    assert tc.lr_factor(0) == 1.0 and abs(tc.lr_factor(5) - 0.5) < 1e-12
    assert tc.lr_factor(10) == 0.0 and tc.lr_factor(20) == 0.0
    assert TrainConfig(steps=10).lr_factor(7) == 1.0
    trainer = _trainer(steps=4)
    trainer.tc = dataclasses.replace(trainer.tc, lr_schedule="cosine")
    rates = []
    for _ in range(4):
        trainer.train_step()
        rates.append(trainer.opt.param_groups[0]["lr"])
    expected = [trainer.base_lr * trainer.tc.lr_factor(step) for step in range(4)]
    np.testing.assert_allclose(rates, expected)
    assert rates[0] > rates[1] > rates[2] > rates[3] > 0
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        samples = [make_sample(seed=0)]
        Trainer(samples, samples[0].genes, 5, tiny_config(),
                TrainConfig(steps=1, batch_size=2, patch=10, work_um_per_px=2.0,
                            lr_schedule="step"))


def test_ema_warmup_sets_how_much_of_a_short_run_the_weights_average():
    fast, slow = TrainConfig(ema_decay=0.995), TrainConfig(ema_decay=0.995, ema_warmup=4.0)
    assert fast.ema_decay_at(0) == pytest.approx(0.1) and slow.ema_decay_at(0) == 0.25
    assert fast.ema_decay_at(5000) == slow.ema_decay_at(5000) == 0.995  # the cap

    def weights(tc: TrainConfig, n: int) -> np.ndarray:
        """Weight of each step's parameters in the EMA after ``n`` steps."""
        w = np.zeros(n)
        for k in range(n):
            w *= tc.ema_decay_at(k)
            w[k] = 1 - tc.ema_decay_at(k)
        return w

    late_fast, late_slow = weights(fast, 200)[-50:].sum(), weights(slow, 200)[-50:].sum()
    assert late_fast > 0.9 and late_slow < 0.7  # 4 averages over much more of the run
    with pytest.raises(ValueError, match="ema_warmup must be > 1"):
        check_choices(TrainConfig(ema_warmup=1.0))


def test_t_focus_trains_that_share_of_examples_at_the_last_noise_step():
    trainer = _trainer(steps=1)
    last = trainer.scheduler_config.num_train_timesteps - 1
    seen: list[torch.Tensor] = []
    add_noise = trainer.schedule.add_noise

    def spy(z0, noise, t):
        seen.append(t.clone())
        return add_noise(z0, noise, t)

    trainer.schedule.add_noise = spy
    batch = trainer.draw_batch()

    def steps_drawn(t_focus: float, draws: int = 200) -> torch.Tensor:
        trainer.tc = dataclasses.replace(trainer.tc, t_focus=t_focus)
        generator = torch.Generator().manual_seed(7)
        seen.clear()
        with torch.no_grad():
            for _ in range(draws):
                trainer.loss(trainer.model, batch, 1.0, generator)
        return torch.stack(seen)

    uniform, focused = steps_drawn(0.0), steps_drawn(0.5)
    assert (uniform == last).float().mean() < 0.01
    assert 0.4 < (focused == last).float().mean() < 0.6
    moved = focused[0] != uniform[0]  # one call: the focus is drawn after t and the noise
    assert bool(moved.any())
    assert bool((focused[0][moved] == last).all())  # the rest keep their uniform draws
    with pytest.raises(ValueError, match=r"t_focus must be in \[0, 1\)"):
        check_choices(TrainConfig(t_focus=1.0))


def test_the_cpu_trains_channels_last_in_float32_and_nchw_with_bf16_by_default():
    from diffst.train import trains_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert trains_channels_last(TrainConfig(), cpu)
    assert not trains_channels_last(TrainConfig(bf16=True), cpu)  # faster NCHW (speed.py)
    assert not trains_channels_last(TrainConfig(), cuda)
    assert trains_channels_last(TrainConfig(bf16=True, channels_last=True), cpu)  # as given
    assert not trains_channels_last(TrainConfig(channels_last=False), cpu)


def test_channels_last_training_gives_the_same_losses_and_returns_usual_weights():
    from diffst.precision import is_channels_last

    samples = [make_sample(seed=0), make_sample(seed=1)]
    runs = {}
    for layout in (False, None):  # NCHW, and the default (channels-last on the CPU)
        tc = TrainConfig(steps=6, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0,
                         checkpoint_every=10, channels_last=layout)
        runs[layout] = Trainer(samples, samples[0].genes, 5, tiny_config(), tc)
        runs[layout].fit(progress=False)
    nchw, default = runs[False], runs[None]
    assert not is_channels_last(nchw.model) and is_channels_last(default.model)
    np.testing.assert_allclose(default.history, nchw.history, rtol=1e-4)
    assert not is_channels_last(default.ema)  # what training returns keeps the usual layout
    # Adam steps near-zero gradients by about lr whatever their rounding, so weights agree to
    # lr x steps (the losses above are the check of the layout)
    bound = nchw.tc.lr * nchw.tc.steps
    for a, b in zip(default.ema.parameters(), nchw.ema.parameters(), strict=True):
        assert (a - b).abs().max() <= bound

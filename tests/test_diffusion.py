"""Noise schedule and samplers: closed forms and an oracle denoiser."""

from __future__ import annotations

import pytest
import torch

from diffst.diffusion import NoiseSchedule, make_sampler


def test_linear_schedule_matches_closed_form():
    sch = NoiseSchedule(1000, 1e-4, 0.02)
    assert sch.betas[0].item() == pytest.approx(1e-4)
    assert sch.betas[-1].item() == pytest.approx(0.02)
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(sch.alphas_cumprod, expected)
    assert sch.abar(-1).item() == 1.0
    steps = sch.respaced_timesteps(20)
    assert len(steps) == 20 and steps[0] == 950 and steps[-1] == 0
    assert steps == sorted(steps, reverse=True)


def test_add_noise_statistics():
    sch = NoiseSchedule()
    x0 = torch.ones(4000)
    noise = torch.randn(4000, generator=torch.Generator().manual_seed(0))
    t = torch.full((1,), 500)
    xt = sch.add_noise(x0[None], noise[None], t)[0]
    ab = sch.abar(500).item()
    assert xt.mean().item() == pytest.approx(ab**0.5, abs=0.05)
    assert xt.std().item() == pytest.approx((1 - ab) ** 0.5, abs=0.05)


@pytest.mark.parametrize("name,steps", [("ddim", 20), ("dpmpp", 10), ("ddim", 5), ("mean", 1)])
def test_oracle_denoiser_recovers_the_clean_sample(name, steps):
    """With the exact noise prediction for a known x0, deterministic samplers return x0."""
    sch = NoiseSchedule()
    x0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5

    def eps_fn(x, t):
        ab = sch.abar(t.cpu()).float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    out = make_sampler(name, sch, steps).sample(eps_fn, x0.shape,
                                                 generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=1e-4)


def test_ddpm_sampler_is_stochastic_and_projection_applies():
    sch = NoiseSchedule()
    x0 = torch.zeros(1, 1, 4, 4)

    def eps_fn(x, t):
        ab = sch.abar(t.cpu()).float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    a = make_sampler("ddpm", sch, 50).sample(eps_fn, x0.shape, torch.Generator().manual_seed(0))
    assert a.abs().max() < 0.05
    clipped = make_sampler("ddim", sch, 10, clip_x0=lambda z: z.clamp(0.5, 1.0))
    out = clipped.sample(eps_fn, x0.shape, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.full_like(out, 0.5), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler", sch)


def test_posterior_mean_sampler_makes_one_call_at_the_noisiest_step():
    """The one-step estimate is the denoiser's x0 at T - 1, whatever the start noise."""
    sch = NoiseSchedule()
    calls = []
    target = torch.full((3, 2, 4, 4), 0.25)

    def eps_fn(x, t):
        calls.append(t.tolist())
        return sch.to_epsilon(target, x, t, "sample")

    sampler = make_sampler("mean", sch, 20)
    a = sampler.sample(eps_fn, target.shape, torch.Generator().manual_seed(0))
    b = sampler.sample(eps_fn, target.shape, torch.Generator().manual_seed(1))
    assert calls == [[999] * 3, [999] * 3]
    torch.testing.assert_close(a, target, atol=1e-3, rtol=0)
    torch.testing.assert_close(b, target, atol=1e-3, rtol=0)


@pytest.mark.parametrize("prediction", ["epsilon", "v", "sample"])
def test_prediction_targets_convert_back_to_the_noise(prediction):
    sch = NoiseSchedule()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    t = torch.tensor([0, 400, 999])
    xt = sch.add_noise(x0, noise, t)
    target = sch.training_target(x0, noise, t, prediction)
    torch.testing.assert_close(sch.to_epsilon(target, xt, t, prediction), noise,
                               atol=2e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="unknown prediction"):
        sch.training_target(x0, noise, t, "score")

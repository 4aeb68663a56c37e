"""The variational-bound term that trains a learned reverse-process variance.

For a denoiser that also outputs, per value, ``v`` (about ``[-1, 1]``), the reverse step
``p(x_{t-1} | x_t)`` has the log variance ``f log beta_t + (1 - f) log beta~_t`` with
``f = (v + 1) / 2``: an interpolation between the DDPM's upper and lower bounds (Nichol &
Dhariwal 2021). Its mean comes from the noise estimate with the gradient stopped, so this term
trains the variance only. At ``t > 0`` the term is the KL divergence from the true posterior
``q(x_{t-1} | x_t, x_0)`` (nats per value); at ``t = 0`` the Gaussian negative log-likelihood
of ``x_0`` (a continuous stand-in for the discretised decoder of image models).
"""

from __future__ import annotations

import math

import torch

from diffst.diffusion.schedule import NoiseSchedule


def _per_step(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` ``(T,)`` float64 as float32, shaped to broadcast over ``like``."""
    picked = values[t.cpu()].to(like.device, torch.float32)
    return picked.view(-1, *([1] * (like.ndim - 1)))


def posterior_log_variance_bounds(schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log beta_t, log beta~_t)`` ``(T,)`` float64: the reverse variance's upper and lower
    bounds; ``beta~_0`` (zero) is replaced by ``beta~_1`` so its log stays finite."""
    betas = schedule.betas
    abar = schedule.alphas_cumprod
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    tilde = betas * (1 - abar_prev) / (1 - abar)
    tilde = torch.cat([tilde[1:2], tilde[1:]])
    return betas.log(), tilde.log()


def learned_log_variance(schedule: NoiseSchedule, v: torch.Tensor,
                         t: torch.Tensor) -> torch.Tensor:
    """Log variance of the reverse step for the interpolation values ``v`` at steps ``t``
    ``(B,)``; same shape as ``v``."""
    return _interpolate(posterior_log_variance_bounds(schedule), v, t)


def _interpolate(bounds: tuple[torch.Tensor, torch.Tensor], v: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
    """``f upper_t + (1 - f) lower_t`` with ``f = (v + 1) / 2`` (``bounds`` ``(T,)`` each)."""
    upper, lower = bounds
    frac = (v + 1) / 2
    return frac * _per_step(upper, t, v) + (1 - frac) * _per_step(lower, t, v)


def posterior_mean(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
    """Mean of ``q(x_{t-1} | x_t, x_0)`` for steps ``t`` ``(B,)``; shape of ``x0``."""
    abar = schedule.alphas_cumprod
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    coef_x0 = schedule.betas * abar_prev.sqrt() / (1 - abar)
    coef_xt = (1 - schedule.betas).sqrt() * (1 - abar_prev) / (1 - abar)
    return _per_step(coef_x0, t, x0) * x0 + _per_step(coef_xt, t, x0) * x_t


def vlb_terms(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              eps_hat: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-value bound term (nats), shape of ``x0`` ``(B, G, P, P)``.

    Args:
        x0, x_t: clean and noised diffusion variables; ``t`` ``(B,)`` their steps.
        eps_hat: the denoiser's noise estimate (its gradient is stopped here).
        v: the denoiser's variance interpolation values.
    """
    ab = _per_step(schedule.alphas_cumprod, t, x0)
    x0_hat = (x_t - (1 - ab).sqrt() * eps_hat.detach()) / ab.sqrt()
    mean_model = posterior_mean(schedule, x0_hat, x_t, t)
    bounds = posterior_log_variance_bounds(schedule)
    log_var_model = _interpolate(bounds, v, t)
    log_var_true = _per_step(bounds[1], t, x0)
    mean_true = posterior_mean(schedule, x0, x_t, t)
    kl = 0.5 * (log_var_model - log_var_true - 1 + (log_var_true - log_var_model).exp()
                + (mean_true - mean_model) ** 2 * (-log_var_model).exp())
    nll = 0.5 * (math.log(2 * math.pi) + log_var_model
                 + (x0 - mean_model) ** 2 * (-log_var_model).exp())
    first = (t == 0).to(x0.device).view(-1, *([1] * (x0.ndim - 1)))
    return torch.where(first, nll, kl)

"""Reverse-process samplers over a :class:`NoiseSchedule`.

Each sampler walks a descending list of training timesteps and calls a user function
``eps_fn(x_t, t) -> eps`` (the denoiser with its conditioning already bound, its output
converted to the noise it implies by :meth:`NoiseSchedule.to_epsilon` whatever its prediction
target). They hold no model: the same denoiser works with any of them.

* :class:`DDPMSampler`: ancestral sampling on respaced steps (Nichol & Dhariwal 2021 respacing).
* :class:`DDIMSampler`: deterministic (``eta=0``) or stochastic DDIM (Song et al. 2021).
* :class:`DPMSolverPPSampler`: 2nd-order multistep DPM-Solver++ in data prediction
  (Lu et al. 2022), good at 5-20 steps.
* :class:`PosteriorMeanSampler`: no integration; one call at the noisiest step, whose
  clean-sample estimate is the denoiser's estimate of the conditional mean ``E[x_0 | cond]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffst.diffusion.schedule import NoiseSchedule
from diffst.model.config import SAMPLERS

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
X0Fn = Callable[[torch.Tensor], torch.Tensor]


class _Sampler:
    """Shared machinery. ``clip_x0`` projects every clean-sample estimate, either by clamping to
    ``[-clip_x0, clip_x0]`` (a number) or with a callable (e.g. onto the valid data range)."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 20,
                 clip_x0: float | X0Fn | None = None):
        self.schedule = schedule
        self.timesteps = schedule.respaced_timesteps(num_steps)
        self.clip_x0 = clip_x0

    def _abar(self, t: int) -> float:
        return float(self.schedule.abar(t))

    def _x0_from_eps(self, x: torch.Tensor, eps: torch.Tensor, ab: float) -> torch.Tensor:
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
        if callable(self.clip_x0):
            x0 = self.clip_x0(x0)
        elif self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0

    def _eps_from_x0(self, x: torch.Tensor, x0: torch.Tensor, ab: float) -> torch.Tensor:
        return (x - ab**0.5 * x0) / (1 - ab) ** 0.5

    def _call(self, eps_fn: EpsFn, x: torch.Tensor, t: int) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return eps_fn(x, tt).float()

    def sample(
        self,
        eps_fn: EpsFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Draw ``x_T ~ N(0, I)`` of ``shape`` and integrate to ``x_0``."""
        x = torch.randn(shape, generator=generator, device="cpu").to(device)
        return self.run(eps_fn, x, generator=generator, progress=progress)

    def run(self, eps_fn: EpsFn, x: torch.Tensor, generator=None, progress=None) -> torch.Tensor:
        raise NotImplementedError

    def _noise_like(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, device="cpu").to(x.device)


class DDIMSampler(_Sampler):
    """DDIM on respaced steps; ``eta=0`` is deterministic, ``eta=1`` matches DDPM variance."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 20, eta: float = 0.0,
                 clip_x0: float | X0Fn | None = None):
        super().__init__(schedule, num_steps, clip_x0)
        self.eta = float(eta)

    def step(self, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        """One update ``x_t -> x_{t_prev}`` (``t_prev = -1`` ends at the clean sample)."""
        ab, ab_prev = self._abar(t), self._abar(t_prev)
        x0 = self._x0_from_eps(x, eps, ab)
        eps = self._eps_from_x0(x, x0, ab) if self.clip_x0 is not None else eps
        sigma = self.eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
        direction = max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps
        out = ab_prev**0.5 * x0 + direction
        if sigma > 0 and noise is not None:
            out = out + sigma * noise
        return out

    def run(self, eps_fn: EpsFn, x: torch.Tensor, generator=None, progress=None) -> torch.Tensor:
        """Integrate from ``x`` at the first timestep down to ``x_0``."""
        steps = self.timesteps + [-1]
        for i, (t, t_prev) in enumerate(zip(steps[:-1], steps[1:], strict=True)):
            eps = self._call(eps_fn, x, t)
            noise = self._noise_like(x, generator) if self.eta > 0 else None
            x = self.step(eps, t, t_prev, x, noise)
            if progress is not None:
                progress(i)
        return x


class DDPMSampler(DDIMSampler):
    """Ancestral DDPM sampling on respaced steps (DDIM with ``eta = 1``)."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 1000,
                 clip_x0: float | X0Fn | None = None):
        super().__init__(schedule, num_steps, eta=1.0, clip_x0=clip_x0)


class DPMSolverPPSampler(_Sampler):
    """Multistep DPM-Solver++(2M) with data prediction; first step is first order."""

    def _lambda(self, t: int) -> float:
        ab = self._abar(t)
        return 0.5 * torch.log(torch.tensor(ab / (1 - ab))).item()

    def run(self, eps_fn: EpsFn, x: torch.Tensor, generator=None, progress=None) -> torch.Tensor:
        """Integrate from ``x`` at the first timestep down to ``x_0``."""
        ts = self.timesteps
        prev_x0: torch.Tensor | None = None
        prev_h: float | None = None
        for i, t in enumerate(ts):
            ab = self._abar(t)
            x0 = self._x0_from_eps(x, self._call(eps_fn, x, t), ab)
            if i == len(ts) - 1:
                x = x0
            else:
                t_next = ts[i + 1]
                ab_next = self._abar(t_next)
                h = self._lambda(t_next) - self._lambda(t)
                sigma_next, sigma = (1 - ab_next) ** 0.5, (1 - ab) ** 0.5
                decay = torch.expm1(torch.tensor(-h)).item()  # e^{-h} - 1
                if prev_x0 is None:
                    d = x0
                else:
                    r = prev_h / h
                    d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
                x = (sigma_next / sigma) * x - ab_next**0.5 * decay * d
                prev_x0, prev_h = x0, h
            if progress is not None:
                progress(i)
        return x


class PosteriorMeanSampler(_Sampler):
    """The clean-sample estimate at the last training step ``T - 1``, from one network call.

    At ``T - 1`` the input holds almost no signal (``abar`` about 4e-5 for the linear schedule),
    so a denoiser trained with the mean squared error on the clean sample returns (an estimate
    of) the conditional mean ``E[x_0 | cond]``: the map that minimises the expected squared
    error, without the spread of a drawn sample. ``num_steps`` is ignored.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 1,
                 clip_x0: float | X0Fn | None = None):
        super().__init__(schedule, 1, clip_x0)
        self.timesteps = [schedule.num_train_timesteps - 1]

    def run(self, eps_fn: EpsFn, x: torch.Tensor, generator=None, progress=None) -> torch.Tensor:
        """The projected clean-sample estimate at ``T - 1`` for the start noise ``x``."""
        t = self.timesteps[0]
        x0 = self._x0_from_eps(x, self._call(eps_fn, x, t), self._abar(t))
        if progress is not None:
            progress(0)
        return x0


def make_sampler(name: str, schedule: NoiseSchedule, num_steps: int = 20,
                 clip_x0: float | X0Fn | None = None, eta: float = 0.0) -> _Sampler:
    """Sampler by name: ``ddim`` (default), ``ddpm``, ``dpmpp`` or ``mean`` (one-step
    posterior mean, :class:`PosteriorMeanSampler`).

    ``eta`` (DDIM only) adds fresh noise at every step: 0 is deterministic given the start
    noise, 1 has the DDPM variance. Stochastic steps widen the spread of the draws, which a
    briefly trained model under-disperses (``benchmarks/calibration.py`` measures it).
    """
    name = name.lower()
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta and name != "ddim":
        raise ValueError(f"eta applies to the ddim sampler only, not {name!r}")
    if name == "ddim":
        return DDIMSampler(schedule, num_steps, eta=eta, clip_x0=clip_x0)
    if name == "ddpm":
        return DDPMSampler(schedule, num_steps, clip_x0=clip_x0)
    if name in ("dpmpp", "dpm-solver++", "dpmsolver++"):
        return DPMSolverPPSampler(schedule, num_steps, clip_x0=clip_x0)
    if name == "mean":
        return PosteriorMeanSampler(schedule, num_steps, clip_x0=clip_x0)
    raise ValueError(f"unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}")

"""The DDPM forward process: a variance schedule and the noising of clean samples."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from diffst.model.config import SchedulerConfig


class NoiseSchedule:
    """Discrete DDPM schedule with ``num_train_timesteps`` steps.

    ``kind="linear"`` uses betas linearly spaced in ``[beta_start, beta_end]`` (Ho et al. 2020;
    the Diff-ST release uses 1000 linear steps). ``alphas_cumprod[t]`` is the signal fraction
    ``abar_t`` at step ``t`` (0-based).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        kind: str = "linear",
    ) -> None:
        if num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be >= 2")
        self.num_train_timesteps = int(num_train_timesteps)
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        elif kind == "scaled_linear":
            betas = (
                torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps,
                               dtype=torch.float64) ** 2
            )
        else:
            raise ValueError(f"unknown schedule kind {kind!r}: use 'linear' or 'scaled_linear'")
        self.kind = kind
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    @classmethod
    def from_config(cls, config: SchedulerConfig) -> NoiseSchedule:
        """The schedule a :class:`~diffst.model.config.SchedulerConfig` describes."""
        return cls(config.num_train_timesteps, config.beta_start, config.beta_end,
                   config.schedule)

    def abar(self, t: torch.Tensor | int) -> torch.Tensor:
        """``abar_t`` for integer steps ``t`` (tensor of any shape); ``t = -1`` gives 1."""
        t = torch.as_tensor(t, dtype=torch.long)
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        return padded[t + 1]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``; ``t`` is ``(B,)``."""
        ab = self.abar(t.cpu()).to(x0.device, torch.float32).view(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                        prediction: str) -> torch.Tensor:
        """What a denoiser of type ``prediction`` (epsilon, v or sample) should output."""
        if prediction == "epsilon":
            return noise
        if prediction == "sample":
            return x0
        if prediction == "v":
            ab = self.abar(t.cpu()).to(x0.device, torch.float32).view(-1, *([1] * (x0.ndim - 1)))
            return ab.sqrt() * noise - (1 - ab).sqrt() * x0
        raise ValueError(f"unknown prediction type {prediction!r}")

    def to_epsilon(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                   prediction: str) -> torch.Tensor:
        """Convert a denoiser output of type ``prediction`` to the noise it implies."""
        if prediction == "epsilon":
            return output
        ab = self.abar(t.cpu()).to(x_t.device, torch.float32).view(-1, *([1] * (x_t.ndim - 1)))
        if prediction == "sample":
            return (x_t - ab.sqrt() * output) / (1 - ab).sqrt()
        if prediction == "v":
            return ab.sqrt() * output + (1 - ab).sqrt() * x_t
        raise ValueError(f"unknown prediction type {prediction!r}")

    def respaced_timesteps(self, num_steps: int) -> list[int]:
        """``num_steps`` training steps, evenly spaced, descending, ending at step 0."""
        if not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_steps must be in 1..{self.num_train_timesteps}, got {num_steps}"
            )
        stride = self.num_train_timesteps / num_steps
        steps = [int(round(stride * i)) for i in range(num_steps)]
        return sorted(set(steps), reverse=True)

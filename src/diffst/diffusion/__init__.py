"""Noise schedules and samplers, kept separate from the denoiser (as in diffusers)."""

from diffst.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverPPSampler, make_sampler
from diffst.diffusion.schedule import NoiseSchedule

__all__ = ["NoiseSchedule", "DDIMSampler", "DDPMSampler", "DPMSolverPPSampler", "make_sampler"]

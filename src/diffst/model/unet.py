"""A small conditional U-Net, the denoiser of the noisy HR residual map.

What it outputs is the configured prediction target
(:attr:`diffst.model.config.SchedulerConfig.prediction`): the clean residual (``sample``, the
default), the noise (``epsilon``) or the velocity (``v``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffst.model.histology import _groups


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps ``(B,)`` -> ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    """Residual conv block with FiLM conditioning on the time embedding."""

    def __init__(self, cin: int, cout: int, time_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class ConditionalUNet(nn.Module):
    """U-Net over ``(B, in_ch, P, P)`` with condition maps injected at every level.

    ``cond`` ``(B, cond_ch, P, P)`` is concatenated to the input and, average-pooled, added to
    each coarser level. Inputs whose side is not a multiple of ``2**(levels-1)`` are padded
    (replicate) and the output cropped back.
    """

    def __init__(self, in_ch: int, out_ch: int, cond_ch: int, channels: int,
                 mults: tuple[int, ...], time_dim: int) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(),
                                      nn.Linear(time_dim, time_dim))
        widths = [channels * m for m in mults]
        self.stem = nn.Conv2d(in_ch + cond_ch, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.cond_proj = nn.ModuleList()
        prev = widths[0]
        for i, w in enumerate(widths):
            self.down.append(ResBlock(prev, w, time_dim))
            self.cond_proj.append(nn.Conv2d(cond_ch, w, 1) if i > 0 else nn.Identity())
            prev = w
        self.mid = ResBlock(prev, prev, time_dim)
        self.up = nn.ModuleList()
        for w in reversed(widths):
            self.up.append(ResBlock(prev + w, w, time_dim))
            prev = w
        self.head = nn.Sequential(nn.GroupNorm(_groups(prev), prev), nn.SiLU(),
                                  nn.Conv2d(prev, out_ch, 3, padding=1))
        self.levels = len(widths)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predict ``(B, out_ch, P, P)`` from input ``x``, steps ``t`` ``(B,)`` and ``cond``."""
        size = x.shape[-2:]
        mult = 2 ** (self.levels - 1)
        pad_h, pad_w = (-size[0]) % mult, (-size[1]) % mult
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            cond = F.pad(cond, (0, pad_w, 0, pad_h), mode="replicate")
        temb = self.time_mlp(timestep_embedding(t, self.time_dim))
        h = self.stem(torch.cat([x, cond], 1))
        skips = []
        for i, (block, proj) in enumerate(zip(self.down, self.cond_proj, strict=True)):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = block(h, temb)
            if i > 0:
                h = h + proj(F.adaptive_avg_pool2d(cond, h.shape[-2:]))
            skips.append(h)
        h = self.mid(h, temb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), temb)
        out = self.head(h)
        return out[..., : size[0], : size[1]]

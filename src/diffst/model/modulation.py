"""Cross-modal adaptive modulation: histology features re-weight ST features."""

from __future__ import annotations

import torch
from torch import nn


class CrossModalModulation(nn.Module):
    """Modulate ST features ``(B, C, P, P)`` with histology features of the same shape.

    Per raster cell, fully connected layers (1x1 convolutions) compute a scale ``gamma`` and a
    shift ``beta`` from the histology features, and a cross-modal affinity
    ``a = sigmoid(FC([st, hist]))`` in ``(0, 1)``; the output blends the modulated features with
    the residual: ``a * ((1 + gamma) * st + beta) + (1 - a) * st``. Disabled, it returns ``st``.
    """

    def __init__(self, channels: int, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.scale_shift = nn.Sequential(
            nn.Conv2d(channels, channels, 1), nn.SiLU(), nn.Conv2d(channels, 2 * channels, 1)
        )
        self.affinity = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 1), nn.SiLU(), nn.Conv2d(channels, channels, 1)
        )

    def forward(self, st: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """Return modulated ST features, same shape as ``st``."""
        if not self.enabled:
            return st
        gamma, beta = self.scale_shift(hist).chunk(2, dim=1)
        a = torch.sigmoid(self.affinity(torch.cat([st, hist], 1)))
        return a * ((1 + gamma) * st + beta) + (1 - a) * st

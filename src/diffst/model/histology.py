"""Histology encoders: tissue level (whole patch, downscaled) and cell level (small tiles)."""

from __future__ import annotations

import math

import torch
from torch import nn


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(_groups(cout), cout),
        nn.SiLU(),
    )


def _groups(c: int) -> int:
    for g in (8, 4, 2):
        if c % g == 0:
            return g
    return 1


class TissueEncoder(nn.Module):
    """Tissue-level encoder: ``(B, 3, P*t, P*t)`` image -> ``(B, C, P, P)`` at raster resolution.

    ``t = px_per_cell`` must be a power of two; each halving is a stride-2 convolution.
    Also returns a coarser context map (``(B, C, P, P)``, average over a 4x4-cell neighbourhood)
    as the tissue-level end of the multi-scale pyramid.
    """

    def __init__(self, out_channels: int, px_per_cell: int) -> None:
        super().__init__()
        n_down = int(round(math.log2(px_per_cell)))
        if 2**n_down != px_per_cell:
            raise ValueError(f"tissue_px_per_cell must be a power of 2, got {px_per_cell}")
        width = max(out_channels // 2, 8)
        layers: list[nn.Module] = [_conv_block(3, width)]
        for _ in range(n_down):
            layers.append(_conv_block(width, width, stride=2))
        layers.append(_conv_block(width, out_channels))
        self.net = nn.Sequential(*layers)
        self.context = nn.Sequential(nn.AvgPool2d(5, stride=1, padding=2, count_include_pad=False),
                                     _conv_block(out_channels, out_channels))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(local, context)`` feature maps, both ``(B, C, P, P)``."""
        local = self.net(image)
        return local, self.context(local)


class CellTileEncoder(nn.Module):
    """Cell-level encoder: ``(B, N, 3, T, T)`` tiles + ``(B, N, 2)`` centres -> ``(B, N, D)``.

    Tile centres (in ``[0, 1]`` patch coordinates) are added as Fourier positional features so
    that attention knows where each tile lies.
    """

    def __init__(self, dim: int, n_freq: int = 4) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            _conv_block(3, 16, stride=2), _conv_block(16, 32, stride=2), _conv_block(32, dim),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.register_buffer("freqs", (2.0 ** torch.arange(n_freq)) * math.pi, persistent=False)
        self.pos = nn.Linear(4 * n_freq, dim)

    def forward(self, tiles: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """Encode tiles; returns tokens ``(B, N, D)``."""
        b, n = tiles.shape[:2]
        feats = self.cnn(tiles.flatten(0, 1)).view(b, n, -1)
        return feats + self.pos(fourier_features(centres, self.freqs))


def fourier_features(xy: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``(..., 2)`` coordinates -> ``(..., 4 * len(freqs))`` sin/cos features."""
    angles = xy.unsqueeze(-1) * freqs  # (..., 2, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)

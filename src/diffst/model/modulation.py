"""Cross-modal adaptive modulation: histology features re-weight ST features.

:class:`CrossModalModulation` (diffst's default) gates a FiLM scale/shift with a per-cell
affinity; :class:`WindowModulation` is our reading of the Diff-ST paper's window-wise
cross-modal affinity modulation (``DiffSTConfig(modulation="window")``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class WindowModulation(nn.Module):
    """Window-wise cross-modal affinity modulation of ST features ``(B, C, P, P)``.

    The patch is cut into ``window`` x ``window`` windows of raster cells (one LR cell's HR
    cells when ``window`` is the factor; sides that are not a multiple are padded and cropped
    back). Within each window, every ST feature vector (query) attends to the histology feature
    vectors (keys, values) of the same window: the cross-modal affinity is
    ``softmax(q k^T / sqrt(C))`` over the window's cells. Fully connected layers map the
    attended histology features to a scale ``gamma`` and shift ``beta`` per cell, and the
    output is ``(1 + gamma) * st + beta``. Disabled, it returns ``st``.
    """

    def __init__(self, channels: int, window: int, enabled: bool = True) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be a positive integer, got {window}")
        self.enabled, self.window = enabled, int(window)
        self.query = nn.Linear(channels, channels)
        self.key_value = nn.Linear(channels, 2 * channels)
        self.scale_shift = nn.Sequential(
            nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, 2 * channels)
        )

    def forward(self, st: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """Return modulated ST features, same shape as ``st``."""
        if not self.enabled:
            return st
        b, c, h, w = st.shape
        win = self.window
        pad_h, pad_w = (-h) % win, (-w) % win
        st_w = _windows(F.pad(st, (0, pad_w, 0, pad_h), mode="replicate"), win)
        hist_w = _windows(F.pad(hist, (0, pad_w, 0, pad_h), mode="replicate"), win)
        key, value = self.key_value(hist_w).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(self.query(st_w), key, value)
        gamma, beta = self.scale_shift(attended).chunk(2, dim=-1)
        out = _unwindow((1 + gamma) * st_w + beta, b, h + pad_h, w + pad_w, win)
        return out[..., :h, :w]


def _windows(x: torch.Tensor, win: int) -> torch.Tensor:
    """``(B, C, H, W)`` with ``H, W`` multiples of ``win`` -> ``(B * nH * nW, win * win, C)``."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // win, win, w // win, win).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, win * win, c)


def _unwindow(x: torch.Tensor, b: int, h: int, w: int, win: int) -> torch.Tensor:
    """Inverse of :func:`_windows`: ``(B * nH * nW, win * win, C)`` -> ``(B, C, H, W)``."""
    c = x.shape[-1]
    x = x.view(b, h // win, w // win, win, win, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, h, w)

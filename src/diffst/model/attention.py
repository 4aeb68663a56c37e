"""Dynamic cross-attention over multi-scale histology features.

Three histology scales describe every raster cell: cell level (tokens of small full-resolution
tiles, attended by the ST features), tissue level (the patch image downscaled) and context level
(tissue features averaged over a neighbourhood). A small gating network looks at the pooled
features of each scale and outputs per-input softmax weights over the scales, so the weighting
across scales is learned per input rather than fixed.
"""

from __future__ import annotations

import torch
from torch import nn


class DynamicCrossAttention(nn.Module):
    """Fuse cell-, tissue- and context-level histology features, ``(B, C, P, P)`` out.

    Args:
        channels: C, channels of the raster feature maps.
        token_dim: D, dimension of the cell-tile tokens.
        heads: attention heads.
        enabled: when False the module ignores the tiles and returns the plain mean of the
            tissue and context maps (the ablation).
    """

    def __init__(self, channels: int, token_dim: int, heads: int = 4, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.query = nn.Linear(2 * channels, token_dim)
        self.attn = nn.MultiheadAttention(token_dim, heads, batch_first=True)
        self.out = nn.Linear(token_dim, channels)
        self.gate = nn.Sequential(nn.Linear(3 * channels, channels), nn.SiLU(),
                                  nn.Linear(channels, 3))

    def forward(
        self,
        st_feat: torch.Tensor,
        tissue: torch.Tensor,
        context: torch.Tensor,
        tokens: torch.Tensor,
        token_keep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return fused histology features ``(B, C, P, P)`` and scale weights ``(B, 3)``.

        ``st_feat`` and ``tissue`` form the queries (one per raster cell); ``tokens``
        ``(B, N, D)`` are keys/values; ``token_keep`` ``(B, N)`` bool masks tiles out
        (curriculum: a growing fraction of tiles is visible).
        """
        b, c, h, w = tissue.shape
        if not self.enabled:
            weights = torch.full((b, 3), 1 / 3, device=tissue.device, dtype=tissue.dtype)
            return 0.5 * (tissue + context), weights
        q = self.query(torch.cat([st_feat, tissue], 1).flatten(2).transpose(1, 2))
        pad_mask = None if token_keep is None else ~token_keep
        att, _ = self.attn(q, tokens, tokens, key_padding_mask=pad_mask, need_weights=False)
        cell = self.out(att).transpose(1, 2).reshape(b, c, h, w)
        pooled = torch.cat([cell.mean((2, 3)), tissue.mean((2, 3)), context.mean((2, 3))], 1)
        weights = torch.softmax(self.gate(pooled), dim=1)
        fused = (
            weights[:, 0, None, None, None] * cell
            + weights[:, 1, None, None, None] * tissue
            + weights[:, 2, None, None, None] * context
        )
        return fused, weights

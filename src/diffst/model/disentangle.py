"""Multi-modal disentangling of histology and ST features into common and distinct parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Disentangler(nn.Module):
    """Split histology and ST feature maps ``(B, C, P, P)`` into common and distinct parts.

    Four 1x1 heads produce ``common_h``, ``distinct_h`` (histology) and ``common_s``,
    ``distinct_s`` (ST). Each modality is rebuilt from the mean common part and its own distinct
    part. The disentangling loss makes the two common parts agree (1 - cosine similarity) and
    the distinct parts differ from the common ones and from each other (squared cosine, i.e.
    orthogonality). With ``enabled=False`` features pass through unchanged and the loss is 0.
    """

    def __init__(self, channels: int, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.common_h = nn.Conv2d(channels, channels, 1)
        self.distinct_h = nn.Conv2d(channels, channels, 1)
        self.common_s = nn.Conv2d(channels, channels, 1)
        self.distinct_s = nn.Conv2d(channels, channels, 1)
        self.merge_h = nn.Conv2d(2 * channels, channels, 1)
        self.merge_s = nn.Conv2d(2 * channels, channels, 1)

    def forward(
        self, hist: torch.Tensor, st: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return rebuilt ``(hist, st)`` features and the scalar disentangling loss.

        ``weight`` ``(B, 1, P, P)`` restricts the loss to tissue cells.
        """
        if not self.enabled:
            return hist, st, hist.new_zeros(())
        ch, dh = self.common_h(hist), self.distinct_h(hist)
        cs, ds = self.common_s(st), self.distinct_s(st)
        common = 0.5 * (ch + cs)
        hist_out = hist + self.merge_h(torch.cat([common, dh], 1))
        st_out = st + self.merge_s(torch.cat([common, ds], 1))
        agree = 1 - F.cosine_similarity(ch, cs, dim=1)
        differ = (
            F.cosine_similarity(ch, dh, dim=1) ** 2
            + F.cosine_similarity(cs, ds, dim=1) ** 2
            + F.cosine_similarity(dh, ds, dim=1) ** 2
        )
        per_cell = (agree + differ).unsqueeze(1)
        if weight is None:
            loss = per_cell.mean()
        else:
            loss = (per_cell * weight).sum() / weight.sum().clamp_min(1.0)
        return hist_out, st_out, loss

"""The Diff-ST denoiser: conditioning encoders + a conditional U-Net.

Data flow for one HR patch of ``P x P`` raster cells and ``G`` genes::

    LR map (B,G,p,p) --CIGC-Graph--> refined LR --bicubic--> (B,G,P,P) --ST encoder--> S
    tissue image (B,3,P*t,P*t) --TissueEncoder--> tissue, context          (B,C,P,P)
    cell tiles (B,N,3,T,T) --CellTileEncoder--> tokens                    (B,N,D)
    DynamicCrossAttention(S, tissue, context, tokens) --> H               (B,C,P,P)
    Disentangler(H, S) --> H', S' (+ disentangling loss)
    CrossModalModulation(S', H') --> S''
    cond = conv([S'', H'])                                                (B,Cc,P,P)
    ConditionalUNet([x_t, refined LR], t, cond) --> prediction           (B,G,P,P)

The diffusion variable is the HR residual over the base map ``lr_up`` (bicubic interpolation of
the LR map, or the in-slide iStar-like map: :attr:`DiffSTConfig.upsampler`),
``z0 = (hr - lr_up) / residual_scale`` (all in per-gene scaled units), so the model only has to
add the detail that the base map misses. The prediction is the target the model was trained
for (:attr:`diffst.model.config.SchedulerConfig.prediction`): the clean residual ``z0``
(``sample``, the default), the noise (``epsilon``) or the velocity (``v``);
:meth:`diffst.diffusion.schedule.NoiseSchedule.to_epsilon` converts it for the samplers.
:meth:`DiffST.encode` runs once per patch; the U-Net runs once per sampling step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffst.data.patches import PatchBatch
from diffst.model.attention import DynamicCrossAttention
from diffst.model.config import DiffSTConfig
from diffst.model.disentangle import Disentangler
from diffst.model.gene_graph import GeneGraphLayer
from diffst.model.histology import CellTileEncoder, TissueEncoder, _conv_block
from diffst.model.modulation import CrossModalModulation, WindowModulation
from diffst.model.unet import ConditionalUNet


@dataclass
class Condition:
    """Per-patch conditioning computed once and reused at every sampling step.

    Attributes:
        features: ``(B, Cc, P, P)`` fused histology/ST features.
        lr_refined: ``(B, G, P, P)`` graph-refined LR map upsampled to HR.
        aux_loss: scalar disentangling loss (0 when disabled).
        scale_weights: ``(B, 3)`` dynamic weights of cell/tissue/context scales.
    """

    features: torch.Tensor
    lr_refined: torch.Tensor
    aux_loss: torch.Tensor
    scale_weights: torch.Tensor

    def repeat(self, k: int) -> Condition:
        """Repeat each batch entry ``k`` times (for several samples per patch)."""
        return Condition(
            self.features.repeat_interleave(k, 0),
            self.lr_refined.repeat_interleave(k, 0),
            self.aux_loss,
            self.scale_weights.repeat_interleave(k, 0),
        )


class DiffST(nn.Module):
    """Cross-modal conditional denoiser of Diff-ST (see module docstring for the data flow)."""

    def __init__(self, config: DiffSTConfig, gene_adjacency: np.ndarray | None = None) -> None:
        super().__init__()
        self.config = config
        g, c = config.n_genes, config.channels
        if gene_adjacency is None:
            gene_adjacency = np.eye(g, dtype=np.float32)
        if np.asarray(gene_adjacency).shape != (g, g):
            raise ValueError(f"gene adjacency must be ({g}, {g})")
        self.gene_graph = GeneGraphLayer(gene_adjacency, config.graph_dim, config.graph_layers,
                                         enabled=config.use_gene_graph)
        self.st_encoder = nn.Sequential(_conv_block(2 * g + 1, c), _conv_block(c, c))
        self.tissue_encoder = TissueEncoder(c, config.tissue_px_per_cell)
        self.tile_encoder = CellTileEncoder(config.attn_dim)
        self.cross_attention = DynamicCrossAttention(
            c, config.attn_dim, config.attn_heads, enabled=config.use_dynamic_attention
        )
        self.disentangler = Disentangler(c, enabled=config.use_disentangle)
        self.modulation = (
            WindowModulation(c, config.factor, enabled=config.use_modulation)
            if config.modulation == "window"
            else CrossModalModulation(c, enabled=config.use_modulation)
        )
        self.fuse = nn.Conv2d(2 * c, config.cond_channels, 1)
        self.unet = ConditionalUNet(
            in_ch=2 * g, out_ch=2 * g if config.learn_variance else g,
            cond_ch=config.cond_channels, channels=c, mults=tuple(config.channel_mults),
            time_dim=config.time_dim,
        )

    def encode(
        self,
        lr: torch.Tensor,
        lr_up: torch.Tensor,
        mask: torch.Tensor,
        tissue_image: torch.Tensor,
        tiles: torch.Tensor,
        tile_centres: torch.Tensor,
        tile_keep: torch.Tensor | None = None,
    ) -> Condition:
        """Compute the conditioning of a batch of patches.

        Args:
            lr: ``(B, G, p, p)`` scaled LR map (``p = P / factor``).
            lr_up: ``(B, G, P, P)`` scaled HR base map (bicubic upsampling of the scaled LR
                map unless :attr:`DiffSTConfig.upsampler` says otherwise).
            mask: ``(B, 1, P, P)`` float tissue mask.
            tissue_image: ``(B, 3, P*t, P*t)`` RGB in ``[0, 1]``.
            tiles: ``(B, N, 3, T, T)`` cell-level tiles in ``[0, 1]``.
            tile_centres: ``(B, N, 2)`` tile centres in ``[0, 1]`` patch coordinates.
            tile_keep: ``(B, N)`` bool, visible tiles (curriculum); None = all.
        """
        size = lr_up.shape[-2:]
        refined = self.gene_graph(lr)
        correction = F.interpolate(refined - lr, size=size, mode="bicubic", align_corners=False)
        lr_refined = lr_up + correction
        st = self.st_encoder(torch.cat([lr_refined, lr_up, mask], 1))
        tissue, context = self.tissue_encoder(tissue_image)
        tokens = self.tile_encoder(tiles, tile_centres)
        hist, weights = self.cross_attention(st, tissue, context, tokens, tile_keep)
        hist, st, aux = self.disentangler(hist, st, mask)
        st = self.modulation(st, hist)
        features = self.fuse(torch.cat([st, hist], 1))
        return Condition(features, lr_refined, aux, weights)

    def encode_batch(self, batch: PatchBatch, tile_keep: torch.Tensor | None = None) -> Condition:
        """:meth:`encode` of a :class:`~diffst.data.patches.PatchBatch` (``tile_keep`` as there)."""
        return self.encode(batch.lr, batch.lr_up, batch.mask, batch.tissue_image, batch.tiles,
                           batch.tile_centres, tile_keep)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition,
                variance: bool = False) -> torch.Tensor:
        """The prediction ``(B, G, P, P)`` for the noisy residual ``z_t`` at steps ``t``: the
        clean residual, the noise or the velocity, as the scheduler config's ``prediction``.

        With ``variance`` and a model that learns its variance (``config.learn_variance``), the
        output is ``(B, 2G, P, P)``: the prediction, then the variance interpolation values
        (about ``[-1, 1]``, :func:`diffst.diffusion.vlb.learned_log_variance`).
        """
        out = self.unet(torch.cat([z_t, cond.lr_refined], 1), t, cond.features)
        return out if variance else out[:, : self.config.n_genes]

"""CIGC-Graph: a gene-gene graph from co-expression intensity and a graph layer over genes.

Co-expression intensity (computed once on the training data). With ``x_g`` the per-gene scaled
HR values of gene ``g`` over all tissue cells ``c`` of the training samples,

    I_ij = sum_c x_ic x_jc / sqrt(sum_c x_ic^2 * sum_c x_jc^2)        (in [0, 1])

i.e. the cosine similarity of the genes' non-negative expression profiles: high when two genes
are strongly expressed in the same cells. Each gene keeps its ``k`` strongest partners, the
graph is symmetrised (max), self-loops get weight 1 and the adjacency is normalised as
``D^-1/2 A D^-1/2``.

The paper's variant (``DiffSTConfig(graph_edges="paper")``, our reading of its description:
edge weights from the ratio of total expression, max-symmetrised, fused 0.98/0.02 with the
co-expression intensity). With ``T_i = sum_c x_ic`` the total expression of gene ``i``,

    R_ij = sum_c min(x_ic, x_jc) / T_i                                    (in [0, 1])

is the share of gene ``i``'s total expression that gene ``j`` matches in the same cells;
``W = max(R, R^T)`` and ``A = 0.98 W + 0.02 I``, over all gene pairs (no top-k), normalised
as above (:func:`expression_ratio`, :func:`gene_adjacency`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def coexpression_intensity(values: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """``(G, G)`` co-expression intensity from scaled rasters ``(G, H, W)`` and masks ``(H, W)``."""
    data = _tissue_values(values, masks)
    gram = data @ data.T
    norm = np.sqrt(np.clip(np.diag(gram), 1e-12, None))
    return gram / norm[:, None] / norm[None, :]


PAPER_FUSION = 0.98
"""Weight of the expression ratio in the paper variant's edges (the rest: co-expression)."""


def _tissue_values(values: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """``(G, n)`` float64 values of all tissue cells of the rasters ``(G, H, W)``."""
    data = np.concatenate([v[:, m] for v, m in zip(values, masks, strict=True)], axis=1)
    return np.asarray(data, dtype=np.float64)


def expression_ratio(values: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """``(G, G)`` ratio ``R_ij = sum_c min(x_ic, x_jc) / T_i`` (module docstring), from
    scaled rasters ``(G, H, W)`` (non-negative) and masks ``(H, W)``."""
    data = np.clip(_tissue_values(values, masks), 0, None)
    totals = np.clip(data.sum(1), 1e-12, None)
    shared = np.stack([np.minimum(row[None], data).sum(1) for row in data])
    return shared / totals[:, None]


def gene_adjacency(values: list[np.ndarray], masks: list[np.ndarray], kind: str = "cosine",
                   k: int = 8) -> np.ndarray:
    """Normalised ``(G, G)`` CIGC-Graph adjacency of the training rasters ``(G, H, W)``.

    ``kind`` ``"cosine"``: co-expression intensity, ``k`` strongest partners per gene
    (:func:`build_gene_graph`); ``"paper"``: the fused expression-ratio graph over all pairs.
    """
    intensity = coexpression_intensity(values, masks)
    if kind == "cosine":
        return build_gene_graph(intensity, k)
    if kind != "paper":
        raise ValueError(f"unknown gene graph edges {kind!r}: use 'cosine' or 'paper'")
    ratio = expression_ratio(values, masks)
    fused = PAPER_FUSION * np.maximum(ratio, ratio.T) + (1 - PAPER_FUSION) * intensity
    return build_gene_graph(fused, k=fused.shape[0] - 1)


def build_gene_graph(intensity: np.ndarray, k: int = 8) -> np.ndarray:
    """Normalised ``(G, G)`` adjacency keeping each gene's ``k`` strongest partners."""
    g = intensity.shape[0]
    adj = np.zeros_like(intensity, dtype=np.float64)
    off = intensity.copy()
    np.fill_diagonal(off, -np.inf)
    k = min(k, g - 1)
    if k > 0:
        nbrs = np.argsort(-off, axis=1)[:, :k]
        rows = np.repeat(np.arange(g), k)
        adj[rows, nbrs.ravel()] = np.clip(intensity[rows, nbrs.ravel()], 0, None)
    adj = np.maximum(adj, adj.T)
    np.fill_diagonal(adj, 1.0)
    d = 1 / np.sqrt(adj.sum(1))
    return (adj * d[:, None] * d[None, :]).astype(np.float32)


class GeneGraphLayer(nn.Module):
    """Graph network over genes applied at every LR raster cell.

    Input ``(B, G, h, w)`` LR map; each gene's value is embedded together with a learned gene
    embedding, ``layers`` rounds of ``h <- h + SiLU(A h W)`` mix information between correlated
    genes, and a linear read-out returns a correction ``(B, G, h, w)`` that is added to the LR map
    (all genes are refined jointly). Disabled, the correction is zero.
    """

    def __init__(self, adjacency: np.ndarray | torch.Tensor, dim: int = 16, layers: int = 2,
                 enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        adj = torch.as_tensor(np.asarray(adjacency), dtype=torch.float32)
        self.register_buffer("adjacency", adj)
        g = adj.shape[0]
        self.embed_value = nn.Linear(1, dim)
        self.gene_embedding = nn.Parameter(torch.randn(g, dim) * 0.1)
        self.mix = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.readout = nn.Linear(dim, 1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """Return the refined LR map ``lr + correction``, shape ``(B, G, h, w)``."""
        if not self.enabled:
            return lr
        h = self.embed_value(lr.permute(0, 2, 3, 1).unsqueeze(-1)) + self.gene_embedding
        adj = self.adjacency.to(h.dtype)
        for layer in self.mix:
            h = h + F.silu(layer(torch.matmul(adj, h)))
        return lr + self.readout(h).squeeze(-1).permute(0, 3, 1, 2)

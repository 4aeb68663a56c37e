"""Shared fixtures: tiny synthetic samples and a tiny model configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from diffst.data.sample import STSample
from diffst.model.config import DiffSTConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: tiny models gain nothing from more, and a busy machine loses a lot."""
    torch.set_num_threads(1)


def make_sample(seed: int = 0, size: int = 30, genes: int = 4, k: int = 4) -> STSample:
    """A small sample whose genes follow the image brightness plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    pattern = 0.5 + 0.5 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    image = np.repeat(np.repeat((pattern * 200 + 30).astype(np.uint8), k, 0), k, 1)
    image = np.stack([image, image // 2 + 60, 255 - image], axis=2).astype(np.uint8)
    rates = np.stack([(i + 1) * pattern for i in range(genes)]) + 0.2
    mask = np.ones((size, size), bool)
    mask[:3, :] = False
    expr = rng.poisson(rates * 3).astype(np.float32) * mask
    affine = np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2], [0, 0, 1.0]])
    return STSample(expr=expr, genes=[f"G{i}" for i in range(genes)], cell_um=8.0, mask=mask,
                    image=image, image_um_per_px=8.0 / k, affine=affine, name=f"toy{seed}")


@pytest.fixture
def toy_sample() -> STSample:
    return make_sample()


def tiny_config(**overrides) -> DiffSTConfig:
    """A very small Diff-ST for fast tests."""
    base = dict(channels=8, channel_mults=(1, 2), time_dim=16, cond_channels=8,
                tissue_px_per_cell=2, tile_px=4, n_tiles=6, attn_dim=8, attn_heads=2,
                graph_dim=4, graph_layers=1, factor=5)
    base.update(overrides)
    return DiffSTConfig(**base)

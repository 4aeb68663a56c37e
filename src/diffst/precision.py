"""Mixed precision and memory layout switches shared by training and inference.

``autocast`` runs matrix multiplications and convolutions in a 16-bit float type (bfloat16 on
CPUs and on GPUs that support it, float16 on older GPUs); everything else, including the
sampler's arithmetic, stays float32. ``channels_last`` stores the convolution weights as NHWC,
which some CPU and GPU convolution kernels prefer. Whether either helps depends on the hardware:
``benchmarks/speed.py`` measures both on the machine at hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def autocast_dtype(device: torch.device | str) -> torch.dtype:
    """The 16-bit type autocast uses on ``device``: bfloat16, or float16 on old CUDA GPUs."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``device`` with :func:`autocast_dtype` (a no-op when disabled)."""
    device = torch.device(device)
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=autocast_dtype(device))


def is_channels_last(model: nn.Module) -> bool:
    """True when the model's first 4-d weight with a kernel wider than 1 is stored NHWC."""
    for p in model.parameters():
        if p.ndim == 4 and p.shape[1] * p.shape[2] * p.shape[3] > 1:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


@contextlib.contextmanager
def memory_format(model: nn.Module, channels_last: bool) -> Iterator[nn.Module]:
    """Temporarily store ``model``'s 4-d weights channels-last; restores the layout on exit."""
    if not channels_last or is_channels_last(model):
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)

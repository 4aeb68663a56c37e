"""The 8 rotations and mirrorings of a square patch (the dihedral group), applied to every input
of a :class:`~diffst.data.patches.PatchBatch` alike and undone on the output maps.

Training already shows the model each patch in all 8 orientations (random augmentation), so the
same patch turned is another valid input. Averaging the predictions of a patch over its
orientations (test-time augmentation) removes what the network did not learn to be invariant
to. Transform ``d`` in ``0..7``: bit 0 mirrors the rows (up-down), bit 1 mirrors the columns
(left-right), bit 2 transposes; they are applied transpose first, then the mirrorings.
"""

from __future__ import annotations

import torch

from diffst.data.patches import PatchBatch

N_TRANSFORMS = 8


def _parts(d: int) -> tuple[bool, bool, bool]:
    if not 0 <= d < N_TRANSFORMS:
        raise ValueError(f"dihedral transform must be in 0..7, got {d}")
    return bool(d & 4), bool(d & 1), bool(d & 2)


def turn(x: torch.Tensor, d: int) -> torch.Tensor:
    """Transform ``d`` of the last two (row, column) axes of ``x`` ``(..., P, P)``."""
    transpose, flip_rows, flip_cols = _parts(d)
    if transpose:
        x = x.transpose(-2, -1)
    if flip_rows:
        x = x.flip(-2)
    if flip_cols:
        x = x.flip(-1)
    return x


def unturn(x: torch.Tensor, d: int) -> torch.Tensor:
    """The inverse of :func:`turn`: ``unturn(turn(x, d), d) == x``."""
    transpose, flip_rows, flip_cols = _parts(d)
    if flip_cols:
        x = x.flip(-1)
    if flip_rows:
        x = x.flip(-2)
    if transpose:
        x = x.transpose(-2, -1)
    return x


def turn_centres(centres: torch.Tensor, d: int) -> torch.Tensor:
    """Tile centres ``(..., 2)`` as (x = column, y = row) in ``[0, 1]`` after transform ``d``."""
    transpose, flip_rows, flip_cols = _parts(d)
    x, y = centres[..., 0], centres[..., 1]
    if transpose:
        x, y = y, x
    if flip_rows:
        y = 1 - y
    if flip_cols:
        x = 1 - x
    return torch.stack([x, y], -1)


def turn_batch(batch: PatchBatch, d: int) -> PatchBatch:
    """Every map, image and cell tile of ``batch`` turned by ``d`` (tile order kept)."""
    spatial = {key: turn(value, d) for key, value in batch.items()
               if key not in ("tile_centres", "tile_valid")}
    return PatchBatch.from_dict({**spatial, "tile_centres": turn_centres(batch.tile_centres, d),
                                 "tile_valid": batch.tile_valid})


__all__ = ["N_TRANSFORMS", "turn", "turn_batch", "turn_centres", "unturn"]

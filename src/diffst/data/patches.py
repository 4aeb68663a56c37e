"""Patches for training and inference: aligned HR/LR/image crops, augmentation, cell tiles.

A :class:`PreparedSample` holds one section in model units (per-gene scaled values, the H&E
resampled so each HR cell spans ``k`` x ``k`` pixels). :func:`extract_patch` cuts a
``P`` x ``P``-cell patch at an LR-aligned origin, applies the same rotation/flip to every
modality, and derives the tissue-level image and the entropy-ranked cell-level tiles.
Patches and batches of patches are :class:`PatchBatch` objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from diffst.data.image import aligned_image
from diffst.data.lr import (
    hr_frame_affine,
    hr_mask_from_lr,
    simulate_lr,
    thin_counts,
    upsample_bicubic,
)
from diffst.data.normalize import GeneScaler
from diffst.data.sample import SampleError, STSample

Upsampler = Callable[[STSample, int, np.ndarray], np.ndarray]
"""A base map of an LR sample: ``fn(lr, factor, hr_mask)`` -> ``(G, h*factor, w*factor)`` counts
per HR cell (``hr_mask`` ``(h*factor, w*factor)`` bool); see :mod:`diffst.model.upsampler`."""


@dataclass(frozen=True, eq=False)
class PatchBatch(Mapping):
    """The model inputs of a batch of patches (or of one patch, without the batch axis).

    Shapes with a batch of ``B`` patches of ``P`` x ``P`` HR cells, ``G`` genes, ``p = P / s``,
    ``t`` tissue-image pixels per cell, ``N`` cell tiles of ``T`` x ``T`` pixels:

    Attributes:
        lr: ``(B, G, p, p)`` scaled LR map.
        lr_up: ``(B, G, P, P)`` the scaled HR base map the model refines (bicubic
            upsampling of the scaled LR map unless an upsampler is configured).
        mask: ``(B, 1, P, P)`` float tissue mask.
        tissue_image: ``(B, 3, P*t, P*t)`` RGB in ``[0, 1]``.
        tiles: ``(B, N, 3, T, T)`` cell-level tiles in ``[0, 1]``, highest entropy first.
        tile_centres: ``(B, N, 2)`` tile centres in ``[0, 1]`` patch coordinates.
        tile_valid: ``(B, N)`` bool, tiles that exist (the rest are padding).
        hr: ``(B, G, P, P)`` scaled HR truth, None when unknown (inference).

    It is also a read-only mapping from these names to the tensors (``hr`` only when known),
    in the order above with ``hr`` after ``mask``, as the dict batches of diffst 0.1 were.
    """

    lr: torch.Tensor
    lr_up: torch.Tensor
    mask: torch.Tensor
    tissue_image: torch.Tensor
    tiles: torch.Tensor
    tile_centres: torch.Tensor
    tile_valid: torch.Tensor
    hr: torch.Tensor | None = None

    _ORDER = ("lr", "lr_up", "mask", "hr", "tissue_image", "tiles", "tile_centres", "tile_valid")

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._ORDER or (key == "hr" and self.hr is None):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return (key for key in self._ORDER if key != "hr" or self.hr is not None)

    def __len__(self) -> int:
        return len(self._ORDER) - (self.hr is None)

    @classmethod
    def from_dict(cls, d: Mapping[str, torch.Tensor]) -> PatchBatch:
        """From a mapping with the attribute names as keys (``hr`` optional)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> PatchBatch:
        """A batch with ``fn`` applied to every tensor."""
        return PatchBatch.from_dict({key: fn(value) for key, value in self.items()})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PatchBatch:
        """The batch on ``device``."""
        return self.map(lambda v: v.to(device, non_blocking=non_blocking))

    @staticmethod
    def stack(items: list[PatchBatch]) -> PatchBatch:
        """Stack single patches into a batch (a new leading axis)."""
        return PatchBatch.from_dict({key: torch.stack([it[key] for it in items])
                                     for key in items[0]})

    @staticmethod
    def cat(parts: list[PatchBatch]) -> PatchBatch:
        """Concatenate batches along the batch axis."""
        return PatchBatch.from_dict({key: torch.cat([p[key] for p in parts])
                                     for key in parts[0]})


@dataclass
class PreparedSample:
    """One section in model units.

    Attributes:
        lr: ``(G, h, w)`` scaled LR map.
        lr_up: ``(G, H, W)`` the HR base map (``H = h * factor``): bicubic upsampling of
            ``lr``, or an :data:`Upsampler`'s map in the same scaled units.
        mask: ``(H, W)`` bool HR tissue mask.
        image: ``(H*k, W*k, 3)`` uint8 H&E aligned to the HR raster.
        k: image pixels per HR cell.
        factor: integer scale factor.
        hr: ``(G, H, W)`` scaled HR truth, or None at inference.
    """

    lr: np.ndarray
    lr_up: np.ndarray
    mask: np.ndarray
    image: np.ndarray
    k: int
    factor: int
    hr: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """HR raster shape ``(H, W)``."""
        return self.mask.shape


def prepare_training_sample(
    hr: STSample, factor: int, scaler: GeneScaler, k: int, upsampler: Upsampler | None = None,
    input_fraction: float = 1.0, seed: int = 0,
) -> PreparedSample:
    """Pool an HR sample to LR and bring both into model units (see :class:`PreparedSample`);
    ``upsampler`` as in :func:`prepare_inference_sample` (it sees the pooled map only).

    With ``input_fraction`` p < 1 the LR input is pooled from the counts binomially thinned to
    p (draws from ``seed``) and multiplied by 1 / p: a shallow slide's input brought back to
    the section's depth; the HR target stays the section's own counts."""
    lr = simulate_lr(hr, factor) if input_fraction == 1.0 else depth_matched_lr(
        hr, factor, input_fraction, seed)
    h, w = lr.shape[0] * factor, lr.shape[1] * factor
    hr_expr = np.zeros((hr.n_genes, h, w), np.float32)
    hr_expr[:, : hr.shape[0], : hr.shape[1]] = hr.expr
    mask = np.zeros((h, w), bool)
    mask[: hr.shape[0], : hr.shape[1]] = hr.mask
    prep = prepare_inference_sample(lr, factor, scaler, k, hr_mask=mask, upsampler=upsampler)
    prep.hr = scaler.transform(hr_expr)
    return prep


def depth_matched_lr(hr: STSample, factor: int, fraction: float, seed: int) -> STSample:
    """LR map of ``hr`` thinned to ``fraction`` of its counts, times ``1 / fraction``."""
    lr = simulate_lr(thin_counts(hr, fraction, seed), factor)
    return replace(lr, expr=(lr.expr / fraction).astype(np.float32))


def prepare_inference_sample(
    lr: STSample, factor: int, scaler: GeneScaler, k: int, hr_mask: np.ndarray | None = None,
    upsampler: Upsampler | None = None,
) -> PreparedSample:
    """Bring an LR sample into model units on the HR raster it refines.

    ``hr_mask`` ``(H, W)`` defaults to the LR mask repeated ``factor`` x ``factor``. The base map
    ``lr_up`` is bicubic upsampling of the scaled LR map, or with ``upsampler`` its counts per
    HR cell for ``(lr, factor, hr_mask)``, scaled like HR maps.
    """
    if lr.image is None:
        raise SampleError(f"sample '{lr.name}': an H&E image is required for Diff-ST")
    lr_scaled = scaler.transform_lr(lr.expr, factor)
    mask = hr_mask_from_lr(lr.mask, factor) if hr_mask is None else hr_mask
    h, w = lr.shape[0] * factor, lr.shape[1] * factor
    if mask.shape != (h, w):
        raise SampleError(f"HR mask shape {mask.shape} does not match LR x {factor} = {(h, w)}")
    frame = STSample(
        expr=np.zeros((1, h, w), np.float32), genes=["_"], cell_um=lr.cell_um / factor,
        mask=mask, image=lr.image, image_um_per_px=lr.image_um_per_px,
        affine=hr_frame_affine(lr, factor), name=lr.name,
    )
    if upsampler is None:
        lr_up = upsample_bicubic(lr_scaled, factor)
    else:
        lr_up = scaler.transform(upsampler(lr, factor, mask))
    return PreparedSample(
        lr=lr_scaled, lr_up=lr_up, mask=mask,
        image=aligned_image(frame, k), k=k, factor=factor,
    )


def pad_prepared(prep: PreparedSample, min_size: int) -> PreparedSample:
    """Zero-pad (white image) bottom/right so both sides are at least ``min_size`` HR cells."""
    h, w = prep.shape
    s = prep.factor
    ph, pw = max(0, min_size - h), max(0, min_size - w)
    ph, pw = ph + (-ph) % s, pw + (-pw) % s
    if ph == 0 and pw == 0:
        return prep

    def pad(a: np.ndarray, ah: int, aw: int, value: float = 0) -> np.ndarray:
        widths = [(0, 0)] * (a.ndim - 2) + [(0, ah), (0, aw)]
        return np.pad(a, widths, constant_values=value)

    k = prep.k
    return PreparedSample(
        lr=pad(prep.lr, ph // s, pw // s),
        lr_up=pad(prep.lr_up, ph, pw),
        mask=pad(prep.mask, ph, pw),
        image=np.pad(prep.image, ((0, ph * k), (0, pw * k), (0, 0)), constant_values=255),
        k=k,
        factor=s,
        hr=None if prep.hr is None else pad(prep.hr, ph, pw),
    )


def tile_entropy(gray: np.ndarray, tile: int, bins: int = 16) -> np.ndarray:
    """Shannon entropy (nats) of the grey-level histogram of each ``tile`` x ``tile`` block.

    ``gray`` ``(H, W)`` uint8 with H, W multiples of ``tile``; returns ``(H/tile, W/tile)``.
    """
    n_r, n_c = gray.shape[0] // tile, gray.shape[1] // tile
    q = (gray[: n_r * tile, : n_c * tile].astype(np.int64) * bins) // 256
    blocks = q.reshape(n_r, tile, n_c, tile).transpose(0, 2, 1, 3).reshape(n_r * n_c, -1)
    offsets = np.arange(n_r * n_c)[:, None] * bins
    hist = np.bincount((blocks + offsets).ravel(), minlength=n_r * n_c * bins)
    p = hist.reshape(n_r * n_c, bins) / blocks.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return ent.reshape(n_r, n_c)


def cell_tiles(crop: np.ndarray, tile: int, n_tiles: int) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """The ``n_tiles`` highest-entropy tiles of an image crop.

    Args:
        crop: ``(S, S, 3)`` uint8 patch image at full working resolution.
        tile: tile side in pixels.
        n_tiles: number of tiles N.

    Returns:
        tiles ``(N, 3, tile, tile)`` float32 in [0, 1], centres ``(N, 2)`` (x, y) in [0, 1],
        and ``valid`` ``(N,)`` bool (False for padding when fewer tiles exist), ranked by entropy.
    """
    side = crop.shape[0]
    if side < tile:
        crop = np.pad(crop, ((0, tile - side), (0, tile - side), (0, 0)), constant_values=255)
        side = tile
    n = side // tile
    ent = tile_entropy(crop.mean(2).astype(np.uint8), tile).ravel()
    order = np.argsort(-ent, kind="stable")[:n_tiles]
    rows, cols = order // n, order % n
    blocks = crop[: n * tile, : n * tile].reshape(n, tile, n, tile, 3)
    chosen = blocks[rows, :, cols].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    centres = np.stack([(cols + 0.5) / n, (rows + 0.5) / n], 1).astype(np.float32)
    valid = np.ones(len(order), bool)
    if len(order) < n_tiles:
        extra = n_tiles - len(order)
        chosen = np.concatenate([chosen, np.repeat(chosen[:1], extra, 0)])
        centres = np.concatenate([centres, np.repeat(centres[:1], extra, 0)])
        valid = np.concatenate([valid, np.zeros(extra, bool)])
    return chosen, centres, valid


def _rot_flip(a: np.ndarray, rot: int, flip: bool, axes: tuple[int, int]) -> np.ndarray:
    a = np.rot90(a, rot, axes=axes)
    if flip:
        a = np.flip(a, axis=axes[1])
    return np.ascontiguousarray(a)


def extract_patch(
    prep: PreparedSample,
    row0: int,
    col0: int,
    patch: int,
    tissue_px_per_cell: int,
    tile_px: int,
    n_tiles: int,
    rot: int = 0,
    flip: bool = False,
) -> PatchBatch:
    """Cut one ``patch`` x ``patch``-cell patch at an LR-aligned origin ``(row0, col0)``.

    Returns a :class:`PatchBatch` without the batch axis: ``lr`` (G,p,p), ``lr_up`` (G,P,P),
    ``mask`` (1,P,P), ``tissue_image`` (3,P*t,P*t), ``tiles`` (N,3,T,T), ``tile_centres``
    (N,2), ``tile_valid`` (N,), and ``hr`` (G,P,P) when the truth is known. ``rot`` quarter
    turns and ``flip`` apply to all alike.
    """
    s, k = prep.factor, prep.k
    if row0 % s or col0 % s or patch % s:
        raise ValueError(f"patch origin/size must be multiples of the factor {s}")
    r, c, p = row0 // s, col0 // s, patch // s
    hr_sl = (slice(row0, row0 + patch), slice(col0, col0 + patch))
    out = {
        "lr": prep.lr[:, r : r + p, c : c + p],
        "lr_up": prep.lr_up[:, hr_sl[0], hr_sl[1]],
        "mask": prep.mask[None, hr_sl[0], hr_sl[1]].astype(np.float32),
    }
    if prep.hr is not None:
        out["hr"] = prep.hr[:, hr_sl[0], hr_sl[1]]
    out = {key: _rot_flip(v, rot, flip, (-2, -1)) for key, v in out.items()}
    crop = prep.image[row0 * k : (row0 + patch) * k, col0 * k : (col0 + patch) * k]
    crop = _rot_flip(crop, rot, flip, (0, 1))
    tensors = {key: torch.from_numpy(v) for key, v in out.items()}
    img = torch.from_numpy(crop).permute(2, 0, 1).float().div_(255.0)
    tensors["tissue_image"] = F.adaptive_avg_pool2d(
        img[None], patch * tissue_px_per_cell
    )[0]
    tiles, centres, valid = cell_tiles(crop, tile_px, n_tiles)
    tensors["tiles"] = torch.from_numpy(tiles)
    tensors["tile_centres"] = torch.from_numpy(centres)
    tensors["tile_valid"] = torch.from_numpy(valid)
    return PatchBatch.from_dict(tensors)


def collate(items: list[PatchBatch]) -> PatchBatch:
    """Stack single patches into a batch."""
    return PatchBatch.stack(items)


def valid_origins(prep: PreparedSample, patch: int, min_tissue: float) -> np.ndarray:
    """``(n, 2)`` int64 LR-aligned HR origins (row, col) of ``patch`` x ``patch`` patches with
    at least ``min_tissue`` (a fraction) of tissue cells."""
    s, p = prep.factor, patch
    h, w = prep.shape
    cum = np.pad(prep.mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    rows = np.arange(0, h - p + 1, s)
    cols = np.arange(0, w - p + 1, s)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    tissue = cum[rr + p, cc + p] - cum[rr, cc + p] - cum[rr + p, cc] + cum[rr, cc]
    ok = tissue >= min_tissue * p * p
    return np.stack([rr[ok], cc[ok]], 1)


class PatchSampler:
    """Random LR-aligned training patches with enough tissue, from several prepared samples.

    The sampler's random state is a NumPy ``Generator`` whose state is saved in checkpoints so
    that resumed training draws exactly the same patches.
    """

    def __init__(self, samples: list[PreparedSample], patch: int, min_tissue: float = 0.3,
                 seed: int = 0) -> None:
        self.samples = [pad_prepared(s, patch) for s in samples]
        self.patch = patch
        self.origins = [self._valid_origins(s, min_tissue) for s in self.samples]
        total = sum(len(o) for o in self.origins)
        if total == 0:
            raise SampleError(
                f"no {patch}x{patch} patch has >= {min_tissue:.0%} tissue; use a smaller patch"
            )
        self.weights = np.array([len(o) for o in self.origins], float) / total
        self.rng = np.random.default_rng(seed)

    def _valid_origins(self, prep: PreparedSample, min_tissue: float) -> np.ndarray:
        return valid_origins(prep, self.patch, min_tissue)

    def draw(self, batch_size: int, tissue_px_per_cell: int, tile_px: int, n_tiles: int,
             augment: bool = True) -> PatchBatch:
        """Draw a batch of random patches (random quarter turns and flips when ``augment``)."""
        items = []
        for _ in range(batch_size):
            i = int(self.rng.choice(len(self.samples), p=self.weights))
            r0, c0 = self.origins[i][self.rng.integers(len(self.origins[i]))]
            rot = int(self.rng.integers(4)) if augment else 0
            flip = bool(self.rng.integers(2)) if augment else False
            items.append(extract_patch(self.samples[i], int(r0), int(c0), self.patch,
                                       tissue_px_per_cell, tile_px, n_tiles, rot, flip))
        return collate(items)

"""Training patches cut on the training device with batched tensor ops.

:class:`DevicePatchSampler` draws the same kind of batch as
:class:`diffst.data.patches.PatchSampler` (same keys, shapes, dtypes and meaning; see
:func:`diffst.data.patches.extract_patch`) without per-item NumPy work in the training loop.
The training sections are converted once into flat tensors on the training device
(:class:`SectionPool`): the scaled ``lr_up``, ``hr`` and tissue mask stacked as float32
channels, the scaled LR map, and the aligned H&E as uint8 (3 bytes per pixel; converted to
float only for the crops of a batch).

A batch is a handful of whole-batch operations: the random draws (vectorised calls on the
sampler's NumPy ``Generator``, whose state checkpoints save as before), one gather per tensor
that cuts every crop *and* applies its quarter turns and flip (pre-computed index tables of
the 8 rotations/flips, so all modalities turn alike), a batched adaptive average pooling for
the tissue-level image, and the cell-level tiles ranked by the entropy of their grey-level
histogram, computed on the device with ``bincount`` and an exact integer sort key.

Memory stays bounded: sections go to a CUDA device until ``device_budget`` bytes are used;
the others stay in host memory, are cut there with the same ops, and only their crops are
copied to the device per batch. Host RAM keeps no second copy of a section on the device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from diffst.data.patches import PreparedSample, pad_prepared, valid_origins
from diffst.data.sample import SampleError

#: grey-level histogram bins of the tile entropy (as :func:`diffst.data.patches.tile_entropy`)
ENTROPY_BINS = 16
#: fixed-point scale of the integer entropy key (exact, order-independent sums)
_KEY_SCALE = 2.0**32


# ---------------------------------------------------------------------------- index tables
_TABLES: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def transform_offsets(side: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source row and column offsets ``(8, side, side)`` int64 of the 8 rotations/flips.

    Transform ``t = rot + 4 * flip``: output pixel ``(i, j)`` of a crop turned ``rot`` quarter
    turns (``np.rot90`` on the spatial axes) and then mirrored left-right when ``flip`` is
    the crop's pixel ``(rows[t, i, j], cols[t, i, j])``.
    """
    key = (side, str(device))
    if key not in _TABLES:
        grid_r = torch.arange(side).view(side, 1).expand(side, side)
        grid_c = torch.arange(side).view(1, side).expand(side, side)
        rows, cols = [], []
        for flip in (False, True):
            for rot in range(4):
                for grid, out in ((grid_r, rows), (grid_c, cols)):
                    g = torch.rot90(grid, rot, dims=(0, 1))
                    out.append(g.flip(1) if flip else g)
        _TABLES[key] = (torch.stack(rows).to(device), torch.stack(cols).to(device))
    return _TABLES[key]


def crop_index(rows0: torch.Tensor, cols0: torch.Tensor, transform: torch.Tensor, side: int,
               width: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Flat indices ``(B, side, side)`` of turned crops in rasters stored row-major.

    ``rows0``, ``cols0`` ``(B,)`` int64 are the crop origins, ``transform`` ``(B,)`` the
    transform ids of :func:`transform_offsets`, ``width`` ``(B,)`` the raster widths and
    ``base`` ``(B,)`` the flat offsets of the rasters in their storage.
    """
    tr, tc = transform_offsets(side, rows0.device)
    v = lambda a: a.view(-1, 1, 1)  # noqa: E731
    return (v(rows0) + tr[transform]) * v(width) + v(cols0) + tc[transform] + v(base)


# ---------------------------------------------------------------------------- tiles
def entropy_key_table(pixels: int, device: torch.device) -> torch.Tensor:
    """``round(c ln c * 2**32)`` as int64 for counts ``c = 0..pixels``.

    For a tile of ``n`` pixels with bin counts ``c_b`` the grey-level entropy is
    ``ln n - sum_b c_b ln c_b / n``, so ranking tiles by ascending ``sum_b key[c_b]`` ranks
    them by descending entropy; integer sums make the order identical on every device.
    """
    c = torch.arange(pixels + 1, dtype=torch.float64)
    val = torch.where(c > 0, c * torch.log(c.clamp_min(1)), torch.zeros_like(c))
    return torch.round(val * _KEY_SCALE).to(torch.int64).to(device)


def batch_cell_tiles(crops: torch.Tensor, tile: int, n_tiles: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``n_tiles`` highest-entropy tiles of every crop (batched :func:`cell_tiles`).

    Args:
        crops: ``(B, 3, S, S)`` uint8 patch images at full working resolution.
        tile: tile side in pixels.
        n_tiles: number of tiles N.

    Returns:
        tiles ``(B, N, 3, tile, tile)`` float32 in [0, 1], centres ``(B, N, 2)`` (x, y) in
        [0, 1] and ``valid`` ``(B, N)`` bool, ranked by entropy (ties: row-major order);
        as :func:`diffst.data.patches.cell_tiles` for each crop.
    """
    b, _, side, _ = crops.shape
    if side < tile:
        crops = F.pad(crops, (0, tile - side, 0, tile - side), value=255)
        side = tile
    n, dev = side // tile, crops.device
    used = crops[:, :, : n * tile, : n * tile]
    gray = used.sum(1, dtype=torch.int32).div_(3, rounding_mode="floor")
    q = (gray * ENTROPY_BINS).div_(256, rounding_mode="floor")
    tile_id = (torch.arange(n * tile, device=dev) // tile)
    cell = tile_id.view(-1, 1) * n + tile_id.view(1, -1)
    flat = (torch.arange(b, device=dev).view(-1, 1, 1) * (n * n) + cell) * ENTROPY_BINS + q
    hist = torch.bincount(flat.reshape(-1), minlength=b * n * n * ENTROPY_BINS)
    key = entropy_key_table(tile * tile, dev)[hist].view(b, n * n, ENTROPY_BINS).sum(-1)
    order = torch.sort(key, dim=1, stable=True).indices[:, :n_tiles]
    rows, cols = order // n, order % n
    blocks = used.view(b, 3, n, tile, n, tile).permute(0, 2, 4, 1, 3, 5)
    chosen = blocks[torch.arange(b, device=dev).view(-1, 1), rows, cols].float().div_(255.0)
    centres = torch.stack([(cols.double() + 0.5) / n, (rows.double() + 0.5) / n], -1).float()
    valid = torch.ones(order.shape, dtype=torch.bool, device=dev)
    extra = n_tiles - order.shape[1]
    if extra > 0:
        chosen = torch.cat([chosen, chosen[:, :1].expand(-1, extra, -1, -1, -1)], 1)
        centres = torch.cat([centres, centres[:, :1].expand(-1, extra, -1)], 1)
        valid = torch.cat([valid, torch.zeros((b, extra), dtype=torch.bool, device=dev)], 1)
    return chosen, centres, valid


# ---------------------------------------------------------------------------- storage
def padded_shape(prep: PreparedSample, patch: int) -> tuple[int, int]:
    """HR raster shape of :func:`diffst.data.patches.pad_prepared` ``(prep, patch)``."""
    out = []
    for side in prep.shape:
        pad = max(0, patch - side)
        out.append(side + pad + (-pad) % prep.factor)
    return out[0], out[1]


def section_nbytes(prep: PreparedSample, patch: int) -> int:
    """Bytes a prepared section occupies as tensors once padded for ``patch``."""
    h, w = padded_shape(prep, patch)
    g, s, k = prep.lr.shape[0], prep.factor, prep.k
    n_maps = 2 * g + 1 if prep.hr is not None else g + 1
    return 4 * (n_maps * h * w + g * (h // s) * (w // s)) + 3 * h * k * w * k


class SectionPool:
    """Sections concatenated in flat tensors on one device.

    ``maps`` ``(C, sum H*W)`` float32 holds ``lr_up`` (G channels), ``hr`` (G, when known)
    and the tissue mask (1) of every section; ``lr`` ``(G, sum h*w)`` float32; ``image``
    ``(sum H*k*W*k, 3)`` uint8. ``layout`` ``(n, 6)`` int64 gives per section the offset and
    row width in ``maps``, ``lr`` and ``image``; ``origins[i]`` ``(n_i, 2)`` are section i's
    HR patch origins with at least ``min_tissue`` tissue (:func:`valid_origins`).
    """

    def __init__(self, preps: list[PreparedSample], patch: int, device: torch.device,
                 min_tissue: float = 0.3) -> None:
        self.device = device
        first = preps[0]
        self.n_genes, self.k, self.factor = first.lr.shape[0], first.k, first.factor
        self.has_hr = first.hr is not None
        shapes = [padded_shape(p, patch) for p in preps]
        g, s, k = self.n_genes, self.factor, self.k
        sizes = np.array([[h * w, (h // s) * (w // s), h * k * w * k] for h, w in shapes],
                         np.int64).reshape(-1, 3)
        offsets = np.concatenate([np.zeros((1, 3), np.int64), sizes.cumsum(0)[:-1]])
        widths = np.array([[w, w // s, w * k] for _, w in shapes], np.int64).reshape(-1, 3)
        self.layout = np.stack([offsets[:, 0], widths[:, 0], offsets[:, 1], widths[:, 1],
                                offsets[:, 2], widths[:, 2]], 1)
        n_maps = 2 * g + 1 if self.has_hr else g + 1
        total = sizes.sum(0)
        self.maps = torch.empty((n_maps, int(total[0])), dtype=torch.float32, device=device)
        self.lr = torch.empty((g, int(total[1])), dtype=torch.float32, device=device)
        self.image = torch.empty((int(total[2]), 3), dtype=torch.uint8, device=device)
        self.origins: list[np.ndarray] = []
        for i, prep in enumerate(preps):
            if prep.lr.shape[0] != g or (prep.hr is not None) != self.has_hr or prep.k != k \
                    or prep.factor != s:
                raise SampleError("training sections differ in genes, HR truth, k or factor")
            padded = pad_prepared(prep, patch)
            self._store(i, padded, sizes[i])
            self.origins.append(valid_origins(padded, patch, min_tissue))

    def _store(self, i: int, padded: PreparedSample, size: np.ndarray) -> None:
        m, _, lo, _, io, _ = (int(x) for x in self.layout[i])
        parts = [padded.lr_up] + ([padded.hr] if self.has_hr else []) + [padded.mask[None]]
        row = 0
        for part in parts:
            flat = np.asarray(part, np.float32).reshape(part.shape[0], -1)
            self.maps[row : row + part.shape[0], m : m + size[0]] = torch.from_numpy(flat)
            row += part.shape[0]
        lr = np.asarray(padded.lr, np.float32).reshape(self.n_genes, -1)
        self.lr[:, lo : lo + size[1]] = torch.from_numpy(lr)
        img = np.ascontiguousarray(padded.image).reshape(-1, 3)
        self.image[io : io + size[2]] = torch.from_numpy(img)

    @property
    def nbytes(self) -> int:
        """Bytes held by the pool's tensors."""
        return sum(t.numel() * t.element_size() for t in (self.maps, self.lr, self.image))

    def cut(self, local: np.ndarray, rows0: np.ndarray, cols0: np.ndarray,
            transform: np.ndarray, patch: int) -> dict[str, torch.Tensor]:
        """Turned crops on this pool's device (one gather per tensor for the whole batch).

        Args:
            local: ``(B,)`` section indices within the pool.
            rows0, cols0: ``(B,)`` LR-aligned HR origins.
            transform: ``(B,)`` transform ids (:func:`transform_offsets`).
            patch: HR patch side P.

        Returns:
            ``lr`` (B,G,p,p), ``lr_up`` (B,G,P,P), ``mask`` (B,1,P,P), ``hr`` (B,G,P,P) when
            known, and ``crop`` (B,3,P*k,P*k) uint8.
        """
        g, s, k = self.n_genes, self.factor, self.k
        lay = self.layout[local]
        cols = np.stack([rows0, cols0, transform, *lay.T]).astype(np.int64)
        r0, c0, t, m_off, m_w, l_off, l_w, i_off, i_w = torch.from_numpy(cols).to(self.device)
        idx = crop_index(r0, c0, t, patch, m_w, m_off)
        maps = self.maps[:, idx].transpose(0, 1)
        lr_idx = crop_index(r0 // s, c0 // s, t, patch // s, l_w, l_off)
        out = {"lr": self.lr[:, lr_idx].transpose(0, 1).contiguous(),
               "lr_up": maps[:, :g].contiguous(),
               "mask": maps[:, -1:].contiguous()}
        if self.has_hr:
            out["hr"] = maps[:, g : 2 * g].contiguous()
        img_idx = crop_index(r0 * k, c0 * k, t, patch * k, i_w, i_off)
        out["crop"] = self.image[img_idx].permute(0, 3, 1, 2)
        return out


# ---------------------------------------------------------------------------- batches
def finish_batch(raw: dict[str, torch.Tensor], patch: int, tissue_px_per_cell: int,
                 tile_px: int, n_tiles: int) -> dict[str, torch.Tensor]:
    """The batch dict from raw crops: adds the tissue-level image and the cell tiles.

    Keys, shapes and dtypes are those of :func:`diffst.data.patches.extract_patch` with a
    leading batch axis: ``lr``, ``lr_up``, ``mask``, ``hr`` (when known), ``tissue_image``
    ``(B, 3, P*t, P*t)``, ``tiles``, ``tile_centres`` and ``tile_valid``.
    """
    crop = raw["crop"]
    out = {key: raw[key] for key in ("lr", "lr_up", "mask", "hr") if key in raw}
    out["tissue_image"] = F.adaptive_avg_pool2d(crop.float().div_(255.0),
                                                patch * tissue_px_per_cell)
    out["tiles"], out["tile_centres"], out["tile_valid"] = batch_cell_tiles(
        crop, tile_px, n_tiles)
    return out


class DevicePatchSampler:
    """Random LR-aligned training patches cut on ``device`` (drop-in for ``PatchSampler``).

    Same constructor arguments as :class:`diffst.data.patches.PatchSampler` plus ``device``
    and ``device_budget``: bytes of section tensors allowed on a CUDA device (default half of
    its free memory at construction; ignored on the CPU). Sections beyond it stay in host
    memory. ``rng`` is a NumPy ``Generator`` that checkpoints save and restore, so resumed
    training draws exactly the same patches.
    """

    def __init__(self, samples: list[PreparedSample], patch: int, min_tissue: float = 0.3,
                 seed: int = 0, device: str | torch.device = "cpu",
                 device_budget: int | None = None) -> None:
        if not samples:
            raise SampleError("no training sections given")
        self.patch = patch
        self.device = torch.device(device)
        home = self._placement(samples, device_budget)
        self.pools: list[SectionPool] = []
        self.where = np.zeros((len(samples), 2), np.int64)  # (pool, index in pool)
        origins: list[np.ndarray] = [np.zeros((0, 2), np.int64)] * len(samples)
        for dev in dict.fromkeys(home):
            ids = [i for i, h in enumerate(home) if h == dev]
            self.where[ids, 0], self.where[ids, 1] = len(self.pools), np.arange(len(ids))
            pool = SectionPool([samples[i] for i in ids], patch, dev, min_tissue)
            for i, o in zip(ids, pool.origins, strict=True):
                origins[i] = o
            self.pools.append(pool)
        self.counts = np.array([len(o) for o in origins], np.int64)
        total = int(self.counts.sum())
        if total == 0:
            raise SampleError(
                f"no {patch}x{patch} patch has >= {min_tissue:.0%} tissue; use a smaller patch"
            )
        self.origins = np.concatenate(origins)
        self.first = np.concatenate([[0], self.counts.cumsum()[:-1]])
        self.weights = self.counts / total
        self.rng = np.random.default_rng(seed)

    def _placement(self, samples: list[PreparedSample], budget: int | None) -> list[torch.device]:
        if self.device.type != "cuda":
            return [self.device] * len(samples)
        if budget is None:
            budget = int(0.5 * torch.cuda.mem_get_info(self.device)[0])
        home, used = [], 0
        for prep in samples:
            size = section_nbytes(prep, self.patch)
            on_device = used + size <= budget
            used += size if on_device else 0
            home.append(self.device if on_device else torch.device("cpu"))
        return home

    @property
    def device_bytes(self) -> int:
        """Bytes of section tensors resident on the training device."""
        return sum(p.nbytes for p in self.pools if p.device == self.device)

    def draw_indices(self, batch_size: int, augment: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The random part of a batch, ``(B,)`` each: section, HR row and column origin and
        transform id (:func:`transform_offsets`; 0 without ``augment``)."""
        sec = self.rng.choice(len(self.counts), size=batch_size, p=self.weights)
        pick = self.first[sec] + self.rng.integers(0, self.counts[sec])
        if augment:
            transform = self.rng.integers(0, 4, batch_size) + 4 * self.rng.integers(0, 2,
                                                                                    batch_size)
        else:
            transform = np.zeros(batch_size, np.int64)
        return sec, self.origins[pick, 0], self.origins[pick, 1], transform

    def draw(self, batch_size: int, tissue_px_per_cell: int, tile_px: int, n_tiles: int,
             augment: bool = True) -> dict[str, torch.Tensor]:
        """Draw a batch of random patches on the device (random turns/flips when ``augment``)."""
        sec, rows0, cols0, transform = self.draw_indices(batch_size, augment)
        return self.cut(sec, rows0, cols0, transform, tissue_px_per_cell, tile_px, n_tiles)

    def cut(self, sec: np.ndarray, rows0: np.ndarray, cols0: np.ndarray, transform: np.ndarray,
            tissue_px_per_cell: int, tile_px: int, n_tiles: int) -> dict[str, torch.Tensor]:
        """Cut given patches: ``(B,)`` section ids, LR-aligned HR origins and transform ids."""
        pool_of = self.where[sec, 0]
        parts, order = [], []
        for p in np.unique(pool_of):
            at = np.flatnonzero(pool_of == p)
            raw = self.pools[p].cut(self.where[sec[at], 1], rows0[at], cols0[at],
                                    transform[at], self.patch)
            parts.append({k: v.to(self.device) for k, v in raw.items()})
            order.append(at)
        if len(parts) == 1:
            raw = parts[0]
        else:
            back = np.argsort(np.concatenate(order), kind="stable")
            where = torch.from_numpy(back).to(self.device)
            raw = {k: torch.cat([p[k] for p in parts])[where] for k in parts[0]}
        return finish_batch(raw, self.patch, tissue_px_per_cell, tile_px, n_tiles)

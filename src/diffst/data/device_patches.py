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
the 8 rotations/flips, so all modalities turn alike), the tissue-level image by average
pooling, and the cell-level tiles ranked by the entropy of their grey-level histogram with an
exact integer sort key (:func:`entropy_key_table`; identical order on every device).

When the sizes allow (:func:`products_usable`, true for the default model) the pooled image
and the entropy keys of every tile position are computed once per section on the device
(:func:`pooled_image`, :func:`tile_key_map` with per-bin integral images); a batch then
gathers only the pixels it returns. Otherwise the full-resolution crops are cut and pooled,
and their tiles ranked with ``bincount`` histograms (:func:`batch_cell_tiles`). Both give the
batches of :func:`diffst.data.patches.extract_patch` (tests/test_device_patches.py).

Memory stays bounded: sections go to a CUDA device until ``device_budget`` bytes are used;
the others stay in host memory, are cut there with the same ops, and only their crops are
copied to the device per batch. Host RAM keeps no second copy of a section on the device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from diffst.data.patches import PatchBatch, PreparedSample, pad_prepared, valid_origins
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
               width: torch.Tensor, base: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Flat indices ``(B, side, side)`` of turned crops in rasters stored row-major.

    ``rows0``, ``cols0`` ``(B,)`` int64 are the crop origins, ``transform`` ``(B,)`` the
    transform ids of :func:`transform_offsets`, ``width`` ``(B,)`` the raster widths and
    ``base`` ``(B,)`` the flat offsets of the rasters in their storage. ``step`` is the
    raster distance between neighbouring crop elements (1: a dense crop).
    """
    tr, tc = transform_offsets(side, rows0.device)
    v = lambda a: a.view(-1, 1, 1)  # noqa: E731
    return ((v(rows0) + step * tr[transform]) * v(width) + v(cols0) + step * tc[transform]
            + v(base))


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
    rows, cols = rank_tiles(key, n, n_tiles)
    blocks = used.view(b, 3, n, tile, n, tile).permute(0, 2, 4, 1, 3, 5)
    chosen = blocks[torch.arange(b, device=dev).view(-1, 1), rows, cols].contiguous()
    chosen = chosen.float().div_(255.0)
    return pad_tiles(chosen, rows, cols, n, n_tiles)


def rank_tiles(key: torch.Tensor, n: int, n_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid rows and columns ``(B, min(N, n*n))`` of the tiles with the smallest ``key``
    ``(B, n*n)`` (row-major tile order; ties keep that order)."""
    order = torch.sort(key, dim=1, stable=True).indices[:, :n_tiles]
    return order // n, order % n


def pad_tiles(chosen: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n: int,
              n_tiles: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tiles, centres (x, y) and validity padded to ``n_tiles`` by repeating the first tile."""
    b, dev = chosen.shape[0], chosen.device
    centres = torch.stack([(cols.double() + 0.5) / n, (rows.double() + 0.5) / n], -1).float()
    valid = torch.ones(rows.shape, dtype=torch.bool, device=dev)
    extra = n_tiles - rows.shape[1]
    if extra > 0:
        chosen = torch.cat([chosen, chosen[:, :1].expand(-1, extra, -1, -1, -1)], 1)
        centres = torch.cat([centres, centres[:, :1].expand(-1, extra, -1)], 1)
        valid = torch.cat([valid, torch.zeros((b, extra), dtype=torch.bool, device=dev)], 1)
    return chosen, centres, valid


# ---------------------------------------------------------------------------- section products
#: largest (tile_px / grid step)**2 for which tile keys are precomputed per section
MAX_KEY_OVERSAMPLING = 16


def products_usable(k: int, factor: int, patch: int, tissue_px: int, tile_px: int) -> bool:
    """Whether the tissue image and tile ranking can come from per-section precomputation.

    Needs exact block pooling (``k`` a multiple of ``tissue_px``), a patch image that is a
    whole number of tiles (then turning a crop turns its tile grid), and a tile-key grid
    step ``gcd(tile_px, factor * k)`` (every tile of every crop starts on it) that is not
    too fine.
    """
    side = patch * k
    step = math.gcd(tile_px, factor * k)
    return (k % tissue_px == 0 and side % tile_px == 0
            and (tile_px // step) ** 2 <= MAX_KEY_OVERSAMPLING)


def pooled_image(image: torch.Tensor, block: int, rows_per_strip: int = 1024) -> torch.Tensor:
    """``(3, H/block, W/block)`` float32 block means in [0, 1] of an ``(H, W, 3)`` uint8
    image (strips of rows keep the float copy small)."""
    h, w, _ = image.shape
    strip = max(block, rows_per_strip // block * block)
    out = [F.avg_pool2d(image[r : r + strip].permute(2, 0, 1).float().div_(255.0)[None],
                        block)[0] for r in range(0, h, strip)]
    return torch.cat(out, 1)


def tile_key_map(image: torch.Tensor, tile: int, step: int) -> torch.Tensor:
    """Entropy keys (:func:`entropy_key_table`) of every ``tile`` x ``tile`` block of an
    ``(H, W, 3)`` uint8 image whose corner lies on a grid of ``step`` pixels:
    ``(1 + (H - tile) // step, 1 + (W - tile) // step)`` int64 (per-bin integral images)."""
    h, w, _ = image.shape
    gray = image.sum(-1, dtype=torch.int32).div_(3, rounding_mode="floor")
    q = (gray * ENTROPY_BINS).div_(256, rounding_mode="floor").to(torch.uint8)
    del gray
    nr, nc = 1 + (h - tile) // step, 1 + (w - tile) // step
    lo_r, lo_c = slice(0, (nr - 1) * step + 1, step), slice(0, (nc - 1) * step + 1, step)
    hi_r = slice(tile, tile + (nr - 1) * step + 1, step)
    hi_c = slice(tile, tile + (nc - 1) * step + 1, step)
    table = entropy_key_table(tile * tile, image.device)
    key = torch.zeros((nr, nc), dtype=torch.int64, device=image.device)
    integral = torch.zeros((h + 1, w + 1), dtype=torch.int32, device=image.device)
    for b in range(ENTROPY_BINS):
        integral[1:, 1:] = (q == b).to(torch.int32).cumsum(0).cumsum(1)
        counts = (integral[hi_r, hi_c] - integral[lo_r, hi_c] - integral[hi_r, lo_c]
                  + integral[lo_r, lo_c])
        key += table[counts.long()]
    return key


# ---------------------------------------------------------------------------- storage
def padded_shape(prep: PreparedSample, patch: int) -> tuple[int, int]:
    """HR raster shape of :func:`diffst.data.patches.pad_prepared` ``(prep, patch)``."""
    out = []
    for side in prep.shape:
        pad = max(0, patch - side)
        out.append(side + pad + (-pad) % prep.factor)
    return out[0], out[1]


def _rasters(prep: PreparedSample, patch: int, products: tuple[int, int] | None
             ) -> list[tuple[int, int]]:
    """``(rows, cols)`` of the rasters a section stores: HR maps, LR map, image, and with
    ``products`` ``(tissue_px, tile_px)`` the pooled image and the tile-key map."""
    h, w = padded_shape(prep, patch)
    s, k = prep.factor, prep.k
    out = [(h, w), (h // s, w // s), (h * k, w * k)]
    if products is not None:
        t, tile = products
        step = math.gcd(tile, s * k)
        out += [(h * t, w * t), (1 + (h * k - tile) // step, 1 + (w * k - tile) // step)]
    return out


def section_nbytes(prep: PreparedSample, patch: int,
                   products: tuple[int, int] | None = None) -> int:
    """Bytes a prepared section occupies in a :class:`SectionPool`."""
    g = prep.lr.shape[0]
    n_maps = 2 * g + 1 if prep.hr is not None else g + 1
    sizes = [r * c for r, c in _rasters(prep, patch, products)]
    out = 4 * (n_maps * sizes[0] + g * sizes[1]) + 3 * sizes[2]
    if products is not None:
        out += 12 * sizes[3] + 8 * sizes[4]
    return out


class SectionPool:
    """Sections concatenated in flat tensors on one device.

    ``maps`` ``(C, sum H*W)`` float32 holds ``lr_up`` (G channels), ``hr`` (G, when known)
    and the tissue mask (1) of every section; ``lr`` ``(G, sum h*w)`` float32; ``image``
    ``(sum H*k*W*k, 3)`` uint8. With ``products`` ``(tissue_px, tile_px)`` also ``tissue``
    ``(3, sum H*t*W*t)`` float32, the image block-averaged to ``tissue_px`` pixels per cell,
    and ``keys`` ``(sum nr*nc,)`` int64, the entropy keys of the tiles on a grid
    (:func:`tile_key_map`), so batches need no full-resolution image work.
    ``layout[i]`` ``(n_rasters, 2)`` int64 holds section i's flat offset and row width in each
    of these; ``origins[i]`` ``(n_i, 2)`` are its HR patch origins with at least
    ``min_tissue`` tissue (:func:`diffst.data.patches.valid_origins`).
    """

    def __init__(self, preps: list[PreparedSample], patch: int, device: torch.device,
                 min_tissue: float = 0.3, products: tuple[int, int] | None = None) -> None:
        first = preps[0]
        self.device, self.patch, self.products = device, patch, products
        self.resident = True  # False for a sampler's host-memory overflow pool
        self.n_genes, self.k, self.factor = first.lr.shape[0], first.k, first.factor
        self.has_hr = first.hr is not None
        for prep in preps:
            if (prep.lr.shape[0], prep.hr is not None, prep.k, prep.factor) != (
                    self.n_genes, self.has_hr, self.k, self.factor):
                raise SampleError("training sections differ in genes, HR truth, k or factor")
        rasters = np.array([_rasters(p, patch, products) for p in preps], np.int64)
        sizes = rasters[..., 0] * rasters[..., 1]
        offsets = np.concatenate([np.zeros_like(sizes[:1]), sizes.cumsum(0)[:-1]])
        self.layout = np.stack([offsets, rasters[..., 1]], -1)  # (n, n_rasters, 2)
        total = [int(x) for x in sizes.sum(0)]
        g, n_maps = self.n_genes, (2 * self.n_genes + 1 if self.has_hr else self.n_genes + 1)
        new = lambda *shape, dtype=torch.float32: torch.empty(  # noqa: E731
            shape, dtype=dtype, device=device)
        self.maps, self.lr = new(n_maps, total[0]), new(g, total[1])
        self.image = new(total[2], 3, dtype=torch.uint8)
        if products is not None:
            self.tissue, self.keys = new(3, total[3]), new(total[4], dtype=torch.int64)
        self.origins: list[np.ndarray] = []
        for i, prep in enumerate(preps):
            padded = pad_prepared(prep, patch)
            self._store(self.layout[i], sizes[i], padded)
            self.origins.append(valid_origins(padded, patch, min_tissue))

    def _store(self, layout: np.ndarray, size: np.ndarray, padded: PreparedSample) -> None:
        (m, _), (lo, _), (io, _) = layout[:3].tolist()
        parts = [padded.lr_up] + ([padded.hr] if self.has_hr else []) + [padded.mask[None]]
        row = 0
        for part in parts:
            flat = np.asarray(part, np.float32).reshape(part.shape[0], -1)
            self.maps[row : row + part.shape[0], m : m + size[0]] = torch.from_numpy(flat)
            row += part.shape[0]
        lr = np.asarray(padded.lr, np.float32).reshape(self.n_genes, -1)
        self.lr[:, lo : lo + size[1]] = torch.from_numpy(lr)
        self.image[io : io + size[2]] = torch.from_numpy(
            np.ascontiguousarray(padded.image).reshape(-1, 3))
        if self.products is not None:
            t, tile = self.products
            (to, _), (ko, _) = layout[3:].tolist()
            image = self.image[io : io + size[2]].view(*padded.image.shape)
            self.tissue[:, to : to + size[3]] = pooled_image(image, self.k // t).flatten(1)
            step = math.gcd(tile, self.factor * self.k)
            self.keys[ko : ko + size[4]] = tile_key_map(image, tile, step).flatten()

    @property
    def nbytes(self) -> int:
        """Bytes held by the pool's tensors."""
        held = [self.maps, self.lr, self.image]
        held += [self.tissue, self.keys] if self.products is not None else []
        return sum(t.numel() * t.element_size() for t in held)

    def cut(self, local: np.ndarray, rows0: np.ndarray, cols0: np.ndarray,
            transform: np.ndarray, tissue_px: int, tile_px: int, n_tiles: int
            ) -> PatchBatch:
        """A batch cut on this pool's device (a few gathers for the whole batch).

        Args:
            local: ``(B,)`` section indices within the pool.
            rows0, cols0: ``(B,)`` LR-aligned HR origins.
            transform: ``(B,)`` transform ids (:func:`transform_offsets`).
            tissue_px, tile_px, n_tiles: as :func:`diffst.data.patches.extract_patch`.

        Returns:
            The batch (as :func:`finish_batch`).
        """
        g, s, k, patch = self.n_genes, self.factor, self.k, self.patch
        lay = self.layout[local]  # (B, n_rasters, 2)
        cols = np.concatenate([np.stack([rows0, cols0, transform]), lay.reshape(len(local), -1).T])
        r0, c0, t, *where = torch.from_numpy(cols.astype(np.int64)).to(self.device)
        offs, widths = where[0::2], where[1::2]
        maps = self.maps[:, crop_index(r0, c0, t, patch, widths[0], offs[0])].transpose(0, 1)
        lr_idx = crop_index(r0 // s, c0 // s, t, patch // s, widths[1], offs[1])
        out = {"lr": self.lr[:, lr_idx].transpose(0, 1).contiguous(),
               "lr_up": maps[:, :g].contiguous(),
               "mask": maps[:, -1:].contiguous()}
        if self.has_hr:
            out["hr"] = maps[:, g : 2 * g].contiguous()
        if self.products == (tissue_px, tile_px):
            out.update(self._image_products(r0, c0, t, offs, widths, n_tiles))
            return PatchBatch.from_dict(out)
        idx = crop_index(r0 * k, c0 * k, t, patch * k, widths[2], offs[2])
        out["crop"] = self.image[idx].permute(0, 3, 1, 2).contiguous()
        return finish_batch(out, patch, tissue_px, tile_px, n_tiles)

    def _image_products(self, r0: torch.Tensor, c0: torch.Tensor, t: torch.Tensor,
                        offs: list[torch.Tensor], widths: list[torch.Tensor], n_tiles: int
                        ) -> dict[str, torch.Tensor]:
        """Tissue image and ranked tiles from the precomputed pooled image and tile keys."""
        (tp, tile), k, patch = self.products, self.k, self.patch
        b, n = r0.shape[0], patch * k // tile
        step = math.gcd(tile, self.factor * k)
        idx = crop_index(r0 * tp, c0 * tp, t, patch * tp, widths[3], offs[3])
        tissue = self.tissue[:, idx].transpose(0, 1).contiguous()
        kidx = crop_index(r0 * k // step, c0 * k // step, t, n, widths[4], offs[4],
                          tile // step)
        rows, cols = rank_tiles(self.keys[kidx].view(b, n * n), n, n_tiles)
        # the turned crop's tile (rows, cols) is the source tile (src_r, src_c), turned alike
        tr, tc = transform_offsets(n, r0.device)
        tt = t.view(-1, 1).expand_as(rows)
        src_r, src_c = tr[tt, rows, cols], tc[tt, rows, cols]
        m = rows.shape[1]
        rep = lambda a: a.view(-1, 1).expand(-1, m).reshape(-1)  # noqa: E731
        pix = crop_index((r0 * k).view(-1, 1) + src_r * tile, (c0 * k).view(-1, 1) + src_c * tile,
                         tt.reshape(-1), tile, rep(widths[2]), rep(offs[2]))
        chosen = self.image[pix].view(b, m, tile, tile, 3).permute(0, 1, 4, 2, 3).contiguous()
        tiles, centres, valid = pad_tiles(chosen.float().div_(255.0), rows, cols, n, n_tiles)
        return {"tissue_image": tissue, "tiles": tiles, "tile_centres": centres,
                "tile_valid": valid}


# ---------------------------------------------------------------------------- batches
def finish_batch(raw: dict[str, torch.Tensor], patch: int, tissue_px_per_cell: int,
                 tile_px: int, n_tiles: int) -> PatchBatch:
    """The batch from raw crops: adds the tissue-level image and the cell tiles.

    Fields, shapes and dtypes are those of :func:`diffst.data.patches.extract_patch` with a
    leading batch axis: ``lr``, ``lr_up``, ``mask``, ``hr`` (when known), ``tissue_image``
    ``(B, 3, P*t, P*t)``, ``tiles``, ``tile_centres`` and ``tile_valid``.
    """
    crop = raw["crop"]
    out = {key: raw[key] for key in ("lr", "lr_up", "mask", "hr") if key in raw}
    out["tissue_image"] = F.adaptive_avg_pool2d(crop.float().div_(255.0),
                                                patch * tissue_px_per_cell)
    out["tiles"], out["tile_centres"], out["tile_valid"] = batch_cell_tiles(
        crop, tile_px, n_tiles)
    return PatchBatch.from_dict(out)


class DevicePatchSampler:
    """Random LR-aligned training patches cut on ``device`` (drop-in for ``PatchSampler``).

    Same constructor arguments as :class:`diffst.data.patches.PatchSampler` plus:

    * ``device``: where batches are made and (within the budget) sections are stored;
    * ``device_budget``: bytes of section tensors allowed on the device (default: half of a
      CUDA device's free memory at construction; no limit on the CPU). Sections beyond it
      stay in host memory and only their crops travel;
    * ``image_products`` ``(tissue_px_per_cell, tile_px)``: the values :meth:`draw` will be
      called with. When :func:`products_usable`, each section's block-averaged image and tile
      entropy keys are computed once, and batches then touch only the pixels they return;
      otherwise (and for draws with other values) crops are cut at full resolution first.
      Both ways give the same batches.

    ``rng`` is a NumPy ``Generator`` that checkpoints save and restore, so resumed training
    draws exactly the same patches.
    """

    def __init__(self, samples: list[PreparedSample], patch: int, min_tissue: float = 0.3,
                 seed: int = 0, device: str | torch.device = "cpu",
                 device_budget: int | None = None,
                 image_products: tuple[int, int] | None = None) -> None:
        if not samples:
            raise SampleError("no training sections given")
        self.patch = patch
        self.device = torch.device(device)
        first = samples[0]
        usable = image_products is not None and products_usable(
            first.k, first.factor, patch, *image_products)
        self.products = tuple(image_products) if usable else None
        resident = self._placement(samples, device_budget)
        self.pools: list[SectionPool] = []
        self.where = np.zeros((len(samples), 2), np.int64)  # (pool, index in pool)
        origins: list[np.ndarray] = [np.zeros((0, 2), np.int64)] * len(samples)
        for on_device in (True, False):
            ids = [i for i, r in enumerate(resident) if r == on_device]
            if not ids:
                continue
            self.where[ids, 0], self.where[ids, 1] = len(self.pools), np.arange(len(ids))
            home = self.device if on_device else torch.device("cpu")
            pool = SectionPool([samples[i] for i in ids], patch, home, min_tissue,
                               self.products)
            pool.resident = on_device
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

    def _placement(self, samples: list[PreparedSample], budget: int | None) -> list[bool]:
        """Per section: whether it is stored on the device (in order, within the budget)."""
        if budget is None and self.device.type != "cuda":
            return [True] * len(samples)
        if budget is None:
            budget = int(0.5 * torch.cuda.mem_get_info(self.device)[0])
        resident, used = [], 0
        for prep in samples:
            size = section_nbytes(prep, self.patch, self.products)
            resident.append(used + size <= budget)
            used += size if resident[-1] else 0
        return resident

    @property
    def device_bytes(self) -> int:
        """Bytes of section tensors stored on the training device (not in host memory)."""
        return self.pools[0].nbytes if self.pools[0].resident else 0

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
             augment: bool = True) -> PatchBatch:
        """Draw a batch of random patches on the device (random turns/flips when ``augment``)."""
        sec, rows0, cols0, transform = self.draw_indices(batch_size, augment)
        return self.cut(sec, rows0, cols0, transform, tissue_px_per_cell, tile_px, n_tiles)

    def cut(self, sec: np.ndarray, rows0: np.ndarray, cols0: np.ndarray, transform: np.ndarray,
            tissue_px_per_cell: int, tile_px: int, n_tiles: int) -> PatchBatch:
        """Cut given patches: ``(B,)`` section ids, LR-aligned HR origins and transform ids."""
        pool_of = self.where[sec, 0]
        parts, order = [], []
        for p in np.unique(pool_of):
            at = np.flatnonzero(pool_of == p)
            part = self.pools[p].cut(self.where[sec[at], 1], rows0[at], cols0[at],
                                     transform[at], tissue_px_per_cell, tile_px, n_tiles)
            parts.append(part.to(self.device))
            order.append(at)
        if len(parts) == 1:
            return parts[0]
        back = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
        back = back.to(self.device)
        return PatchBatch.cat(parts).map(lambda v: v[back])

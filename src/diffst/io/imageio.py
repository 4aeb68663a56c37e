"""Load H&E images as ``(H, W, 3)`` uint8 RGB arrays, optionally at a reduced working resolution.

Pixel-coordinate convention (the same as :mod:`diffst.data.sample`): pixel ``(x, y)`` has its
centre at integer coordinates, so pixel column ``i`` spans ``[i - 0.5, i + 0.5]``.

* JPEG, PNG and other formats Pillow opens: read with Pillow. JPEGs are decoded directly at a
  reduced size when downscaling (libjpeg DCT scaling, 1/2, 1/4 or 1/8), which keeps memory and
  time small. An 8-bit non-interlaced PNG reduced at least twofold is decoded in strips of
  rows (:func:`_png_strips`: the compressed stream is inflated piece by piece, each strip is
  re-wrapped as a small PNG that starts with the previous strip's last row, unfiltered, and
  decoded by Pillow) and averaged over integer blocks on the way, so memory stays near the
  output size plus one strip (a 30000 x 30000 px PNG read at 1/10: 0.31 GB above the
  interpreter's baseline and 32 s on one core, against 12.5 GB and 70 s decoded whole).
  Other formats (and 16-bit or interlaced PNGs) are decoded at full size first.
* TIFF / OME-TIFF: read with tifffile; for pyramidal files the smallest level that is still at
  least as large as the requested size is used. A level still more than twice the requested
  size is decoded one strip or tile at a time and averaged over integer blocks on the way, so
  memory stays near the output size. Channel-first ``(C, H, W)``, RGBA (alpha dropped)
  and grayscale (replicated to RGB) are accepted. Integer images other than uint8 (e.g. uint16)
  and float images are scaled linearly so their maximum maps to 255 (H&E background is the
  brightest part of the slide); float images with maximum <= 1 are multiplied by 255.

Memory bound: before decoding, :func:`decode_estimate` estimates the peak memory of reading
the image at the size it will be decoded at (JPEG draft scale or TIFF pyramid level included) as
:data:`PEAK_COPIES` times the decoded pixel bytes (for a TIFF read strip by strip: one strip
plus the block sums; for a PNG read by strips: one strip, about :data:`PNG_STRIP_BYTES`, plus
the block sums); above ``max_gb`` (default
:data:`DEFAULT_MAX_IMAGE_GB`, or the environment variable ``DIFFST_MAX_IMAGE_GB``) the read is
refused with a message naming the file, the estimate and the fixes (a smaller working
resolution, a pyramidal TIFF, a higher limit). Pillow's decompression-bomb guard stays on at
:data:`PIL_MAX_PIXELS` (an error above twice that many pixels).
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_MAX_IMAGE_GB = 8.0  # peak memory allowed for decoding one image
PEAK_COPIES = 4  # decode + RGB conversion + array copy + resampling, measured on large PNGs
READ_BUFFER = 1 << 25  # bytes of compressed TIFF data read at once when decoding by strips
PNG_STRIP_BYTES = 1 << 26  # working memory of one PNG strip (decoded rows and their copies)
PNG_STRIP_COPIES = 40  # bytes per pixel of a strip in flight: raw, re-wrapped, Pillow, float64
PIL_MAX_PIXELS = 1_500_000_000  # Pillow refuses images over twice this many pixels
Image.MAX_IMAGE_PIXELS = PIL_MAX_PIXELS

_TIFF_SUFFIXES = (".tif", ".tiff")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` in pixels of the image at ``path``, read from its header only."""
    path = _existing(path)
    if _is_tiff(path):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return _tiff_hw(tif.series[0].shape, path)
    with _open_pil(path) as im:
        return im.height, im.width


def max_image_gb() -> float:
    """The decode memory limit in GB: ``DIFFST_MAX_IMAGE_GB`` if set, else the default."""
    raw = os.environ.get("DIFFST_MAX_IMAGE_GB")
    if raw is None:
        return DEFAULT_MAX_IMAGE_GB
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"DIFFST_MAX_IMAGE_GB must be a positive number of GB, got {raw!r}")
    return value


def decode_estimate(path: str | Path, target_hw: tuple[int, int]) -> tuple[tuple[int, int], int]:
    """``(H, W)`` the image will be decoded at for ``target_hw`` and the peak bytes estimated."""
    path = _existing(path)
    if _is_tiff(path):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            level = _tiff_level(series, target_hw, path)
            hw = _tiff_hw(level.shape, path)
            per_px = max(1, int(np.prod(level.shape)) // (hw[0] * hw[1])) * level.dtype.itemsize
            k = _block(hw, target_hw)
            page = _segmentable(level)
            if k >= 2 and page is not None:  # decoded strip by strip, summed into k x k blocks
                seg_h = page.tilelength if page.is_tiled else min(page.rowsperstrip, hw[0])
                seg_w = page.tilewidth if page.is_tiled else hw[1]
                out_hw = (math.ceil(hw[0] / k), math.ceil(hw[1] / k))
                channels = per_px // level.dtype.itemsize
                segment = seg_h * seg_w * per_px * (1 + 8 // level.dtype.itemsize)
                return out_hw, segment + READ_BUFFER + _reduce_bytes(  # + block sums, mean
                    out_hw, channels, k, _max_value(level.dtype), level.dtype.itemsize)
    else:
        with _open_pil(path) as im:
            hw = (im.height, im.width)
            k = _block(hw, target_hw)
            if im.format == "PNG" and k >= 2 and _png_strippable(path):
                out_hw = (math.ceil(hw[0] / k), math.ceil(hw[1] / k))
                rows = _png_strip_rows(hw[1], k)
                return out_hw, (rows * hw[1] * PNG_STRIP_COPIES + READ_BUFFER
                                + _reduce_bytes(out_hw, 3, k, 255.0, 1))
            if im.format == "JPEG":
                k = max((d for d in (1, 2, 4, 8) if math.ceil(hw[0] / d) >= target_hw[0]
                         and math.ceil(hw[1] / d) >= target_hw[1]), default=1)
                hw = (math.ceil(hw[0] / k), math.ceil(hw[1] / k))
            per_px = max(len(im.getbands()), 3)
    return hw, PEAK_COPIES * hw[0] * hw[1] * per_px


def read_image(
    path: str | Path,
    max_pixels: int | None = None,
    scale: float = 1.0,
    max_gb: float | None = None,
) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB.

    Args:
        path: JPEG/PNG/TIFF file.
        max_pixels: refuse (ValueError) images with more than this many pixels at full size.
        scale: output size factor in (0, 1]; the result has ``round(H * scale)`` x
            ``round(W * scale)`` pixels, area-averaged. 1 keeps the full resolution.
        max_gb: refuse images whose decoding needs more memory than this (GB, estimated by
            :func:`decode_estimate`); default :func:`max_image_gb`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable file, unsupported layout, over ``max_pixels`` or ``max_gb``.
    """
    path = _existing(path)
    if not 0 < scale <= 1:
        raise ValueError(f"{path}: scale must be in (0, 1], got {scale}")
    h, w = image_size(path)
    if max_pixels is not None and h * w > max_pixels:
        raise ValueError(
            f"{path}: image has {h}x{w} = {h * w} pixels, more than max_pixels={max_pixels}; "
            "pass a larger max_pixels or a downsampled image"
        )
    target = (max(1, round(h * scale)), max(1, round(w * scale)))
    _check_memory(path, (h, w), target, max_image_gb() if max_gb is None else max_gb)
    img = _read_tiff(path, target) if _is_tiff(path) else _read_pil(path, target)
    if img.shape[:2] != target:
        img = _resize_area(img, target)
    return img


def downscale_image(img: np.ndarray, factor: float) -> np.ndarray:
    """Area-average ``img`` ``(H, W, 3)`` uint8 to ``round(H * factor)`` x ``round(W * factor)``.

    ``factor`` must be in (0, 1]; 1 returns the input unchanged.
    """
    if not 0 < factor <= 1:
        raise ValueError(f"downscale factor must be in (0, 1], got {factor}")
    if factor == 1:
        return img
    h, w = img.shape[:2]
    return _resize_area(img, (max(1, round(h * factor)), max(1, round(w * factor))))


def pixel_rescale_matrix(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """3x3 map from pixel ``(x, y, 1)`` of an ``src_hw`` image to the same point in ``dst_hw``.

    Pixel centres sit at integer coordinates, so ``x' = (x + 0.5) * sx - 0.5`` with
    ``sx = W_dst / W_src`` (likewise y).
    """
    sy = dst_hw[0] / src_hw[0]
    sx = dst_hw[1] / src_hw[1]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def load_working_image(
    path: str | Path,
    um_per_px: float,
    work_um_per_px: float | None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Read an image at a working resolution of ``work_um_per_px`` µm per pixel.

    The image is only ever reduced: when it is already coarser than ``work_um_per_px`` (or
    ``work_um_per_px`` is None) it is returned at full size.

    Returns:
        ``image`` ``(h, w, 3)`` uint8, ``to_work`` 3x3 mapping full-resolution pixel
        ``(x, y, 1)`` to working pixels (compose it onto an affine: ``to_work @ affine``), and the
        working ``um_per_px`` (geometric mean of the two axes' actual scales).
    """
    scale = 1.0
    if work_um_per_px is not None:
        if not work_um_per_px > 0:
            raise ValueError(f"work_um_per_px must be positive, got {work_um_per_px}")
        scale = min(1.0, um_per_px / work_um_per_px)
    full_hw = image_size(path)
    img = read_image(path, max_pixels=max_pixels, scale=scale)
    to_work = pixel_rescale_matrix(full_hw, img.shape[:2])
    actual = math.sqrt(to_work[0, 0] * to_work[1, 1])
    return img, to_work, um_per_px / actual


# ---------------------------------------------------------------------------- internals
def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    return path


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in _TIFF_SUFFIXES


def _check_memory(path: Path, full_hw: tuple[int, int], target_hw: tuple[int, int],
                  limit_gb: float) -> None:
    decoded_hw, need = decode_estimate(path, target_hw)
    if need <= limit_gb * 1e9:
        return
    h, w = full_hw
    at = "" if decoded_hw == full_hw else f" (decoded at {decoded_hw[1]}x{decoded_hw[0]} px)"
    raise ValueError(
        f"{path}: reading this {w}x{h} px image{at} needs about {need / 1e9:.1f} GB of memory, "
        f"more than the {limit_gb:g} GB limit; read it at a coarser working resolution "
        "(--work-um-per-px, work_um_per_px= in Python: JPEGs, 8-bit PNGs and TIFFs are then read "
        "reduced), pass a "
        "downsampled image or a tiled pyramidal TIFF (e.g. `vips tiffsave in.png out.tif "
        "--tile --pyramid --compression jpeg`), or raise the limit (--max-image-gb, "
        "max_gb=, or the DIFFST_MAX_IMAGE_GB environment variable)"
    )


def _open_pil(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():  # sizes are checked against max_gb before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"{path}: the image is too large to open safely ({exc}); pass a downsampled image "
            "or a tiled pyramidal TIFF (read reduced to the working resolution)"
        ) from exc
    except Exception as exc:  # Pillow raises several types for unreadable files
        raise ValueError(f"{path}: cannot read as an image ({exc})") from exc


def _read_pil(path: Path, target_hw: tuple[int, int]) -> np.ndarray:
    with _open_pil(path) as im:
        hw = (im.height, im.width)
        k = _block(hw, target_hw)
        if im.format == "PNG" and k >= 2 and _png_strippable(path):
            im.close()
            sums = _BlockSums(hw, k, 3)
            rows = _png_strip_rows(hw[1], k)
            try:
                for y, strip in _png_strips(path, rows):
                    if rows % k == 0:  # strips start at multiples of k: Pillow's box reduction
                        sums.add_means(y // k, np.asarray(strip.reduce(k)))
                    else:  # blocks taller than a strip: summed across strips
                        sums.add(y, 0, np.asarray(strip))
            except (OSError, zlib.error, EOFError, struct.error) as exc:
                raise ValueError(
                    f"{path}: image data is truncated or corrupt ({exc})") from exc
            return sums.mean(target_hw, np.dtype(np.uint8))
        if im.format == "JPEG" and (target_hw[0] < im.height or target_hw[1] < im.width):
            im.draft("RGB", (target_hw[1], target_hw[0]))  # DCT-domain reduction, >= target
        try:
            if im.mode in ("RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1"):
                arr = np.asarray(im.convert("RGB"))
            else:  # 16/32-bit integer or float modes
                arr = _to_rgb_uint8(np.asarray(im), path)
        except OSError as exc:
            raise ValueError(f"{path}: image data is truncated or corrupt ({exc})") from exc
    return arr


def _tiff_hw(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    dims = [d for d in shape if d > 1] if len(shape) > 3 else list(shape)
    if len(dims) == 2:
        return dims[0], dims[1]
    if len(dims) == 3:
        if dims[2] in (1, 3, 4):
            return dims[0], dims[1]
        if dims[0] in (1, 3, 4):
            return dims[1], dims[2]
    raise ValueError(
        f"{path}: unsupported TIFF layout {shape}; expected (H, W), (H, W, C) or (C, H, W)"
    )


def _read_tiff(path: Path, target_hw: tuple[int, int]) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            level = _tiff_level(tif.series[0], target_hw, path)
            hw = _tiff_hw(level.shape, path)
            k, page = _block(hw, target_hw), _segmentable(level)
            if k >= 2 and page is not None:
                arr = _block_mean(page, hw, k, target_hw)
            else:
                arr = level.asarray()
    except (tifffile.TiffFileError, OSError, NotImplementedError) as exc:
        raise ValueError(f"{path}: cannot read as a TIFF image ({exc})") from exc
    return _to_rgb_uint8(arr, path)


def _block(hw: tuple[int, int], target_hw: tuple[int, int]) -> int:
    """Integer block size that reduces ``hw`` to no less than ``target_hw``."""
    return max(1, min(hw[0] // target_hw[0], hw[1] // target_hw[1]))


def _segmentable(level):
    """The single contiguous TIFF page of ``level`` when it can be decoded strip by strip."""
    import tifffile

    pages = level.pages
    page = pages[0] if len(pages) == 1 else None
    if not isinstance(page, tifffile.TiffPage) or page.imagedepth != 1:
        return None
    if page.samplesperpixel > 1 and page.planarconfig != 1:  # separate colour planes
        return None
    if len(page.shape) not in (2, 3) or page.shape[:2] != level.shape[:2]:
        return None
    return page


class _BlockSums:
    """Sums of pixels over ``k`` x ``k`` blocks of an ``hw`` image, filled piece by piece.

    :meth:`add` takes any rectangular piece (a TIFF strip or tile, PNG rows); :meth:`mean`
    returns the block means (sum / k², a partial edge block as if its missing pixels were 0)
    box-resampled from the region ``W / k`` x ``H / k`` blocks (which covers exactly the image)
    to the target size. Memory: the block sums, ``ceil(H / k) * ceil(W / k) * C`` values
    (float32 while they stay exact, i.e. ``max_value * k²`` below 2**24, else float64), and
    while :meth:`mean` runs one plane of temporaries and the output (:func:`_reduce_bytes`).
    """

    def __init__(self, hw: tuple[int, int], k: int, channels: int,
                 max_value: float = 255.0) -> None:
        self.hw, self.k = hw, k
        dtype = _sum_dtype(k, max_value)
        self.sums = np.zeros((math.ceil(hw[0] / k), math.ceil(hw[1] / k), channels), dtype)

    def add(self, y: int, x: int, piece: np.ndarray) -> None:
        """Add ``piece`` ``(rows, cols, C)`` whose top-left pixel is ``(x, y)`` (clipped)."""
        h, w = self.hw
        block = piece[: h - y, : w - x]
        rows = (y + np.arange(block.shape[0])) // self.k
        cols = (x + np.arange(block.shape[1])) // self.k
        r0 = np.flatnonzero(np.r_[True, np.diff(rows) > 0])
        c0 = np.flatnonzero(np.r_[True, np.diff(cols) > 0])
        # rows first, accumulating in float64 without a float copy of the piece
        part = np.add.reduceat(np.add.reduceat(block, r0, axis=0, dtype=np.float64), c0, axis=1)
        self.sums[rows[r0][:, None], cols[c0][None, :]] += part

    def add_means(self, block_row: int, means: np.ndarray) -> None:
        """Add block means ``(rows, all block columns, C)`` starting at block row ``block_row``.

        A partial edge block's mean is over its pixels inside the image (Pillow's reduce).
        """
        h, w = self.hw
        k = self.k
        rows = np.arange(block_row, block_row + means.shape[0])
        count_r = np.minimum(k, h - rows * k).astype(np.float64)
        count_c = np.minimum(k, w - np.arange(means.shape[1]) * k).astype(np.float64)
        self.sums[rows] += means * count_r[:, None, None] * count_c[None, :, None]

    def mean(self, target_hw: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """``(*target_hw, C)`` area means in ``dtype`` (integers rounded), a plane at a time."""
        h, w = self.hw
        region = (0.0, 0.0, w / self.k, h / self.k)
        out = np.empty((*target_hw, self.sums.shape[2]), dtype)
        for c in range(self.sums.shape[2]):
            plane = _box_resize((self.sums[:, :, c] / self.k**2).astype(np.float32),
                                target_hw, region)
            out[:, :, c] = np.rint(plane) if np.issubdtype(dtype, np.integer) else plane
        return out


def _sum_dtype(k: int, max_value: float) -> np.dtype:
    """float32 when sums of ``k`` x ``k`` values up to ``max_value`` stay exact, else float64."""
    return np.dtype(np.float32 if max_value * k * k < 2**24 else np.float64)


def _reduce_bytes(out_hw: tuple[int, int], channels: int, k: int, max_value: float,
                  out_itemsize: int) -> int:
    """Peak bytes of :class:`_BlockSums` for an output of ``out_hw``: sums, one plane of
    temporaries (float32 mean and its resampled copy, about 12 bytes a pixel) and the output."""
    px = out_hw[0] * out_hw[1]
    return px * (channels * _sum_dtype(k, max_value).itemsize + 12 + channels * out_itemsize)


def _block_mean(page, hw: tuple[int, int], k: int, target_hw: tuple[int, int]) -> np.ndarray:
    """Area-average a TIFF page to ``target_hw``, decoding one strip or tile at a time.

    Returns ``(*target_hw, C)`` in the page's dtype (integers rounded); see :class:`_BlockSums`.
    Memory: one segment plus the block sums.
    """
    sums = _BlockSums(hw, k, page.samplesperpixel, _max_value(page.dtype))
    for segment, index, _ in page.segments(maxworkers=1, buffersize=READ_BUFFER):
        sums.add(index[2], index[3], segment[0])
    return sums.mean(target_hw, page.dtype)


def _max_value(dtype: np.dtype) -> float:
    """Largest value of an integer dtype; inf for floats (sums kept in float64)."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else math.inf


# ---------------------------------------------------------------------------- PNG by strips
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel by colour type
_PNG_KEEP = (b"PLTE", b"tRNS")  # chunks before the pixel data that decoding a strip needs


def _png_ihdr(path: Path) -> tuple[int, int, int, int, int] | None:
    """``(width, height, bit depth, colour type, interlace)`` of a PNG, None if not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(29)
    if len(head) < 29 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return width, height, depth, colour, interlace


def _png_strippable(path: Path) -> bool:
    """Whether :func:`_png_strips` can read this PNG: 8 bits per sample, not interlaced."""
    ihdr = _png_ihdr(path)
    return ihdr is not None and ihdr[2] == 8 and ihdr[3] in _PNG_SAMPLES and ihdr[4] == 0


def _png_strip_rows(width: int, k: int) -> int:
    """Rows per strip, about :data:`PNG_STRIP_BYTES` in flight: a multiple of ``k`` when ``k``
    rows fit (reduced by Pillow), else fewer (blocks summed across strips)."""
    fit = PNG_STRIP_BYTES // (PNG_STRIP_COPIES * max(width, 1))
    return k * (fit // k) if fit >= k else max(1, fit)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_idat_pieces(fh, keep: list[bytes]):
    """Yield the compressed pixel data of an open PNG (after its signature and IHDR) piece by
    piece, at most :data:`READ_BUFFER` bytes each; chunks named in :data:`_PNG_KEEP` that come
    first are appended to ``keep`` (whole chunks, ready to copy)."""
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise EOFError("the file ends before its IEND chunk")
        length, kind = struct.unpack(">I", head[:4])[0], head[4:]
        if kind == b"IEND":
            return
        if kind == b"IDAT":
            left = length
            while left:
                piece = fh.read(min(left, READ_BUFFER))
                if not piece:
                    raise EOFError("the file ends inside its pixel data")
                left -= len(piece)
                yield piece
            fh.seek(4, os.SEEK_CUR)  # CRC (zlib checks the data's own checksum)
        elif kind in _PNG_KEEP:
            data = fh.read(length)
            fh.seek(4, os.SEEK_CUR)
            keep.append(_png_chunk(kind, data))
        else:
            fh.seek(length + 4, os.SEEK_CUR)


def _png_strips(path: Path, rows: int):
    """Yield ``(y, strip)``: an 8-bit non-interlaced PNG decoded ``rows`` rows at a time.

    ``strip`` is a Pillow RGB image of rows ``y .. y + n - 1`` (``n = rows`` except at the
    end). The zlib stream is inflated with a bounded output size; each strip's filtered rows
    are re-wrapped as a small PNG (stored, not compressed) whose first row is the previous
    strip's last row, unfiltered (filter type 0), so the filters that refer to the row above
    decode exactly; Pillow decodes it.
    """
    width, height, depth, colour, _ = _png_ihdr(path)
    line = 1 + width * _PNG_SAMPLES[colour] * depth // 8  # filter byte + samples
    keep: list[bytes] = []
    inflater = zlib.decompressobj()
    pending = bytearray()
    previous = None  # the last decoded row, unfiltered, in the file's own sample layout
    y = 0
    with open(path, "rb") as fh:
        fh.seek(8 + 25)  # signature, IHDR
        pieces = _png_idat_pieces(fh, keep)
        while y < height:
            need = min(rows, height - y) * line
            while len(pending) < need:
                data = inflater.unconsumed_tail
                if not data:
                    data = next(pieces, b"")
                    if not data:
                        raise EOFError(f"the pixel data ends after {y + len(pending) // line} "
                                       f"of {height} rows")
                pending += inflater.decompress(data, max(need - len(pending), 1 << 16))
            n = need // line
            raw = bytes(pending[:need])
            del pending[:need]
            if previous is not None:
                raw = b"\x00" + previous + raw
            ihdr = struct.pack(">IIBBBBB", width, n + (previous is not None), depth, colour, 0,
                               0, 0)
            png = (_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + b"".join(keep)
                   + _png_chunk(b"IDAT", zlib.compress(raw, 0)) + _png_chunk(b"IEND", b""))
            del raw
            with Image.open(io.BytesIO(png)) as im:
                im.load()
                last = im.height - 1
                previous = im.crop((0, last, width, last + 1)).tobytes()
                first = im.height - n  # 1 when the previous row leads
                strip = (im.crop((0, first, width, im.height)) if first else im).convert("RGB")
            yield y, strip
            y += n


def _tiff_level(series, target_hw: tuple[int, int], path: Path):
    """The smallest pyramid level of ``series`` still at least ``target_hw`` (else the base)."""
    level = series
    for lev in series.levels:  # largest first
        hw = _tiff_hw(lev.shape, path)
        if hw[0] >= target_hw[0] and hw[1] >= target_hw[1]:
            level = lev
    return level


def _to_rgb_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim > 3:
        arr = arr.reshape([d for d in arr.shape if d > 1])
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = np.moveaxis(arr, 0, 2)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"{path}: unsupported image layout {arr.shape}; expected grayscale, RGB or RGBA"
        )
    arr = arr[:, :, :3] if arr.shape[2] == 4 else arr
    arr = np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{path}: unsupported pixel type {arr.dtype}")
    vals = arr.astype(np.float32)
    if not np.isfinite(vals).all() or vals.min() < 0:
        raise ValueError(f"{path}: image has negative or non-finite pixel values")
    top = float(vals.max())
    if np.issubdtype(arr.dtype, np.floating) and top <= 1.0:
        top = 1.0
    vals *= 255.0 / max(top, 1e-12)
    return np.clip(vals + 0.5, 0, 255).astype(np.uint8)


def _box_resize(plane: np.ndarray, target_hw: tuple[int, int],
                region: tuple[float, float, float, float]) -> np.ndarray:
    """Box-resample ``region`` (x0, y0, x1, y1) of a 2-D float32 array to ``target_hw``."""
    out = Image.fromarray(plane).resize((target_hw[1], target_hw[0]),
                                        resample=Image.Resampling.BOX, box=region)
    return np.asarray(out)


def _resize_area(img: np.ndarray, target_hw: tuple[int, int]) -> np.ndarray:
    pil = Image.fromarray(np.ascontiguousarray(img))
    out = pil.resize((target_hw[1], target_hw[0]), resample=Image.Resampling.BOX)
    return np.asarray(out)

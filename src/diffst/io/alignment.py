"""Check that measured spots (or cells) land on the stained tissue of their image.

Every reader that has an image calls :func:`align_to_image` on the sample it built. It

1. applies a position fix the user asked for (:class:`PositionFix`: x/y swap, flips, 90-degree
   rotations, a scale factor), composed onto the sample's raster->image affine;
2. refuses a blank or near-uniform image (all black, all white);
3. builds a tissue mask from the image (:func:`tissue_mask`: optical density above the glass
   background, or colour saturation) and measures the fraction of tissue cells whose centre lies
   on tissue. When that fraction is low, or one of the usual mistakes (:data:`CANDIDATES`) would
   place clearly more cells on tissue, it raises :class:`AlignmentError` naming what was measured
   and the option that fixes it.

Decision (:func:`clear_fix`), with ``given`` the on-tissue fraction as given and ``n`` cells:

* ``given`` below :data:`MIN_ON_TISSUE`: refused; a correction is named when it reaches
  :data:`GOOD_ON_TISSUE` and gains at least :data:`MIN_GAIN` (any candidate; the "10x too
  large" one only when most positions lie outside the image, as such positions do).
* otherwise only the area-preserving candidates (swap, flips, rotations: :data:`RIGID`) are
  compared, and the sample is refused when the best one gains :data:`MIN_GAIN` and reaches
  :data:`GOOD_ON_TISSUE`, or, relatively, when it leaves at most :data:`REL_MAX_RATIO` of the
  off-tissue cells of ``given`` off tissue while gaining at least :data:`REL_MIN_GAIN` and
  :data:`REL_MIN_CELLS` cells. The relative rule catches crops that are mostly tissue, where a
  wrong orientation still puts 86-96 % of the spots on tissue (the scanpy/squidpy Visium
  fixtures: 100 % as given, at most 96 % for any candidate). Scale candidates are left out
  there: shrinking all positions by 10 packs them into one corner, which on a nuclear image
  that is tissue everywhere scores higher than the correct positions (98.5 % vs 88.6 % on the
  Xenium breast crop).
* when the mask cannot tell orientations apart (a correction puts as many cells on tissue,
  within :data:`RHO_TIE`: a crop that is tissue everywhere, like the Xenium breast crop's
  nuclear image) and there are at least :data:`RHO_MIN_CELLS` cells, the cells' total counts
  are correlated (Spearman) with the stain density under them (:func:`stain_density`); the
  sample is refused when a correction reaches :data:`RHO_MIN` and beats the given correlation
  by :data:`RHO_MIN_GAIN` (Xenium crop: +0.70 as given, at most +0.20 for any wrong
  orientation; on HER2ST, with 180 spots and symmetric tissue, a wrong orientation can
  correlate better than the right one by 0.11, hence the large gain asked). Below
  :data:`MIN_ON_TISSUE` the same correlation names the correction when no candidate reaches
  :data:`GOOD_ON_TISSUE` but the one it picks gains :data:`MIN_GAIN` on tissue. When the mask
  covers the whole image (:data:`UNINFORMATIVE_TISSUE`) this is the only rule applied.

Thresholds come from ``benchmarks/malformed_inputs.py``
(``benchmarks/results/malformed_inputs.md``).

Fix geometry (pixel centres at integer coordinates, image of ``W`` x ``H`` working pixels), in
the order applied: ``scale`` multiplies positions about the image corner ``(-0.5, -0.5)``;
``swap_xy`` maps ``(x, y) -> (y, x)``; ``rotate=90`` maps ``(x, y) -> (y, H - 1 - x)`` (the image
was turned 90 degrees counter-clockwise, as :func:`numpy.rot90` does), ``180`` maps to
``(W - 1 - x, H - 1 - y)``, ``270`` to ``(W - 1 - y, x)``; ``flip="x"`` maps ``x -> W - 1 - x``
(image mirrored left-right), ``"y"`` maps ``y -> H - 1 - y``, ``"xy"`` both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from diffst.data.sample import SampleError, STSample
from diffst.io.imageio import downscale_image, image_size, read_image

MIN_ON_TISSUE = 0.75  # below this fraction of cells on tissue the sample is refused
MIN_GAIN = 0.10  # a candidate fix this much better (and >= GOOD_ON_TISSUE) is reported
GOOD_ON_TISSUE = 0.9
MASK_MAX_SIDE = 1024  # px; the tissue mask is computed on a copy at most this large
MAX_POINTS = 20000  # cells sampled for the measurement
MAX_RADIUS = 15  # mask pixels; "on tissue" = tissue within this distance (capped for speed)
BLANK_STD = 2.0  # grey-level standard deviation below which an image counts as blank
OD_THRESHOLD = 0.12  # optical density (log10) above the glass background = tissue
SAT_THRESHOLD = 0.12  # colour saturation (max - min) / max = tissue
BLACK_MAX = 45  # pixels whose brightest channel is darker than this are not stained tissue
UNINFORMATIVE_TISSUE = 0.97  # mask covering more of the image than this cannot tell positions
# relative rule for an orientation mistake on a crop that is mostly tissue (module docstring)
REL_MIN_GAIN = 0.03  # the correction puts at least this fraction more cells on tissue ...
REL_MIN_CELLS = 3  # ... and at least this many more cells ...
REL_MAX_RATIO = 0.25  # ... and leaves at most this share of the given off-tissue cells off
# counts rule, when the mask cannot tell orientations apart (module docstring)
RHO_MIN_CELLS = 1000  # cells needed to correlate counts with the stain
RHO_TIE = 0.02  # a correction within this of the given on-tissue fraction: the mask cannot tell
RHO_MIN = 0.5  # the correction's counts~stain correlation reaches this ...
RHO_MIN_GAIN = 0.3  # ... and exceeds the given one by this much


class AlignmentError(SampleError):
    """The positions do not fit the image (blank image, cells off tissue, a likely mistake)."""


@dataclass(frozen=True)
class PositionFix:
    """A correction applied to the positions (in image pixels) before use.

    Attributes:
        swap_xy: exchange x and y (columns and rows written the wrong way round).
        flip: ``None``, ``"x"`` (mirror left-right), ``"y"`` (top-bottom) or ``"xy"``.
        rotate: 0, 90, 180 or 270 degrees (module docstring gives the maps).
        scale: multiply positions by this (e.g. 10 when a scale factor is 10x too small).
    """

    swap_xy: bool = False
    flip: str | None = None
    rotate: int = 0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.flip not in (None, "x", "y", "xy"):
            raise ValueError(f"flip must be None, 'x', 'y' or 'xy', got {self.flip!r}")
        if self.rotate not in (0, 90, 180, 270):
            raise ValueError(f"rotate must be 0, 90, 180 or 270 degrees, got {self.rotate!r}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"position scale must be a positive number, got {self.scale!r}")

    @property
    def is_identity(self) -> bool:
        """True when the fix changes nothing."""
        return not self.swap_xy and self.flip is None and self.rotate == 0 and self.scale == 1

    def matrix(self, image_hw: tuple[int, int]) -> np.ndarray:
        """3x3 map of image pixel ``(x, y, 1)`` as given to the corrected position."""
        h, w = image_hw
        s = self.scale
        out = np.array([[s, 0, 0.5 * (s - 1)], [0, s, 0.5 * (s - 1)], [0, 0, 1.0]])
        if self.swap_xy:
            out = np.array([[0, 1.0, 0], [1.0, 0, 0], [0, 0, 1]]) @ out
        rot = {
            0: np.eye(3),
            90: np.array([[0, 1.0, 0], [-1.0, 0, h - 1], [0, 0, 1]]),
            180: np.array([[-1.0, 0, w - 1], [0, -1.0, h - 1], [0, 0, 1]]),
            270: np.array([[0, -1.0, w - 1], [1.0, 0, 0], [0, 0, 1]]),
        }[self.rotate]
        out = rot @ out
        if self.flip in ("x", "xy"):
            out = np.array([[-1.0, 0, w - 1], [0, 1, 0], [0, 0, 1]]) @ out
        if self.flip in ("y", "xy"):
            out = np.array([[1.0, 0, 0], [0, -1.0, h - 1], [0, 0, 1]]) @ out
        return out

    def options(self) -> str:
        """The command-line options that request this fix, e.g. ``--swap-xy --flip x``."""
        parts = ["--swap-xy"] if self.swap_xy else []
        parts += [f"--flip {self.flip}"] if self.flip else []
        parts += [f"--rotate {self.rotate}"] if self.rotate else []
        parts += [f"--position-scale {self.scale:g}"] if self.scale != 1 else []
        return " ".join(parts) or "(none)"

    def keywords(self) -> str:
        """The reader keyword that requests this fix, e.g. ``fix=PositionFix(swap_xy=True)``."""
        args = [f"{k}={v!r}" for k, v in vars(self).items()
                if v != PositionFix.__dataclass_fields__[k].default]
        return f"fix=PositionFix({', '.join(args)})"


CANDIDATES: dict[str, PositionFix] = {
    "x/y swapped": PositionFix(swap_xy=True),
    "image mirrored left-right": PositionFix(flip="x"),
    "image mirrored top-bottom": PositionFix(flip="y"),
    "image rotated 90 degrees": PositionFix(rotate=90),
    "image rotated 180 degrees": PositionFix(rotate=180),
    "image rotated 270 degrees": PositionFix(rotate=270),
    "positions (scale factor) 10x too small": PositionFix(scale=10.0),
    "positions (scale factor) 10x too large": PositionFix(scale=0.1),
}
RIGID = tuple(name for name, fix in CANDIDATES.items() if fix.scale == 1)


@dataclass
class AlignmentReport:
    """What :func:`measure_alignment` found.

    Attributes:
        on_tissue: fraction of the measured cells whose centre lies on tissue (0..1).
        tissue_fraction: fraction of the image's pixels classed as tissue.
        n_points: number of cells measured.
        blank: why the image is unusable (e.g. ``"all pixels close to 0"``), else None.
        candidates: ``{mistake: on_tissue if it were corrected}`` for :data:`CANDIDATES`.
        outside: fraction of the cells whose centre lies outside the image, as given.
        rho: Spearman correlation of the cells' total counts with the stain density under
            them, as given (None when not measured: fewer than :data:`RHO_MIN_CELLS` cells).
        rho_candidates: the same for each :data:`RIGID` correction.
    """

    on_tissue: float
    tissue_fraction: float
    n_points: int
    blank: str | None = None
    candidates: dict[str, float] = field(default_factory=dict)
    outside: float = 0.0
    rho: float | None = None
    rho_candidates: dict[str, float] = field(default_factory=dict)

    @property
    def informative(self) -> bool:
        """False when the mask cannot tell good positions from bad (tissue everywhere)."""
        return self.blank is None and self.tissue_fraction < UNINFORMATIVE_TISSUE

    def best(self, names: tuple[str, ...] | None = None) -> tuple[str, float] | None:
        """The candidate mistake (among ``names``, default all) putting most cells on tissue."""
        pool = [k for k in self.candidates if names is None or k in names]
        if not pool:
            return None
        name = max(pool, key=lambda k: self.candidates[k])
        return name, self.candidates[name]


def clear_fix(report: AlignmentReport) -> tuple[str, float, str] | None:
    """The correction that fits clearly better than the positions as given, or None.

    Returns ``(mistake, on_tissue if corrected, rule)`` with ``rule`` ``"absolute"``,
    ``"relative"`` or ``"counts"`` (module docstring).
    """
    given, n = report.on_tissue, report.n_points
    if not report.informative:  # tissue everywhere: only the counts can tell
        return _counts_fix(report, mask_fits=True)
    names = tuple(k for k in report.candidates
                  if k in RIGID or (given < MIN_ON_TISSUE and _scale_plausible(k, report)))
    best = report.best(names)
    if best is None:
        return None
    name, frac = best
    gain = frac - given
    if frac >= GOOD_ON_TISSUE and gain >= MIN_GAIN:
        return name, frac, "absolute"
    if given >= MIN_ON_TISSUE and gain >= REL_MIN_GAIN and gain * n >= REL_MIN_CELLS - 1e-9 \
            and (1.0 - frac) <= REL_MAX_RATIO * (1.0 - given):
        return name, frac, "relative"
    # when the mask cannot tell orientations apart, or (refused anyway) agrees with the counts
    tie = report.best(RIGID)[1] >= given - RHO_TIE
    return _counts_fix(report, tie if given >= MIN_ON_TISSUE else None)


def _counts_fix(report: AlignmentReport, mask_fits: bool | None) -> tuple[str, float, str] | None:
    """The counts rule (module docstring); ``mask_fits`` None: the correction must gain
    :data:`MIN_GAIN` on tissue."""
    if report.rho is None or not report.rho_candidates:
        return None
    name = max(report.rho_candidates, key=lambda k: report.rho_candidates[k])
    rho, frac = report.rho_candidates[name], report.candidates[name]
    fits = frac - report.on_tissue >= MIN_GAIN if mask_fits is None else mask_fits
    if fits and rho >= RHO_MIN and rho - report.rho >= RHO_MIN_GAIN:
        return name, frac, "counts"
    return None


def _scale_plausible(name: str, report: AlignmentReport) -> bool:
    """Whether a scale candidate may be named: shrinking needs positions beyond the image.

    Positions 10x too large lie mostly outside the image; shrinking correct positions instead
    packs them into one corner, which can be all tissue (module docstring).
    """
    return CANDIDATES[name].scale > 1 or report.outside > 0.5


# ---------------------------------------------------------------------------- image analysis
def blank_reason(image: np.ndarray) -> str | None:
    """Why ``image`` ``(H, W, 3)`` uint8 is blank or near-uniform, or None when it is usable."""
    small = _small(image)
    grey = small.astype(np.float32).mean(axis=2)
    if float(grey.std()) < BLANK_STD:
        return (f"near-uniform: all pixels close to grey level {float(grey.mean()):.0f} "
                f"(standard deviation {float(grey.std()):.2f})")
    return None


def tissue_mask(image: np.ndarray, max_side: int = MASK_MAX_SIDE) -> tuple[np.ndarray, float]:
    """Stained tissue in an H&E image: ``(h, w)`` bool mask and its scale relative to ``image``.

    A pixel is tissue when its optical density ``log10(background / value)`` in any channel
    exceeds :data:`OD_THRESHOLD`, or its saturation exceeds :data:`SAT_THRESHOLD`, and it is not
    near-black (brightest channel below :data:`BLACK_MAX`: slide holder, scanner border). The glass
    background is each channel's 99th percentile, but at least 220 (so a crop that is all tissue
    is still measured against white). The mask is computed on a copy whose longest side is at
    most ``max_side`` px; ``scale`` = mask pixels per image pixel.
    """
    small = _small(image, max_side)
    scale = small.shape[1] / image.shape[1]
    vals = small.astype(np.float32)
    background = np.maximum(np.percentile(vals.reshape(-1, 3), 99, axis=0), 220.0)
    od = np.log10(background / np.maximum(vals, 1.0)).max(axis=2)
    top = vals.max(axis=2)
    sat = (top - vals.min(axis=2)) / np.maximum(top, 1.0)
    return ((od > OD_THRESHOLD) | (sat > SAT_THRESHOLD)) & (top >= BLACK_MAX), scale


def stain_density(image: np.ndarray, cell_px: float,
                  max_side: int = MASK_MAX_SIDE) -> tuple[np.ndarray, float]:
    """Optical density (mean over channels, above the glass) averaged over one cell.

    Returns the map on a copy at most ``max_side`` px and its scale relative to ``image``
    (as :func:`tissue_mask`); ``cell_px`` is a cell's side in image pixels.
    """
    from scipy.ndimage import uniform_filter

    small = _small(image, max_side)
    scale = small.shape[1] / image.shape[1]
    vals = small.astype(np.float32)
    background = np.maximum(np.percentile(vals.reshape(-1, 3), 99, axis=0), 220.0)
    od = np.clip(np.log10(background / np.maximum(vals, 1.0)), 0, None).mean(axis=2)
    return uniform_filter(od, max(1, int(round(cell_px * scale)))), scale


def measure_alignment(
    image: np.ndarray, xy_px: np.ndarray, radius_px: float, try_fixes: bool = True,
    totals: np.ndarray | None = None, cell_px: float | None = None,
) -> AlignmentReport:
    """Fraction of points ``xy_px`` ``(N, 2)`` (image pixels) within ``radius_px`` of tissue.

    The radius is capped at :data:`MAX_RADIUS` pixels of the (reduced) mask.

    Points outside the image count as off tissue. With ``try_fixes`` the same is measured for
    every correction in :data:`CANDIDATES`. With ``totals`` (counts per point) and ``cell_px``
    (a cell's side in pixels), also the Spearman correlation of the totals with the stain
    density (:func:`stain_density`) at the points, as given and for each :data:`RIGID` fix.
    """
    reason = blank_reason(image)
    if reason is not None:
        return AlignmentReport(0.0, 0.0, len(xy_px), blank=reason)
    mask, scale = tissue_mask(image)
    near = _dilate(mask, min(MAX_RADIUS, max(1, int(round(radius_px * scale)))))
    hw = image.shape[:2]
    report = AlignmentReport(_on_mask(near, xy_px, scale), float(mask.mean()), len(xy_px),
                             outside=_outside(xy_px, hw))
    use_counts = totals is not None and cell_px is not None and len(xy_px) >= RHO_MIN_CELLS
    if use_counts:
        density, dscale = stain_density(image, cell_px)
        ranks = _ranks(np.asarray(totals, dtype=np.float64))
        report.rho = _rank_corr(ranks, _values_at(density, xy_px, dscale))
    if try_fixes:
        pts = np.column_stack([xy_px, np.ones(len(xy_px))])
        for name, fix in CANDIDATES.items():
            moved = (pts @ fix.matrix(hw).T)[:, :2]
            report.candidates[name] = _on_mask(near, moved, scale)
            if use_counts and name in RIGID:
                report.rho_candidates[name] = _rank_corr(
                    ranks, _values_at(density, moved, dscale))
    return report


# ---------------------------------------------------------------------------- samples
def apply_fix(sample: STSample, fix: PositionFix) -> STSample:
    """``sample`` with ``fix`` composed onto its affine (image pixels), ``meta["position_fix"]``.

    A scale fix also divides ``image_um_per_px`` by the scale, so ``cell_um`` keeps matching
    ``px_per_cell * image_um_per_px``.
    """
    if fix.is_identity:
        return sample
    if sample.image is None:
        raise ValueError(f"sample '{sample.name}': a position fix ({fix.options()}) needs an "
                         "image to align to, and this sample has none")
    meta = dict(sample.meta)
    meta["position_fix"] = {"swap_xy": fix.swap_xy, "flip": fix.flip, "rotate": fix.rotate,
                            "scale": fix.scale, "options": fix.options()}
    return replace(sample, affine=fix.matrix(sample.image.shape[:2]) @ sample.affine,
                   image_um_per_px=sample.image_um_per_px / fix.scale, meta=meta)


def align_to_image(
    sample: STSample,
    fix: PositionFix | None = None,
    check: bool = True,
    positions: str = "the spot positions",
    fallback: Exception | None = None,
) -> STSample:
    """Apply ``fix``, check the tissue cells land on tissue, and check they lie in the image.

    Args:
        sample: a sample just built by a reader.
        fix: correction to apply first (None: none).
        check: measure the on-tissue fraction and refuse bad alignments (False: only warn
            about a blank image).
        positions: how the positions were given, for messages (e.g. "pxl_row_in_fullres and
            pxl_col_in_fullres in tissue_positions.csv").
        fallback: the reader's own error for positions outside the image; raised when no
            usual mistake explains the misalignment (and no fix was given).

    Returns:
        The (fixed) sample; ``meta["alignment"]`` holds the measurement.

    Raises:
        AlignmentError: blank image, too few cells on tissue, or a correction fits much better.
    """
    sample = apply_fix(sample, fix or PositionFix())
    if sample.image is None or not sample.mask.any():
        return sample
    if fallback is None:
        try:
            sample.check_alignment()  # tissue cells inside the image
        except SampleError as exc:
            fallback = exc
    where = f"sample '{sample.name}' ({sample.meta.get('image_path') or 'its image'})"
    xy, totals = _cell_points(sample, with_totals=True)
    # a nuclear (fluorescence) image stains nuclei only: a cell counts as on tissue within two
    # cell widths of a nucleus (sparse stroma); an H&E stains the whole tissue
    nuclear = str(sample.meta.get("image_kind", "")).startswith("fluorescence")
    radius = (2.0 if nuclear else 0.25) * sample.px_per_cell
    report = measure_alignment(sample.image, xy, radius, try_fixes=check, totals=totals,
                               cell_px=sample.px_per_cell)
    sample.meta["alignment"] = {
        "on_tissue": report.on_tissue, "image_tissue_fraction": report.tissue_fraction,
        "n_points": report.n_points, "blank": report.blank, "candidates": report.candidates,
        "outside_image": report.outside, "counts_stain_rho": report.rho,
        "counts_stain_rho_candidates": report.rho_candidates,
    }
    if report.blank is not None and fallback is not None and (fix is None or fix.is_identity):
        raise fallback  # positions outside the image: the reader's own error says more
    if report.blank is not None:
        msg = (f"{where}: the image is blank ({report.blank}); pass the real H&E image with "
               "--image (image= in Python)")
        if check:
            raise AlignmentError(msg + ", or --no-alignment-check (alignment_check=False in "
                                 "Python) to use it anyway")
        warnings.warn(msg, stacklevel=3)
    elif check and (report.informative or report.rho is not None):
        _judge(report, where, positions, fallback)
    if fallback is not None and (fix is None or fix.is_identity):
        raise fallback
    sample.check_alignment()
    return sample


def image_file_blank(path: str | Path) -> str | None:
    """Why the image file at ``path`` is blank (read reduced to at most 512 px), else None."""
    h, w = image_size(path)
    return blank_reason(read_image(path, scale=min(1.0, 512 / max(h, w))))


def _judge(report: AlignmentReport, where: str, positions: str,
           fallback: Exception | None) -> None:
    given = report.on_tissue
    found = clear_fix(report)
    if (given >= MIN_ON_TISSUE or not report.informative) and found is None:
        return
    head = (f"{where}: {given:.1%} of {report.n_points} tissue cells lie on stained tissue as "
            f"given")
    override = ("; if the alignment is right, pass --no-alignment-check "
                "(alignment_check=False)")
    if found is not None:
        name, frac, rule = found
        fix = CANDIDATES[name]
        off = ""
        if rule == "relative":
            n = report.n_points
            off = (f" ({round((1 - given) * n)} cells off tissue as given, "
                   f"{round((1 - frac) * n)} if corrected)")
        elif rule == "counts":
            off = (f"; the cells' total counts follow the stain density only if corrected "
                   f"(Spearman {report.rho:+.2f} as given, {report.rho_candidates[name]:+.2f} "
                   "if corrected)")
        raise AlignmentError(
            f"{head}, {frac:.1%} if corrected for '{name}'{off}: "
            f"{_diagnosis(name, positions)}; pass {fix.options()} ({fix.keywords()}){override}"
        )
    if fallback is not None:
        raise fallback
    raise AlignmentError(
        f"{head} (at least {MIN_ON_TISSUE:.0%} expected) and no usual mistake (x/y swap, flip, "
        "90-degree rotation, scale x10 or /10) fits better; the image or the positions (or "
        f"their scale factor) belong to another section or run{override}"
    )


def _diagnosis(mistake: str, positions: str) -> str:
    """A sentence naming what looks wrong, e.g. 'the image looks rotated 90 degrees ...'."""
    if mistake.startswith("image "):
        return f"the image looks {mistake[6:]} relative to {positions}"
    if mistake.startswith("positions (scale factor) "):
        return f"{positions} look {mistake[25:]}"
    return f"{positions} look swapped"


def _cell_points(sample: STSample, with_totals: bool = False):
    """``(N, 2)`` image ``(x, y)`` of the tissue cells' centres (at most :data:`MAX_POINTS`).

    With ``with_totals`` also their total counts over the sample's genes, ``(N,)`` (None below
    :data:`RHO_MIN_CELLS` cells, where they are not used).
    """
    rows, cols = np.nonzero(sample.mask)
    if len(rows) > MAX_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(len(rows), MAX_POINTS, replace=False))
        rows, cols = rows[keep], cols[keep]
    pts = np.stack([cols, rows, np.ones(len(rows))]).astype(np.float64)
    xy = (sample.affine @ pts)[:2].T
    if not with_totals:
        return xy
    if len(rows) < RHO_MIN_CELLS:
        return xy, None
    return xy, np.asarray(sample.expr.sum(axis=0, dtype=np.float64))[rows, cols]


def _small(image: np.ndarray, max_side: int = MASK_MAX_SIDE) -> np.ndarray:
    factor = min(1.0, max_side / max(image.shape[:2]))
    return downscale_image(np.ascontiguousarray(image), factor)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return binary_dilation(mask, structure=(xx**2 + yy**2) <= radius**2)


def _values_at(grid: np.ndarray, xy_px: np.ndarray, scale: float) -> np.ndarray:
    """Values of ``grid`` (a reduced copy, ``scale``) at image points ``xy_px`` (0 outside)."""
    h, w = grid.shape
    col = np.floor((np.asarray(xy_px[:, 0]) + 0.5) * scale).astype(np.int64)
    row = np.floor((np.asarray(xy_px[:, 1]) + 0.5) * scale).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = np.zeros(len(col))
    out[inside] = grid[row[inside], col[inside]]
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values)


def _rank_corr(ranks: np.ndarray, values: np.ndarray) -> float:
    """Spearman correlation of values with precomputed ``ranks`` (0 when either is constant)."""
    other = _ranks(values)
    a, b = ranks - ranks.mean(), other - other.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _outside(xy_px: np.ndarray, hw: tuple[int, int]) -> float:
    if len(xy_px) == 0:
        return 0.0
    x, y = np.asarray(xy_px[:, 0]), np.asarray(xy_px[:, 1])
    out = (x < -0.5) | (y < -0.5) | (x > hw[1] - 0.5) | (y > hw[0] - 0.5)
    return float(out.mean())


def _on_mask(mask: np.ndarray, xy_px: np.ndarray, scale: float) -> float:
    if len(xy_px) == 0:
        return 0.0
    h, w = mask.shape
    col = np.floor((np.asarray(xy_px[:, 0]) + 0.5) * scale).astype(np.int64)
    row = np.floor((np.asarray(xy_px[:, 1]) + 0.5) * scale).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    hits = np.zeros(len(col), dtype=bool)
    hits[inside] = mask[row[inside], col[inside]]
    return float(hits.mean())

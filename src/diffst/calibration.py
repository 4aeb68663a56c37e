"""Calibrated prediction intervals per HR cell and gene (conformal scaling of the sample spread).

The sampler's spread (``std`` of the K draws per HR cell, counts per HR cell) is informative
about *where* a prediction is uncertain but not about *how much*: a briefly trained diffusion
model is under-dispersed (its nominal 90 % interval ``[q05, q95]`` covers the truth far less
often). This module turns the spread into intervals with a stated coverage.

Score and interval. For every (gene g, tissue cell) with truth ``y``, predicted mean ``m`` and
sample spread ``sd`` the nonconformity score is ``|y - m| / (sd + floor_g)``, where the floor
``floor_g = floor_frac * mean_tissue(sd_g)`` (recomputed on every map, so it is scale-free)
keeps cells with a zero spread from getting a zero-width interval; ``floor_frac`` is chosen on
the calibration data from :data:`FLOOR_GRID` (the narrowest 90 % intervals: a small floor when
the spread predicts where errors are large, a large one, i.e. a nearly constant width per gene,
when it does not). For a nominal level ``L`` the multiplier ``c_g(L)`` is the
``ceil((n + 1) L)``-th smallest of the ``n`` calibration scores of gene g (split-conformal
quantile; with too few scores the largest is used), and the interval is
``[max(m - c (sd + floor), 0), m + c (sd + floor)]``. When the calibration data are
exchangeable with the test cells this covers the truth with probability at least ``L`` (and at
most ``L + 1/(n+1)`` without ties) per gene; choosing ``floor_frac`` on the same data weakens
this slightly, which is why the benchmark scores coverage on separate test data.

What the width follows. ``sd`` above is either the sampler's spread (``sample``) or
``sqrt(m)`` (``poisson``: count noise, whose variance grows with the expected count); by
default the one giving the narrower 90 % intervals on the calibration data is used (chosen like
the floor, and recorded). The spread of one-step posterior-mean estimates covers only the tile
orientations and start noise, and on real spots ``sqrt(m)`` often tells more about where the
errors are large.

Per expression level. Optionally (``n_bins > 1``) the cells of each gene are split by the level
of the predicted mean relative to the gene's average over tissue (bin edges are quantiles of
that ratio on the calibration data) and each bin gets its own multipliers; bins with fewer than
``min_per_bin`` scores use the gene's. Ratios, like the floor, are scale-free, so a calibration
fitted at one cell size can be applied at another.

Where the calibration comes from (no test truth is used):

* :func:`split_conformal`: a calibration sample with HR truth the model did not train on (a
  section or strip); it is pooled by the model's factor and super-resolved with the same sampler
  settings as the prediction.
* :func:`self_calibrate`: the input slide itself. Its measured spots are pooled one level
  further (spot * s) and super-resolved back to spots, where the measurement is the truth. For a
  spots-only model applied to spots of its own size this is exactly the scale it was trained
  at. If the model was trained on this very slide, the self-calibration pairs are its training
  pairs, where its errors are smaller than on unseen data, and the intervals can be too narrow.
  For a model trained with HR truth, or an input at another scale, the model is run one scale
  coarser than it was trained for, with the input divided by the area ratio so
  counts per cell match the training density (outputs are multiplied back). This assumes the
  scores ``|y - m| / sd`` are the same one scale up (self-similarity of the model's error
  relative to its spread); ``benchmarks/calibration.py`` measures how well that holds.

The multipliers are stored as JSON (:meth:`Calibration.save`) and in the ``.h5ad`` written by
``diffst predict`` (``uns["diffst_calibration"]``). Levels are explicit everywhere: a
calibration holds multipliers for :data:`LEVELS`; the output ``q05``/``q95`` layers are the
:data:`OUTPUT_LEVEL` (90 %) interval.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from diffst.data.lr import padded_mask, simulate_lr
from diffst.data.sample import SampleError, STSample
from diffst.infer import SRResult, check_model_fits, super_resolve
from diffst.io.atomic import atomic_path
from diffst.pipeline import DiffSTPipeline

LEVELS = (0.5, 0.8, 0.9, 0.95)
"""Nominal central-interval levels a calibration holds multipliers for."""

OUTPUT_LEVEL = 0.9
"""Nominal level of the ``q05``/``q95`` maps (the 5 % and 95 % bounds)."""

FORMAT = "diffst-calibration-1"

FLOOR_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
"""Candidate spread floors (fractions of a gene's average spread) for ``floor_frac="auto"``."""

SPREADS = ("sample", "poisson")
"""What an interval's width follows: ``sample``, the spread (std) of the sampler's draws, or
``poisson``, ``sqrt(mean)``: count noise, whose variance grows with the expected count."""


@dataclass
class Calibration:
    """Per-gene (and per-expression-level) multipliers of the sample spread.

    Attributes:
        method: ``split-conformal``, ``self`` or ``constant`` (no spread: a fixed width per
            gene, e.g. of bicubic residuals).
        genes: ``G`` gene names.
        levels: ``L`` nominal levels.
        multipliers: ``(G, B, L)`` score quantiles (``B`` expression-level bins).
        edges: ``(G, B - 1)`` inner bin edges on ``mean / gene average over tissue``.
        n_scores: ``(G, B)`` calibration scores behind each multiplier (0: gene-wide fallback).
        floor_frac: the spread floor as a fraction of the gene's average spread.
        source: provenance (calibration data, cell size, sampler settings).
        spread: what the width follows (:data:`SPREADS`; files from before it existed:
            ``sample``).
    """

    method: str
    genes: list[str]
    levels: list[float]
    multipliers: np.ndarray
    edges: np.ndarray
    n_scores: np.ndarray
    floor_frac: float = 1.0
    source: dict = field(default_factory=dict)
    spread: str = "sample"

    def multiplier(self, level: float) -> np.ndarray:
        """``(G, B)`` multipliers for one of :attr:`levels`."""
        for i, lv in enumerate(self.levels):
            if math.isclose(lv, level, abs_tol=1e-9):
                return self.multipliers[:, :, i]
        raise ValueError(f"level {level} not calibrated (calibrated: {self.levels})")

    def interval(self, mean: np.ndarray, spread: np.ndarray, mask: np.ndarray,
                 level: float = OUTPUT_LEVEL,
                 genes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated ``(lo, hi)`` ``(G, H, W)`` around ``mean`` with the sampler's spread
        ``spread`` (its std; used when :attr:`spread` is ``sample``).

        ``genes`` (default :attr:`genes`) orders the maps; every one must be calibrated. Cells
        off ``mask`` get 0.
        """
        idx = self._gene_index(genes)
        mult = self.multiplier(level)[idx]  # (G, B)
        width = _scaled_spread(spread_map(self.spread, mean, spread), mask, self.floor_frac,
                               self.method)
        bins = _bin_index(_relative_level(mean, mask), self.edges[idx])
        c = np.take_along_axis(mult, bins.reshape(len(idx), -1), axis=1).reshape(mean.shape)
        half = c * width
        lo = np.where(mask, np.maximum(mean - half, 0.0), 0.0)
        hi = np.where(mask, mean + half, 0.0)
        return lo.astype(np.float32), hi.astype(np.float32)

    def _gene_index(self, genes: list[str] | None) -> list[int]:
        if genes is None:
            return list(range(len(self.genes)))
        pos = {g: i for i, g in enumerate(self.genes)}
        missing = [g for g in genes if g not in pos]
        if missing:
            raise SampleError(f"calibration has no multipliers for genes {missing[:5]}; "
                              "calibrate with the same model and genes")
        return [pos[g] for g in genes]

    def record(self, level: float = OUTPUT_LEVEL) -> dict:
        """A JSON-able summary (method, levels, provenance, per-gene multipliers)."""
        return {"format": FORMAT, "method": self.method, "output_level": level,
                "levels": list(self.levels), "genes": list(self.genes),
                "floor_frac": self.floor_frac, "spread": self.spread, "source": self.source,
                "multipliers": self.multipliers.tolist(), "edges": self.edges.tolist(),
                "n_scores": self.n_scores.tolist()}

    @classmethod
    def from_record(cls, rec: dict, where: str = "calibration") -> Calibration:
        """Inverse of :meth:`record`."""
        if rec.get("format") != FORMAT:
            raise SampleError(f"{where}: not a diffst calibration (format "
                              f"{rec.get('format')!r}, expected {FORMAT!r})")
        return cls(rec["method"], list(rec["genes"]), [float(x) for x in rec["levels"]],
                   np.asarray(rec["multipliers"], np.float64),
                   np.asarray(rec["edges"], np.float64).reshape(len(rec["genes"]), -1),
                   np.asarray(rec["n_scores"], np.int64), float(rec["floor_frac"]),
                   dict(rec.get("source", {})), str(rec.get("spread", "sample")))

    def save(self, path: str | Path) -> Path:
        """Write the calibration as JSON (atomically)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.record(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration written by :meth:`save`."""
        try:
            rec = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise SampleError(f"{path}: not a JSON calibration file ({exc}); write one with "
                              "diffst.calibration.Calibration.save") from exc
        return cls.from_record(rec, str(path))


# ---------------------------------------------------------------------------- the math
def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) level)``-th smallest score (the largest when that exceeds ``n``)."""
    s = np.sort(np.asarray(scores, np.float64).ravel())
    if s.size == 0:
        raise ValueError("no calibration scores")
    k = math.ceil((s.size + 1) * level)
    return float(s[min(max(k, 1), s.size) - 1])


def spread_map(kind: str, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The ``(G, H, W)`` spread an interval's width follows (:data:`SPREADS`): ``std`` of the
    draws, or ``sqrt(mean)`` (counts per cell)."""
    if kind == "poisson":
        return np.sqrt(np.maximum(np.asarray(mean, np.float64), 0.0))
    if kind == "sample":
        return np.asarray(std, np.float64)
    raise ValueError(f"unknown spread {kind!r}: choose from {SPREADS}")


def _scaled_spread(spread: np.ndarray, mask: np.ndarray, floor_frac: float,
                   method: str) -> np.ndarray:
    """``spread + floor_g`` ``(G, H, W)``; 1 everywhere for a constant-width calibration."""
    if method == "constant":
        return np.ones_like(spread, dtype=np.float64)
    sd = np.asarray(spread, np.float64)
    avg = sd[:, mask].mean(axis=1) if mask.any() else np.zeros(sd.shape[0])
    floor = floor_frac * avg + 1e-9
    return sd + floor[:, None, None]


def _relative_level(mean: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mean / gene average over tissue`` ``(G, H, W)`` (0 for a gene absent from tissue)."""
    m = np.asarray(mean, np.float64)
    avg = m[:, mask].mean(axis=1) if mask.any() else np.zeros(m.shape[0])
    return m / np.where(avg > 0, avg, 1.0)[:, None, None]


def _bin_index(rel: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin ``(G, H, W)`` of each cell given inner edges ``(G, B - 1)``."""
    out = np.zeros(rel.shape, np.int64)
    for g in range(rel.shape[0]):
        out[g] = np.searchsorted(edges[g], rel[g], side="right")
    return out


def fit_calibration(truth: np.ndarray, mean: np.ndarray, spread: np.ndarray, mask: np.ndarray,
                    genes: list[str], *, method: str = "split-conformal",
                    levels: tuple[float, ...] = LEVELS, n_bins: int = 1,
                    min_per_bin: int = 200, floor_frac: float | str = "auto",
                    source: dict | None = None, spread_kind: str = "auto") -> Calibration:
    """Fit multipliers from maps with truth.

    Args:
        truth, mean, spread: ``(G, H, W)`` counts per cell (``spread`` e.g. the sample std;
            ignored for ``method="constant"``).
        mask: ``(H, W)`` cells to use (tissue).
        n_bins: expression-level bins per gene (1: one multiplier per gene and level).
        floor_frac: the spread floor as a fraction of the gene's average spread, or ``"auto"``:
            the value of :data:`FLOOR_GRID` giving the narrowest :data:`OUTPUT_LEVEL` intervals
            on the calibration data (one choice for all genes; a large floor means the sample
            spread says little about where errors are large and the width becomes nearly
            constant per gene). Choosing it on the calibration data costs a little of the
            finite-sample guarantee; the benchmark measures coverage on separate test data.
        spread_kind: what the width follows (:data:`SPREADS`), or ``"auto"``: the one with
            the narrower :data:`OUTPUT_LEVEL` intervals on the calibration data (each with its
            best floor when ``floor_frac`` is ``"auto"``), chosen like the floor.
    """
    if not mask.any():
        raise SampleError("calibration data have no tissue cells")
    kinds = SPREADS if spread_kind == "auto" else (spread_kind,)
    fracs = FLOOR_GRID if floor_frac == "auto" else (float(floor_frac),)
    err = np.abs(np.asarray(truth, np.float64) - mean)
    spreads = {kind: spread_map(kind, mean, spread) for kind in kinds}
    # (relative width, spread, floor) of every candidate; the narrowest wins
    _, spread_kind, floor_frac = min(
        (_relative_width(err, spreads[kind], mask, method, frac), kind, frac)
        for kind in kinds for frac in (fracs if method != "constant" else fracs[:1]))
    scores = err / _scaled_spread(spreads[spread_kind], mask, floor_frac, method)
    rel = _relative_level(mean, mask)
    g_n, n_lv = len(genes), len(levels)
    mult = np.zeros((g_n, n_bins, n_lv))
    edges = np.zeros((g_n, n_bins - 1))
    counts = np.zeros((g_n, n_bins), np.int64)
    for g in range(g_n):
        s, r = scores[g][mask], rel[g][mask]
        gene_wide = [conformal_quantile(s, lv) for lv in levels]
        if n_bins > 1:
            edges[g] = np.quantile(r, np.arange(1, n_bins) / n_bins)
        b = np.searchsorted(edges[g], r, side="right")
        for j in range(n_bins):
            sel = s[b == j]
            if sel.size >= min_per_bin:
                mult[g, j] = [conformal_quantile(sel, lv) for lv in levels]
                counts[g, j] = sel.size
            else:
                mult[g, j] = gene_wide
    return Calibration(method, list(genes), [float(lv) for lv in levels], mult, edges, counts,
                       floor_frac, dict(source or {}), spread_kind)


def _relative_width(abs_err: np.ndarray, spread: np.ndarray, mask: np.ndarray, method: str,
                    floor_frac: float) -> float:
    """Mean :data:`OUTPUT_LEVEL` interval width on the calibration data (absolute errors
    ``abs_err`` ``(G, H, W)``), relative to each gene's mean absolute error (so genes weigh
    alike), averaged over genes."""
    err = abs_err[:, mask]
    scale = np.maximum(err.mean(axis=1), 1e-12)
    width = _scaled_spread(spread, mask, floor_frac, method)[:, mask]
    c = np.array([conformal_quantile(e / w, OUTPUT_LEVEL) for e, w in zip(err, width,
                                                                          strict=True)])
    return float(((c[:, None] * width).mean(axis=1) / scale).mean())


def coverage(truth: np.ndarray, lo: np.ndarray, hi: np.ndarray, mask: np.ndarray,
             per_gene: bool = False) -> float | np.ndarray:
    """Fraction of tissue values of ``truth`` inside ``[lo, hi]`` (overall or ``(G,)``)."""
    inside = (truth >= lo - 1e-6) & (truth <= hi + 1e-6)
    frac = inside[:, mask].mean(axis=1)
    return frac if per_gene else float(inside[:, mask].mean())


# ---------------------------------------------------------------------------- with a model
def _sr_settings(kw: dict) -> dict:
    keep = ("steps", "sampler", "n_samples", "consistency", "seed", "eta", "match_depth",
            "turns", "istar_mix")
    return {k: (str(v) if k == "consistency" else v) for k, v in kw.items() if k in keep}


def split_conformal(lm: DiffSTPipeline, truth: STSample, *, n_bins: int = 1,
                    min_per_bin: int = 200, levels: tuple[float, ...] = LEVELS,
                    **sr_kwargs) -> Calibration:
    """Calibrate on ``truth`` (HR truth the model did not train on): pool it by the model's
    factor, super-resolve it with ``sr_kwargs`` (use the prediction's sampler settings) and fit
    the multipliers against the truth."""
    truth = truth.select_genes(lm.genes)
    lr = simulate_lr(truth, lm.factor)
    check_model_fits(lm, lr)
    # predicted as at test time: the HR mask comes from the pooled LR mask, not the truth's
    res = super_resolve(lm, lr, **{"progress": False, **sr_kwargs})
    h, w = truth.shape
    source = {"kind": "split-conformal", "data": truth.name, "cell_um": truth.cell_um,
              "factor": lm.factor, "tissue_cells": int(truth.mask.sum()),
              **_sr_settings(sr_kwargs)}
    return fit_calibration(truth.expr, res.mean[:, :h, :w], res.std[:, :h, :w], truth.mask,
                           lm.genes, method="split-conformal", levels=levels, n_bins=n_bins,
                           min_per_bin=min_per_bin, source=source)


def self_scale_shift(lm: DiffSTPipeline, lr: STSample) -> bool:
    """Whether self-calibration on ``lr`` runs the model off its training scale."""
    return not (lm.spots_only and np.isclose(lr.cell_um, lm.cell_um, rtol=0.05))


def self_calibrate(lm: DiffSTPipeline, lr: STSample, *, allow_scale_shift: bool = False,
                   n_bins: int = 1, min_per_bin: int = 200,
                   levels: tuple[float, ...] = LEVELS, **sr_kwargs) -> Calibration:
    """Calibrate on the input slide: pool its spots by the factor, super-resolve back to spots,
    fit against the measured spots (module docstring for what this assumes).

    Without ``allow_scale_shift`` only a spots-only model applied to spots of its own size is
    accepted (self-calibration then runs at its training scale).
    """
    lr = lr.select_genes(lm.genes)
    shift = self_scale_shift(lm, lr)
    if shift and not allow_scale_shift:
        kind = "spots-only model of" if lm.spots_only else "model trained with HR cells of"
        raise SampleError(
            f"sample '{lr.name}': self-calibration of a {kind} {lm.cell_um:g} µm on "
            f"{lr.cell_um:g} µm spots runs the model one scale off its training; pass "
            "allow_scale_shift=True (command line: --calibration self) to accept that "
            "assumption, or calibrate on a held-out section with HR truth (--calibrate-on; "
            "split_conformal in Python)")
    area = (lr.cell_um / lm.cell_um) ** 2 if shift else 1.0
    view = replace(lm, cell_um=lr.cell_um, spots_only=True) if shift else lm
    pooled = simulate_lr(lr, lm.factor)
    pooled = replace(pooled, expr=pooled.expr / area, meta=dict(pooled.meta))
    res = super_resolve(view, pooled, hr_mask=padded_mask(lr.mask, lm.factor),
                        **{"progress": False, **sr_kwargs})
    h, w = lr.shape
    source = {"kind": "self", "data": lr.name, "cell_um": lr.cell_um, "factor": lm.factor,
              "scale_shift": bool(shift), "area_ratio": area,
              "tissue_cells": int(lr.mask.sum()), **_sr_settings(sr_kwargs)}
    return fit_calibration(lr.expr, res.mean[:, :h, :w] * area, res.std[:, :h, :w] * area,
                           lr.mask, lm.genes, method="self", levels=levels, n_bins=n_bins,
                           min_per_bin=min_per_bin, source=source)


def calibrate_result(result: SRResult, cal: Calibration,
                     level: float = OUTPUT_LEVEL) -> SRResult:
    """A copy of ``result`` whose ``q05``/``q95`` are the calibrated ``level`` interval.

    ``meta["calibration"]`` records how the interval was made (:meth:`Calibration.record`).
    """
    lo, hi = cal.interval(result.mean, result.std, result.mask, level, result.genes)
    meta = dict(result.meta, calibration=cal.record(level))
    return replace(result, q05=lo, q95=hi, meta=meta)


__all__ = [
    "LEVELS",
    "OUTPUT_LEVEL",
    "Calibration",
    "calibrate_prediction",
    "calibrate_result",
    "describe",
    "conformal_quantile",
    "coverage",
    "fit_calibration",
    "self_calibrate",
    "self_scale_shift",
    "split_conformal",
]


# ---------------------------------------------------------------------------- for predict
def describe(record: dict) -> str:
    """One sentence on how the ``q05``/``q95`` maps of a prediction were made."""
    level = f"{100 * record.get('output_level', OUTPUT_LEVEL):g} %"
    method = record["method"]
    if method == "none":
        return (f"uncalibrated: q05/q95 are the 5 %/95 % quantiles of the diffusion draws "
                f"({record.get('reason', '')})")
    src = record.get("source", {})
    if method == "self":
        how = (f"self-calibration on the input's measured spots pooled x{src.get('factor')}"
               + (" (model run one scale off its training scale)" if src.get("scale_shift")
                  else ""))
    elif method == "split-conformal":
        how = f"split-conformal calibration on '{src.get('data')}' (HR truth)"
    else:
        how = f"{method} calibration"
    spread = ("sqrt(mean)" if record.get("spread") == "poisson"
              else "std of the draws")
    return (f"calibrated: q05/q95 bound the {level} interval mean +- c_g (s + floor), s = "
            f"{spread}, with per-gene multipliers c_g from {how}")


def calibrate_prediction(lm: DiffSTPipeline, lr: STSample, result: SRResult,
                         option: str | Path | Calibration | None = "auto",
                         calibrate_on: STSample | None = None,
                         sr_kwargs: dict | None = None) -> SRResult:
    """Apply the calibration ``option`` of ``diffst predict`` to ``result`` (of ``lr``).

    ``option``: ``"auto"`` (split-conformal on ``calibrate_on`` when given, else
    self-calibration when the model is spots-only and ``lr`` has spots of its size, else
    uncalibrated), ``"self"`` (self-calibration, scale shift allowed), ``"none"``/None (the raw
    sampler quantiles), a :class:`Calibration` or the path of a saved one. The result's
    ``meta["calibration"]`` always says which.
    """
    kw = dict(sr_kwargs or {})
    n = int(kw.get("n_samples", result.meta.get("n_samples", 1)))
    cal: Calibration | None = None
    reason = "turned off"
    if isinstance(option, Calibration):
        cal = option
    elif option is None or option == "none":
        pass
    elif option in ("auto", "self"):
        if calibrate_on is not None:
            cal = split_conformal(lm, calibrate_on, **kw)
        elif n < 2:
            if option == "self":
                raise ValueError("self-calibration needs at least 2 samples per tile "
                                 "(the spread of the draws); raise --samples (n_samples= in "
                                 "Python)")
            reason = "one sample per tile has no spread to calibrate"
        elif option == "self" or not self_scale_shift(lm, lr):
            cal = self_calibrate(lm, lr, allow_scale_shift=True, **kw)
        else:
            reason = ("no calibration data given and self-calibration would run the model "
                      "off its training scale; use --calibration self or --calibrate-on")
    else:
        path = Path(option)
        if not path.exists():
            raise FileNotFoundError(f"calibration {path} does not exist; use auto, self, none "
                                    "or the path of a saved calibration (.json)")
        cal = Calibration.load(path)
    if cal is None:
        rec = {"format": FORMAT, "method": "none", "output_level": OUTPUT_LEVEL,
               "reason": reason}
        return replace(result, meta=dict(result.meta, calibration=rec))
    return calibrate_result(result, cal)

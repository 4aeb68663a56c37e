"""Per-gene accuracy metrics for super-resolved gene maps.

All functions take a ground-truth and a predicted raster of shape ``(G, H, W)`` in counts per HR
cell, and a tissue mask ``(H, W)`` bool. Only cells inside the mask enter any statistic; values
outside the mask never change a result.

Truth min-max protocol (columns ``rmse``, ``psnr``, ``pcc``, ``ssim``; the default)
    Each gene is min-max normalised with the statistics of its TRUTH inside the mask,
    ``y = (x - min_t) / (max_t - min_t)``, and the same map is applied to the prediction.
    The prediction is NOT clipped, so over- and under-shoot are penalised in full. This is
    diffst's own protocol; it is not the released Diff-ST evaluation (below).

    * ``rmse``: root mean squared error of the normalised maps over mask cells.
    * ``psnr``: ``10 * log10(1 / mse)`` (data range 1 after normalisation); ``+inf`` for a
      perfect prediction.
    * ``pcc``: signed Pearson correlation over mask cells (scale-free, so unaffected by the
      normalisation). A prediction that is constant inside the mask scores 0 (no linear
      association); dropping it as NaN would reward a method for predicting flat maps.
    * ``ssim``: masked SSIM. Cells outside the mask are set to 0 in both normalised maps, the
      SSIM map is computed over the whole raster with
      :func:`skimage.metrics.structural_similarity` (explicit ``data_range=1``, uniform window,
      default ``K1=0.01, K2=0.03``) and averaged over mask cells. The window side is the largest
      odd number ``<= min(H, W)``, capped at 7; rasters with a side below 3 give NaN. On small
      rasters (a 17 x 21 spot grid) much of the score comes from the border: compare against the
      constant "gene mean" reference of the benchmark, which shows that floor.

Released Diff-ST code protocol (columns ``release_ssim``, ``release_pcc``)
    As the authors' released evaluation computes it: each map is min-max scaled by ITS OWN
    minimum and maximum (here: inside the mask), RMSE on the scaled maps, the ABSOLUTE Pearson
    correlation, and SSIM with a Gaussian window (``sigma = 1.5``, population covariances) on
    the scaled maps quantised to 8 bits (``round(255 * y)``, ``data_range=255``). Cells outside
    the mask are 0 in both maps and the SSIM map is averaged over mask cells (the release scores
    whole patches; masking is diffst's addition so the score is about tissue). Its RMSE is
    ``istar_rmse`` (the same own-min-max scaling), so it has no column of its own. Rasters with
    a side below 11 (the Gaussian window) give NaN SSIM.

iStar protocol (columns ``istar_rmse``, ``istar_ssim``)
    Each map is min-max scaled to [0, 1] by ITS OWN minimum and maximum inside the mask (truth by
    the truth's, prediction by the prediction's), then RMSE and masked SSIM (uniform window,
    ``data_range=1``) are computed as above. Its Pearson r equals ``pcc`` (min-max scaling is
    affine), so it has no column of its own. A prediction constant inside the mask scales to all
    zeros.

Distribution metrics on raw counts
    * ``rvd`` (relative variance distance, the variance-matching score used by super-resolution
      ST benchmarks): ``(var_pred - var_true)**2 / var_true**2`` with population variances
      (``ddof=0``) of counts over mask cells. Lower is better.
    * :func:`gene_corr_error`: distance between the ``G x G`` gene-gene Pearson correlation
      matrices of truth and prediction across mask cells (off-diagonal entries).

Undefined values
    Genes whose truth is constant inside the mask (including all-zero genes) have no defined
    normalisation or variance ratio: every metric of such a gene is NaN, and :func:`summarize`
    excludes NaN values from the means (it also reports how many genes were valid).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from skimage.metrics import structural_similarity

METRIC_COLUMNS = [
    "rmse",
    "ssim",
    "pcc",
    "psnr",
    "rvd",
    "istar_rmse",
    "istar_ssim",
    "release_ssim",
    "release_pcc",
]
"""Column order of :func:`evaluate`."""

HIGHER_IS_BETTER = {
    "rmse": False,
    "ssim": True,
    "pcc": True,
    "psnr": True,
    "rvd": False,
    "istar_rmse": False,
    "istar_ssim": True,
    "release_ssim": True,
    "release_pcc": True,
}
"""Direction of each metric, for :func:`paired_wilcoxon`."""


# ---------------------------------------------------------------------------- input checks
def _check_inputs(
    truth: np.ndarray, pred: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = np.asarray(truth, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    mask = np.asarray(mask)
    if truth.ndim != 3:
        raise ValueError(f"metrics: truth must be (genes, H, W), got shape {truth.shape}")
    if pred.shape != truth.shape:
        raise ValueError(
            f"metrics: prediction shape {pred.shape} != truth shape {truth.shape}; "
            "crop or pad the prediction to the truth raster"
        )
    if mask.shape != truth.shape[1:]:
        raise ValueError(f"metrics: mask shape {mask.shape} != raster shape {truth.shape[1:]}")
    if mask.dtype != bool:
        raise ValueError(f"metrics: mask must be bool, got {mask.dtype}")
    if not mask.any():
        raise ValueError("metrics: the mask is empty; there are no cells to evaluate")
    for name, arr in (("truth", truth), ("prediction", pred)):
        if not np.isfinite(arr[:, mask]).all():
            raise ValueError(f"metrics: {name} has NaN or infinite values inside the mask")
    return truth, pred, mask


# ---------------------------------------------------------------------------- normalisation
def truth_minmax(
    truth: np.ndarray, pred: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise both maps by the truth's per-gene min and max inside the mask.

    Args:
        truth, pred: ``(G, H, W)`` counts per HR cell.
        mask: ``(H, W)`` bool.

    Returns:
        ``(truth_n, pred_n, valid)``: normalised ``(G, H, W)`` float64 maps (NaN for genes whose
        truth is constant in the mask) and ``valid`` ``(G,)`` bool.
    """
    truth, pred, mask = _check_inputs(truth, pred, mask)
    inside = truth[:, mask]
    lo, hi = inside.min(axis=1), inside.max(axis=1)
    valid = hi > lo
    span = np.where(valid, hi - lo, np.nan)[:, None, None]
    return (truth - lo[:, None, None]) / span, (pred - lo[:, None, None]) / span, valid


def _own_minmax(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scale one ``(H, W)`` map to [0, 1] by its own min/max in the mask; constant -> zeros."""
    inside = x[mask]
    lo, hi = inside.min(), inside.max()
    if hi <= lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


# ---------------------------------------------------------------------------- per-map scores
def _rmse(t: np.ndarray, p: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean((p[mask] - t[mask]) ** 2)))


def _psnr(rmse: float) -> float:
    if rmse == 0:
        return float("inf")
    return float(10.0 * np.log10(1.0 / rmse**2))


def _pcc(t: np.ndarray, p: np.ndarray, mask: np.ndarray) -> float:
    a, b = t[mask], p[mask]
    a = a - a.mean()
    b = b - b.mean()
    na, nb = np.sqrt((a * a).sum()), np.sqrt((b * b).sum())
    if na == 0:
        return float("nan")
    if nb == 0:
        return 0.0
    return float(np.clip((a * b).sum() / (na * nb), -1.0, 1.0))


def ssim_window(shape: tuple[int, int]) -> int | None:
    """SSIM window side for a raster: largest odd number <= min side, capped at 7; None if < 3."""
    side = min(shape)
    if side < 3:
        return None
    return min(7, side if side % 2 else side - 1)


def masked_ssim(t: np.ndarray, p: np.ndarray, mask: np.ndarray) -> float:
    """Masked SSIM of two normalised ``(H, W)`` maps (data range 1), averaged over mask cells.

    Cells outside ``mask`` are set to 0 in both maps before the SSIM map is computed.
    """
    win = ssim_window(mask.shape)
    if win is None or not np.isfinite(t[mask]).all():
        return float("nan")
    t0 = np.where(mask, t, 0.0)
    p0 = np.where(mask, p, 0.0)
    _, smap = structural_similarity(t0, p0, data_range=1.0, win_size=win, full=True)
    return float(smap[mask].mean())


def release_ssim(t: np.ndarray, p: np.ndarray, mask: np.ndarray) -> float:
    """SSIM of the released Diff-ST evaluation: own-min-max maps ``(H, W)`` in [0, 1] quantised
    to 8 bits, Gaussian window (sigma 1.5), ``data_range=255``, averaged over mask cells."""
    if min(mask.shape) < 11:  # skimage's Gaussian window (sigma 1.5, truncate 3.5) is 11 px
        return float("nan")
    t8 = np.round(255.0 * np.where(mask, np.clip(t, 0, 1), 0.0))
    p8 = np.round(255.0 * np.where(mask, np.clip(p, 0, 1), 0.0))
    _, smap = structural_similarity(t8, p8, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    return float(smap[mask].mean())


def _rvd(t: np.ndarray, p: np.ndarray, mask: np.ndarray) -> float:
    vt, vp = t[mask].var(), p[mask].var()
    if vt == 0:
        return float("nan")
    return float((vp - vt) ** 2 / vt**2)


# ---------------------------------------------------------------------------- public API
def evaluate(
    truth: np.ndarray, pred: np.ndarray, mask: np.ndarray, genes: list[str]
) -> pd.DataFrame:
    """Per-gene metrics of a prediction against the truth (protocols in the module docstring).

    Args:
        truth: ``(G, H, W)`` true counts per HR cell.
        pred: ``(G, H, W)`` predicted counts per HR cell.
        mask: ``(H, W)`` bool tissue mask; only these cells are scored.
        genes: ``G`` gene names (the index of the result).

    Returns:
        DataFrame with one row per gene and columns :data:`METRIC_COLUMNS`.
    """
    truth, pred, mask = _check_inputs(truth, pred, mask)
    if len(genes) != truth.shape[0]:
        raise ValueError(f"metrics: {len(genes)} gene names for {truth.shape[0]} gene maps")
    tn, pn, valid = truth_minmax(truth, pred, mask)
    nan = float("nan")
    rows = []
    for g in range(truth.shape[0]):
        if not valid[g]:
            rows.append(dict.fromkeys(METRIC_COLUMNS, nan))
            continue
        rmse = _rmse(tn[g], pn[g], mask)
        pcc = _pcc(truth[g], pred[g], mask)
        ti, pi = _own_minmax(truth[g], mask), _own_minmax(pred[g], mask)
        rows.append(
            {
                "rmse": rmse,
                "ssim": masked_ssim(tn[g], pn[g], mask),
                "pcc": pcc,
                "psnr": _psnr(rmse),
                "rvd": _rvd(truth[g], pred[g], mask),
                "istar_rmse": _rmse(ti, pi, mask),
                "istar_ssim": masked_ssim(ti, pi, mask),
                "release_ssim": release_ssim(ti, pi, mask),
                "release_pcc": abs(pcc),
            }
        )
    df = pd.DataFrame(rows, index=pd.Index([str(g) for g in genes], name="gene"))
    return df[METRIC_COLUMNS]


def summarize(df: pd.DataFrame) -> dict[str, float]:
    """Means over genes of each metric column, ignoring NaN.

    Returns:
        ``{column: mean}`` for every numeric column, plus ``n_genes`` (rows) and ``n_valid``
        (rows with a finite ``pcc``, i.e. genes not constant in the truth).
    """
    out: dict[str, float] = {}
    for col in df.columns:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        values = values[~np.isnan(values)]
        out[col] = float(values.mean()) if values.size else float("nan")
    out["n_genes"] = float(len(df))
    if "pcc" in df.columns:
        out["n_valid"] = float(np.isfinite(df["pcc"].to_numpy(dtype=np.float64)).sum())
    return out


def gene_corr_error(
    truth: np.ndarray, pred: np.ndarray, mask: np.ndarray, kind: str = "frobenius"
) -> float:
    """Distance between the gene-gene Pearson correlation matrices of truth and prediction.

    Correlations are taken across mask cells. Genes constant in the truth are dropped; a gene
    constant in the prediction has correlation 0 with every other gene. Only off-diagonal entries
    are compared.

    Args:
        truth, pred: ``(G, H, W)`` counts per HR cell.
        mask: ``(H, W)`` bool.
        kind: ``"frobenius"`` (square root of the summed squared differences) or ``"mae"``
            (mean absolute difference).

    Returns:
        The distance (0 = identical gene-gene structure); NaN with fewer than 2 usable genes.
    """
    truth, pred, mask = _check_inputs(truth, pred, mask)
    if kind not in ("frobenius", "mae"):
        raise ValueError(f"gene_corr_error: kind must be 'frobenius' or 'mae', got {kind!r}")
    t, p = truth[:, mask], pred[:, mask]
    keep = t.std(axis=1) > 0
    if keep.sum() < 2:
        return float("nan")
    diff = _corr_matrix(t[keep]) - _corr_matrix(p[keep])
    off = ~np.eye(diff.shape[0], dtype=bool)
    if kind == "frobenius":
        return float(np.sqrt((diff[off] ** 2).sum()))
    return float(np.abs(diff[off]).mean())


def _corr_matrix(x: np.ndarray) -> np.ndarray:
    """Pearson correlation of the rows of ``x`` ``(G, N)``; constant rows correlate 0."""
    xc = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((xc * xc).sum(axis=1))
    z = np.divide(xc, norm[:, None], out=np.zeros_like(xc), where=norm[:, None] > 0)
    return np.clip(z @ z.T, -1.0, 1.0)


def paired_wilcoxon(
    a: np.ndarray | pd.Series,
    b: np.ndarray | pd.Series,
    higher_is_better: bool = True,
    alternative: str = "two-sided",
) -> tuple[float, float]:
    """Compare two methods gene by gene with a Wilcoxon signed-rank test.

    Args:
        a, b: per-gene scores of methods A and B (same genes, same order); pairs with a NaN in
            either are dropped.
        higher_is_better: True for PCC/SSIM/PSNR, False for RMSE/RVD.
        alternative: ``"two-sided"`` or ``"greater"`` (A better than B) or ``"less"``.

    Returns:
        ``(win_rate, p_value)``: the fraction of genes where A is better than B (ties count one
        half) and the test's p-value. With no usable pairs both are NaN; when every pair ties the
        p-value is 1.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_wilcoxon: {a.size} scores for A but {b.size} for B")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"paired_wilcoxon: unknown alternative {alternative!r}")
    keep = ~(np.isnan(a) | np.isnan(b))
    with np.errstate(invalid="ignore"):
        diff = a[keep] - b[keep]
    diff = np.where(np.isnan(diff), 0.0, diff)  # both +inf (two perfect PSNRs): a tie
    if not higher_is_better:
        diff = -diff
    if diff.size == 0:
        return float("nan"), float("nan")
    win_rate = float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)
    finite = diff[np.isfinite(diff)]
    if not np.any(finite != 0) and not np.any(np.isinf(diff)):
        return win_rate, 1.0
    # infinite differences (e.g. a perfect PSNR) keep their sign but get the largest rank
    big = np.abs(finite).max() * 2 + 1 if finite.size else 1.0
    diff = np.where(np.isinf(diff), np.sign(diff) * big, diff)
    result = stats.wilcoxon(diff, alternative=alternative, zero_method="wilcox")
    return win_rate, float(result.pvalue)

"""Tests for diffst.metrics against values derived by hand on tiny rasters (runtime < 2 s)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffst.metrics import (
    METRIC_COLUMNS,
    evaluate,
    gene_corr_error,
    masked_ssim,
    paired_wilcoxon,
    ssim_window,
    summarize,
    truth_minmax,
)

GENES = ["a", "b"]


def _truth() -> np.ndarray:
    """2 genes x 4 x 4; gene a spans 0..15, gene b spans 10..40."""
    a = np.arange(16, dtype=float).reshape(4, 4)
    b = 10.0 + 2.0 * np.array([[0, 5, 1, 9], [3, 15, 7, 2], [11, 4, 13, 6], [8, 14, 10, 12]])
    return np.stack([a, b])


FULL = np.ones((4, 4), dtype=bool)


def test_columns_and_index() -> None:
    df = evaluate(_truth(), _truth(), FULL, GENES)
    assert list(df.columns) == METRIC_COLUMNS
    assert list(df.index) == GENES


def test_rmse_of_known_offset_and_psnr() -> None:
    truth = _truth()
    pred = truth + np.array([3.0, 6.0])[:, None, None]
    df = evaluate(truth, pred, FULL, GENES)
    # normalised offset = offset / (max - min): 3 / 15 for a, 6 / 30 for b
    assert df.loc["a", "rmse"] == pytest.approx(0.2)
    assert df.loc["b", "rmse"] == pytest.approx(0.2)
    assert df.loc["a", "psnr"] == pytest.approx(10 * np.log10(1 / 0.04))
    # a constant offset leaves the correlation and the variance untouched
    assert df.loc["a", "pcc"] == pytest.approx(1.0)
    assert df.loc["a", "rvd"] == pytest.approx(0.0, abs=1e-12)
    # the iStar protocol rescales each map by itself, so a pure offset is invisible to it
    assert df.loc["a", "istar_rmse"] == pytest.approx(0.0, abs=1e-12)


def test_prediction_is_not_clipped() -> None:
    truth = _truth()
    pred = truth.copy()
    pred[0, 0, 0] = -15.0  # normalised value -1, error 1 at one of 16 cells
    df = evaluate(truth, pred, FULL, GENES)
    assert df.loc["a", "rmse"] == pytest.approx(np.sqrt(1 / 16))


def test_pcc_sign_and_value() -> None:
    truth = _truth()
    pred = truth.max(axis=(1, 2), keepdims=True) - truth
    df = evaluate(truth, pred, FULL, GENES)
    assert df.loc["a", "pcc"] == pytest.approx(-1.0)
    assert df.loc["b", "pcc"] == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    noisy = truth + rng.normal(0, 5, truth.shape)
    df = evaluate(truth, noisy, FULL, GENES)
    for i, g in enumerate(GENES):
        expected = np.corrcoef(truth[i].ravel(), noisy[i].ravel())[0, 1]
        assert df.loc[g, "pcc"] == pytest.approx(expected)


def test_constant_prediction_scores_zero_pcc() -> None:
    truth = _truth()
    pred = np.full_like(truth, 5.0)
    df = evaluate(truth, pred, FULL, GENES)
    assert df.loc["a", "pcc"] == 0.0
    assert df.loc["a", "release_pcc"] == 0.0
    # variance 0 against var(0..15) -> rvd (0 - v)^2 / v^2 = 1
    assert df.loc["a", "rvd"] == pytest.approx(1.0)


def test_ssim_identical_is_one_and_scrambled_is_lower() -> None:
    truth = _truth()
    df = evaluate(truth, truth, FULL, GENES)
    np.testing.assert_allclose(df["ssim"], 1.0, atol=1e-12)
    np.testing.assert_allclose(df["istar_ssim"], 1.0, atol=1e-12)
    rng = np.random.default_rng(1)
    scrambled = np.stack([rng.permutation(g.ravel()).reshape(4, 4) for g in truth])
    df = evaluate(truth, scrambled, FULL, GENES)
    assert (df["ssim"] < 0.9).all()


def test_masked_ssim_matches_hand_formula() -> None:
    # 3x3 raster, only the centre cell in the mask: the single 3x3 window around the centre
    # sees a (resp. b) at the centre and zeros elsewhere.
    a, b = 0.8, 0.5
    t = np.full((3, 3), 7.0)
    p = np.full((3, 3), -2.0)  # outside-mask values must be ignored (set to 0)
    t[1, 1], p[1, 1] = a, b
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    mx, my = a / 9, b / 9
    vx, vy, cxy = a * a / 9, b * b / 9, a * b / 9  # sample (ddof=1) moments of 9 values
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert masked_ssim(t, p, mask) == pytest.approx(expected)


def test_ssim_window_sizes() -> None:
    assert ssim_window((200, 150)) == 7
    assert ssim_window((6, 40)) == 5
    assert ssim_window((3, 3)) == 3
    assert ssim_window((2, 50)) is None
    truth = np.stack([np.arange(10.0).reshape(2, 5)])
    df = evaluate(truth, truth, np.ones((2, 5), bool), ["g"])
    assert np.isnan(df.loc["g", "ssim"])
    assert df.loc["g", "pcc"] == pytest.approx(1.0)


def test_constant_gene_is_nan_and_excluded_from_means() -> None:
    truth = _truth()
    truth[1] = 4.0
    pred = truth + 1.5
    df = evaluate(truth, pred, FULL, GENES)
    assert df.loc["b"].isna().all()
    summary = summarize(df)
    assert summary["rmse"] == pytest.approx(1.5 / 15)
    assert summary["pcc"] == pytest.approx(1.0)
    assert summary["n_genes"] == 2
    assert summary["n_valid"] == 1


def test_mask_restricts_the_computation() -> None:
    truth = _truth()
    rng = np.random.default_rng(2)
    pred = truth + rng.normal(0, 3, truth.shape)
    mask = np.ones((4, 4), bool)
    mask[0, :] = False
    mask[:, 3] = False
    base = evaluate(truth, pred, mask, GENES)
    truth2, pred2 = truth.copy(), pred.copy()
    truth2[:, ~mask] = 1e6
    pred2[:, ~mask] = -1e3
    changed = evaluate(truth2, pred2, mask, GENES)
    pd.testing.assert_frame_equal(base, changed)
    # and the normalisation really uses the in-mask range only
    tn, _, valid = truth_minmax(truth2, pred2, mask)
    assert valid.all()
    assert tn[:, mask].min() == 0.0 and tn[:, mask].max() == 1.0


def test_istar_protocol_is_scale_free() -> None:
    truth = _truth()
    pred = 3.0 * truth + 5.0
    df = evaluate(truth, pred, FULL, GENES)
    np.testing.assert_allclose(df["istar_rmse"], 0.0, atol=1e-12)
    np.testing.assert_allclose(df["istar_ssim"], 1.0, atol=1e-12)
    assert (df["rmse"] > 0.5).all()  # the truth min-max protocol sees the wrong scale


def test_release_protocol_uses_absolute_pcc_and_8bit_gaussian_ssim() -> None:
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(3)
    truth = rng.poisson(4.0, (2, 16, 16)).astype(float)
    mask = np.ones((16, 16), bool)
    df = evaluate(truth, -truth + 20.0, mask, ["a", "b"])  # anti-correlated prediction
    np.testing.assert_allclose(df["release_pcc"], 1.0)
    np.testing.assert_allclose(df["pcc"], -1.0)
    noisy = truth + rng.normal(0, 2.0, truth.shape)
    df = evaluate(truth, noisy, mask, ["a", "b"])
    for g in range(2):
        t = (truth[g] - truth[g].min()) / np.ptp(truth[g])
        p = (noisy[g] - noisy[g].min()) / np.ptp(noisy[g])
        _, smap = structural_similarity(np.round(255 * t), np.round(255 * p), data_range=255,
                                        gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
        expected = smap.mean()  # every cell is in the mask: the mean over the whole map
        assert df["release_ssim"].iloc[g] == pytest.approx(expected)
    # a raster narrower than the 11-px Gaussian window has no release SSIM
    small = evaluate(truth[:, :8, :8], noisy[:, :8, :8], mask[:8, :8], ["a", "b"])
    assert small["release_ssim"].isna().all() and small["ssim"].notna().all()


def test_rvd_of_doubled_map() -> None:
    truth = _truth()
    df = evaluate(truth, 2.0 * truth, FULL, GENES)
    # var(2x) = 4 var(x): (4v - v)^2 / v^2 = 9
    np.testing.assert_allclose(df["rvd"], 9.0)


def test_gene_corr_error() -> None:
    g0 = np.arange(16.0).reshape(4, 4)
    truth = np.stack([g0, 2 * g0 + 1])  # correlation +1
    pred = np.stack([g0, 20 - g0])  # correlation -1
    assert gene_corr_error(truth, truth, FULL) == pytest.approx(0.0, abs=1e-12)
    # two off-diagonal entries each differ by 2
    assert gene_corr_error(truth, pred, FULL) == pytest.approx(np.sqrt(8.0))
    assert gene_corr_error(truth, pred, FULL, kind="mae") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="kind"):
        gene_corr_error(truth, pred, FULL, kind="l1")


def test_paired_wilcoxon() -> None:
    a = np.linspace(0.5, 0.9, 10)
    b = a - np.arange(1, 11) * 0.01  # A better on every gene, distinct differences
    win, p = paired_wilcoxon(a, b)
    assert win == 1.0
    # exact two-sided test, all 10 ranks positive: p = 2 / 2**10
    assert p == pytest.approx(2 / 2**10)
    win, p_low = paired_wilcoxon(a, b, higher_is_better=False)
    assert win == 0.0 and p_low == pytest.approx(p)
    _, p_greater = paired_wilcoxon(a, b, alternative="greater")
    assert p_greater == pytest.approx(1 / 2**10)
    win, p = paired_wilcoxon(a, a)
    assert win == 0.5 and p == 1.0
    a_nan = a.copy()
    a_nan[0] = np.nan
    win, _ = paired_wilcoxon(a_nan, b)
    assert win == 1.0


def test_bad_inputs_raise() -> None:
    truth = _truth()
    with pytest.raises(ValueError, match="shape"):
        evaluate(truth, truth[:, :3], FULL, GENES)
    with pytest.raises(ValueError, match="empty"):
        evaluate(truth, truth, np.zeros((4, 4), bool), GENES)
    with pytest.raises(ValueError, match="gene names"):
        evaluate(truth, truth, FULL, ["a"])
    bad = truth.copy()
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate(truth, bad, FULL, GENES)

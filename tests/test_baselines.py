"""Tests for diffst.baselines on small synthetic slides (runtime about 10 s on 2 CPU cores)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from diffst.baselines import BASELINES, IStarLike, bicubic, spot_constant, tesla_like
from diffst.data.features import hr_colours, hr_features
from diffst.data.lr import pool_sum, simulate_lr
from diffst.data.sample import SampleError, STSample
from diffst.model.istar_like import istar_settings

PX = 4  # image pixels per HR cell
S = 4  # scale factor


def _slide(h: int = 32, w: int = 32, seed: int = 0, round_mask: bool = False) -> STSample:
    """A slide whose first gene equals the H&E darkness under each HR cell (sub-LR structure)."""
    rng = np.random.default_rng(seed)
    dark = ndimage.gaussian_filter(rng.random((h * PX, w * PX)), 0.8 * PX)
    dark = (dark - dark.min()) / (dark.max() - dark.min())
    img = np.empty((h * PX, w * PX, 3), np.uint8)
    img[..., 0] = np.round(230 - 150 * dark)
    img[..., 1] = np.round(200 - 170 * dark)
    img[..., 2] = np.round(235 - 80 * dark)
    cell_dark = dark.reshape(h, PX, w, PX).mean(axis=(1, 3))
    expr = np.stack([20 * cell_dark, 20 * (1 - cell_dark), 3 + rng.random((h, w))])
    mask = np.ones((h, w), bool)
    if round_mask:
        rr, cc = np.mgrid[0:h, 0:w]
        mask = (rr - h / 2) ** 2 + (cc - w / 2) ** 2 < (0.45 * min(h, w)) ** 2
        expr = expr * mask
    affine = np.array([[PX, 0, (PX - 1) / 2], [0, PX, (PX - 1) / 2], [0, 0, 1.0]])
    return STSample(
        expr=expr,
        genes=["dark", "light", "noise"],
        cell_um=10.0,
        mask=mask,
        image=img,
        image_um_per_px=10.0 / PX,
        affine=affine,
        name="synthetic",
    )


def _lr_from_density(density: np.ndarray, factor: int) -> STSample:
    """An image-free LR sample whose counts are ``density * factor**2`` per LR cell."""
    g, h, w = density.shape
    return STSample(
        expr=density * factor**2,
        genes=[f"g{i}" for i in range(g)],
        cell_um=10.0 * factor,
        mask=np.ones((h, w), bool),
    )


def _corr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


FAST_ISTAR = {"n_models": 2, "steps": 200}


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("hr_shape", [(32, 32), (30, 29)])
def test_baseline_output_contract(name: str, hr_shape: tuple[int, int]) -> None:
    hr = _slide(round_mask=True).crop(0, 0, *hr_shape)
    lr = simulate_lr(hr, S)
    if name == "istar_like":
        pred = IStarLike(n_models=2, steps=50).fit(lr, S, hr_shape).predict()
    else:
        pred = BASELINES[name](lr, S, hr_shape, seed=0)
    assert pred.shape == (3, *hr_shape)
    assert pred.dtype == np.float32
    assert np.isfinite(pred).all() and (pred >= 0).all()
    # HR cells of non-tissue LR cells were never measured: they are 0
    lr_tissue = np.repeat(np.repeat(lr.mask, S, 0), S, 1)[: hr_shape[0], : hr_shape[1]]
    assert not lr_tissue.all()
    assert (pred[:, ~lr_tissue] == 0).all()
    assert (pred[:2, lr_tissue].sum(axis=0) > 0).all()


def test_spot_constant_pools_back_exactly() -> None:
    hr = _slide(round_mask=True)
    lr = simulate_lr(hr, S)
    pred = spot_constant(lr, S, hr.shape)
    np.testing.assert_allclose(pool_sum(pred, S), lr.expr, rtol=1e-6)
    # every HR cell carries its own LR cell's count / s^2
    assert pred[0, 13, 6] == pytest.approx(lr.expr[0, 13 // S, 6 // S] / S**2)


def test_bicubic_constant_input_pools_back() -> None:
    rng = np.random.default_rng(3)
    density = 5.0 + 0.01 * rng.random((2, 6, 7))
    lr = _lr_from_density(density, S)
    pred = bicubic(lr, S, (24, 28))
    np.testing.assert_allclose(pool_sum(pred, S), lr.expr, rtol=5e-3)


def test_bicubic_reproduces_linear_ramp_in_interior() -> None:
    h, w = 8, 9
    rows, cols = np.mgrid[0:h, 0:w].astype(float)
    density = np.stack([10 + 2.0 * rows + 0.5 * cols, 3 + 1.5 * cols])
    lr = _lr_from_density(density, S)
    pred = bicubic(lr, S, (h * S, w * S))
    # HR cell centre (r, c) sits at LR coordinate ((r + 0.5) / s - 0.5, (c + 0.5) / s - 0.5)
    u = (np.arange(h * S) + 0.5) / S - 0.5
    v = (np.arange(w * S) + 0.5) / S - 0.5
    expected = np.stack(
        [10 + 2.0 * u[:, None] + 0.5 * v[None, :], 3 + 1.5 * v[None, :] + 0 * u[:, None]]
    )
    interior = (slice(None), slice(2 * S, (h - 2) * S), slice(2 * S, (w - 2) * S))
    np.testing.assert_allclose(pred[interior], expected[interior], rtol=1e-4)


def test_bicubic_border_is_not_dragged_to_zero() -> None:
    hr = _slide(round_mask=True)
    hr = replace(hr, expr=np.where(hr.mask, 7.0, 0.0)[None].repeat(3, 0))
    lr = simulate_lr(hr, S)
    pred = bicubic(lr, S, hr.shape)
    # partial-tissue LR cells hold less than s^2 * 7, but no tissue HR cell falls near zero
    assert pred[:, hr.mask].min() > 1.0


def test_hr_colours_and_features_follow_the_hr_grid() -> None:
    hr = _slide(h=16, w=16, round_mask=True)
    lr = simulate_lr(hr, S)
    # the LR sample's affine must put HR cell (r, c) on image pixels [r*PX:(r+1)*PX, ...]
    rgb = hr_colours(lr, S, PX)
    direct = hr.image.astype(float).reshape(16, PX, 16, PX, 3).mean(axis=(1, 3)) / 255
    np.testing.assert_allclose(rgb, direct, atol=2 / 255)
    feats, names = hr_features(lr, S, PX, context_scales=(3, 5))
    assert feats.shape == (len(names), 16, 16) and len(names) == 11 + 2 * 10
    assert np.isfinite(feats).all()
    haem = feats[names.index("haem_mean")]
    assert _corr(haem, hr.expr[0], hr.mask) > 0.9  # darker = more haematoxylin


def _tesla_brute_force(lr: STSample, factor: int, r: int, c: int, radius: float, sigma: float):
    """Spatial-only Gaussian mean of tissue LR densities around HR cell (r, c), by explicit loop."""
    u, v = (r + 0.5) / factor - 0.5, (c + 0.5) / factor - 0.5
    num, den = np.zeros(lr.n_genes), 0.0
    for i in range(lr.shape[0]):
        for j in range(lr.shape[1]):
            d2 = (u - i) ** 2 + (v - j) ** 2
            if lr.mask[i, j] and d2 <= radius**2:
                wgt = np.exp(-d2 / (2 * sigma**2))
                num += wgt * lr.expr[:, i, j] / factor**2
                den += wgt
    return num / den


def test_tesla_without_colour_is_distance_weighted_mean() -> None:
    hr = _slide(round_mask=True)
    lr = simulate_lr(hr, S)
    pred = tesla_like(lr, S, hr.shape, colour_weight=0.0, radius=2.0, distance_sigma=1.3)
    for r, c in [(16, 16), (5, 14), (20, 3), (31, 17), (9, 22)]:
        if not lr.mask[r // S, c // S]:
            continue
        expected = _tesla_brute_force(lr, S, r, c, radius=2.0, sigma=1.3)
        np.testing.assert_allclose(pred[:, r, c], expected, rtol=1e-5)


def test_tesla_colour_term_tracks_histology() -> None:
    hr = _slide()
    lr = simulate_lr(hr, S)
    spatial = tesla_like(lr, S, hr.shape, colour_weight=0.0)
    guided = tesla_like(lr, S, hr.shape, colour_weight=1.0)
    assert _corr(guided[0], hr.expr[0], hr.mask) > _corr(spatial[0], hr.expr[0], hr.mask) + 0.02


def test_istar_like_recovers_sub_lr_structure() -> None:
    hr = _slide(seed=4)
    lr = simulate_lr(hr, S)
    model = IStarLike(**FAST_ISTAR, seed=0).fit(lr, S)
    pred = model.predict()
    base = spot_constant(lr, S, hr.shape)
    for g in (0, 1):  # darkness and its complement follow the image
        r_istar = _corr(pred[g], hr.expr[g], hr.mask)
        r_const = _corr(base[g], hr.expr[g], hr.mask)
        assert r_istar > r_const + 0.1, (g, r_istar, r_const)
    # training reduced the LR-sum loss
    for hist in model.history:
        assert hist[-1] < 0.5 * hist[0]
    # the LR totals are approximately honoured
    pooled = pool_sum(pred, S)
    rel = np.abs(pooled[:2].sum() - lr.expr[:2].sum()) / lr.expr[:2].sum()
    assert rel < 0.1


def test_istar_like_stops_early_on_noise_and_trains_on_signal() -> None:
    hr = _slide(seed=4)
    deep = simulate_lr(hr, S)  # counts follow the image exactly
    noise = replace(hr, expr=np.random.default_rng(0).poisson(0.5, hr.expr.shape)
                    .astype(np.float32))  # counts unrelated to the image
    shallow = simulate_lr(noise, S)
    fits = {name: IStarLike(n_models=1, steps=150, select_folds=4, seed=0).fit(lr, S)
            for name, lr in (("deep", deep), ("noise", shallow))}
    assert fits["noise"].chosen_steps <= 10 < 50 <= fits["deep"].chosen_steps
    for fit in fits.values():
        curve = fit.held_out_curve
        assert curve.shape == (150 // 10 + 1,)
        assert fit.chosen_steps == 10 * int(np.argmin(curve))
        assert len(fit.history[0]) == fit.chosen_steps  # the ensemble trained that long
    again = IStarLike(n_models=1, steps=150, select_folds=4, seed=0).fit(shallow, S)
    np.testing.assert_array_equal(again.predict(), fits["noise"].predict())


def test_istar_like_without_selection_trains_every_step() -> None:
    lr = simulate_lr(_slide(h=16, w=16), S)
    fixed = IStarLike(n_models=1, steps=40, select_folds=0, seed=1).fit(lr, S)
    assert fixed.chosen_steps == 40 and fixed.held_out_curve is None
    assert len(fixed.history[0]) == 40
    for bad in ({"select_folds": 1}, {"select_folds": -2}, {"select_every": 0}):
        with pytest.raises(ValueError, match="select_folds must be 0 or >= 2"):
            IStarLike(**bad)


def test_istar_settings_name_what_a_fit_uses() -> None:
    settings = istar_settings(steps=20)
    assert settings["steps"] == 20 and settings["select_folds"] == IStarLike().select_folds
    assert "num_threads" not in settings
    with pytest.raises(ValueError, match="no setting"):
        istar_settings(depth=3)


def test_istar_like_poisson_loss_runs_and_seeds_are_reproducible() -> None:
    hr = _slide(h=16, w=16)
    lr = simulate_lr(hr, S)
    a = IStarLike(n_models=1, steps=30, loss="poisson", seed=7).fit(lr, S).predict()
    b = IStarLike(n_models=1, steps=30, loss="poisson", seed=7).fit(lr, S).predict()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="loss"):
        IStarLike(loss="l1")


def test_errors_are_clear() -> None:
    hr = _slide(h=16, w=16)
    lr = simulate_lr(hr, S)
    with pytest.raises(SampleError, match="HR shape"):
        spot_constant(lr, S, (24, 16))
    no_image = replace(lr, image=None)
    with pytest.raises(SampleError, match="no H&E image"):
        tesla_like(no_image, S, hr.shape)
    with pytest.raises(SampleError, match="no H&E image"):
        IStarLike(n_models=1, steps=2).fit(no_image, S)
    with pytest.raises(RuntimeError, match="before fit"):
        IStarLike().predict()

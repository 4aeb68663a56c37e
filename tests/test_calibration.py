"""Calibrated intervals: conformal math on known distributions, self/split calibration, predict."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_sample, tiny_config

from diffst.api import predict, train_model
from diffst.calibration import (
    LEVELS,
    Calibration,
    conformal_quantile,
    coverage,
    fit_calibration,
    self_calibrate,
    split_conformal,
)
from diffst.data.sample import SampleError
from diffst.diffusion import NoiseSchedule, make_sampler
from diffst.infer import load_model

F = 5


def _gaussian_maps(seed: int, genes: int = 3, size: int = 120, under: float = 3.0):
    """Truth ~ N(m, sigma) with a varying sigma; the 'sampler' reports sigma / under."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    sigma = np.stack([(g + 1) * (0.5 + (xx + yy) / (2 * size)) for g in range(genes)])
    mean = 20.0 + 5 * np.sin(xx / 7.0)[None] * np.ones((genes, 1, 1))
    truth = mean + sigma * rng.standard_normal(sigma.shape)
    mask = np.ones((size, size), bool)
    mask[:5] = False
    return truth, mean, sigma / under, mask


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 10.0)  # 9 scores
    assert conformal_quantile(scores, 0.5) == 5.0  # ceil(10 * 0.5) = 5th smallest
    assert conformal_quantile(scores, 0.9) == 9.0
    assert conformal_quantile(scores, 0.99) == 9.0  # beyond n: the largest
    with pytest.raises(ValueError):
        conformal_quantile(np.array([]), 0.5)


def test_known_distribution_gets_nominal_coverage_per_gene():
    truth, mean, spread, mask = _gaussian_maps(0)
    genes = ["a", "b", "c"]
    cal = fit_calibration(truth, mean, spread, mask, genes, floor_frac=0.1)
    assert fit_calibration(truth, mean, spread, mask, genes).floor_frac <= 0.3  # informative
    t2, m2, s2, _ = _gaussian_maps(1)  # fresh draws from the same distribution
    for level in LEVELS:
        lo, hi = cal.interval(m2, s2, mask, level)
        per_gene = coverage(t2, lo, hi, mask, per_gene=True)
        assert np.all(np.abs(per_gene - level) < 0.015), (level, per_gene)
        # the uncalibrated Gaussian interval of the under-dispersed spread covers far less
        from statistics import NormalDist

        z = NormalDist().inv_cdf(0.5 + level / 2)
        raw = coverage(t2, m2 - z * s2, m2 + z * s2, mask)
        assert raw < level - 0.2
    # scaled spread: the multiplier recovers the under-dispersion (z_0.95 * 3 for 90 %)
    assert cal.multiplier(0.9)[:, 0] == pytest.approx(1.645 * 3 / 1.1, rel=0.06)


def test_auto_floor_ignores_an_uninformative_spread():
    truth, mean, _, mask = _gaussian_maps(4)
    noise = np.random.default_rng(5).uniform(0.01, 3.0, truth.shape)  # unrelated to the error
    kw = dict(spread_kind="sample")
    auto = fit_calibration(truth, mean, noise, mask, ["a", "b", "c"], **kw)
    fixed = fit_calibration(truth, mean, noise, mask, ["a", "b", "c"], floor_frac=0.1, **kw)
    assert auto.floor_frac >= 3.0
    t2, m2, _, _ = _gaussian_maps(6)
    widths = {}
    for name, cal in (("auto", auto), ("fixed", fixed)):
        lo, hi = cal.interval(m2, noise, mask, 0.9)
        assert abs(coverage(t2, lo, hi, mask) - 0.9) < 0.015
        widths[name] = float((hi - lo)[:, mask].mean())
    assert widths["auto"] < 0.8 * widths["fixed"]


def test_auto_spread_follows_what_predicts_the_error():
    rng = np.random.default_rng(7)
    mean = rng.uniform(0.5, 60.0, (2, 120, 120))
    mask = np.ones((120, 120), bool)
    noise = rng.uniform(0.01, 3.0, mean.shape)  # a sampler spread unrelated to the error
    counts = rng.poisson(mean).astype(float)
    cal = fit_calibration(counts, mean, noise, mask, ["a", "b"])
    assert cal.spread == "poisson"
    assert Calibration.from_record(cal.record()).spread == "poisson"
    sample = fit_calibration(counts, mean, noise, mask, ["a", "b"], spread_kind="sample")
    test = rng.poisson(mean).astype(float)
    widths = {}
    for name, c in (("auto", cal), ("sample", sample)):
        lo, hi = c.interval(mean, noise, mask, 0.9)
        assert abs(coverage(test, lo, hi, mask) - 0.9) < 0.02
        widths[name] = float((hi - lo)[:, mask].mean())
    assert widths["auto"] < 0.97 * widths["sample"]  # same coverage, narrower on average
    truth, gmean, spread, gmask = _gaussian_maps(4)  # here the sampler spread is the truth's
    assert fit_calibration(truth, gmean, spread, gmask, ["a", "b", "c"]).spread == "sample"


def test_expression_level_bins_fix_level_dependent_miscalibration():
    rng = np.random.default_rng(2)
    size = 150
    mean = rng.uniform(1, 100, (1, size, size))
    truth = mean + np.sqrt(mean) * rng.standard_normal(mean.shape)  # error grows with level
    spread = np.ones_like(mean)  # ... but the reported spread does not
    mask = np.ones((size, size), bool)
    one = fit_calibration(truth, mean, spread, mask, ["g"], n_bins=1, spread_kind="sample")
    three = fit_calibration(truth, mean, spread, mask, ["g"], n_bins=3, spread_kind="sample")
    pois = fit_calibration(truth, mean, spread, mask, ["g"], n_bins=1)  # auto: sqrt(mean)
    assert three.n_scores.min() > 0 and three.edges.shape == (1, 2)
    t2 = mean + np.sqrt(mean) * rng.standard_normal(mean.shape)
    low = mean[0] < np.quantile(mean, 1 / 3)
    cov = {}
    for name, cal in (("one", one), ("three", three), ("pois", pois)):
        lo, hi = cal.interval(mean, spread, mask, 0.9)
        cov[name] = coverage(t2, lo, hi, low)
    assert cov["one"] > 0.97  # a gene-wide width is far too wide for low-level cells
    assert abs(cov["three"] - 0.9) < 0.03
    assert pois.spread == "poisson" and abs(cov["pois"] - 0.9) < 0.05  # its floor adds a little


def test_interval_is_non_negative_zero_off_tissue_and_round_trips(tmp_path):
    truth, mean, spread, mask = _gaussian_maps(3, genes=2)
    cal = fit_calibration(truth, mean - 19.5, spread, mask, ["a", "b"], n_bins=2,
                          source={"data": "x"})
    lo, hi = cal.interval(mean - 19.5, spread, mask, 0.8)
    assert (lo >= 0).all() and (lo <= hi).all() and (hi[:, ~mask] == 0).all()
    back = Calibration.load(cal.save(tmp_path / "cal.json"))
    np.testing.assert_array_equal(back.interval(mean - 19.5, spread, mask, 0.8)[1], hi)
    # genes are matched by name
    lo_ba, _ = back.interval((mean - 19.5)[::-1], spread[::-1], mask, 0.8, ["b", "a"])
    np.testing.assert_allclose(lo_ba[::-1], lo)
    with pytest.raises(SampleError, match="no multipliers"):
        back.interval(mean, spread, mask, 0.8, ["zz", "a"])
    with pytest.raises(ValueError, match="not calibrated"):
        back.multiplier(0.7)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SampleError, match="not a JSON calibration"):
        Calibration.load(tmp_path / "bad.json")


# ---------------------------------------------------------------------------- with models
@pytest.fixture(scope="module")
def spots_model(tmp_path_factory):
    torch.set_num_threads(1)
    spots = make_sample(seed=4, size=20)
    return train_model([spots], F, tmp_path_factory.mktemp("m") / "own.pt", steps=3,
                       batch_size=2, patch=10, work_um_per_px=2.0, spots_only=True,
                       model_config=tiny_config(), progress=False), spots


def test_predict_self_calibrates_a_spots_only_model_and_records_it(spots_model, tmp_path):
    path, spots = spots_model
    out = tmp_path / "res.h5ad"
    res = predict(spots, path, out, n_samples=3, steps=2, progress=False)
    raw = predict(spots, path, None, n_samples=3, steps=2, progress=False, calibration="none")
    rec = res.meta["calibration"]
    assert rec["method"] == "self" and rec["source"]["scale_shift"] is False
    assert rec["output_level"] == 0.9 and rec["levels"] == list(LEVELS)
    np.testing.assert_array_equal(res.mean, raw.mean)
    assert not np.allclose(res.q95, raw.q95)
    # the calibrated bound is mean + c (spread + floor) with the stored multipliers
    cal = Calibration.from_record(rec)
    np.testing.assert_allclose(res.q95, cal.interval(raw.mean, raw.std, raw.mask)[1])
    adata = ad.read_h5ad(out)
    uns = adata.uns["diffst_calibration"]
    assert uns["method"] == "self" and "self-calibration" in uns["description"]
    assert json.loads(uns["record_json"])["genes"] == res.genes
    rows, cols = np.nonzero(res.mask)
    np.testing.assert_allclose(adata.layers["q95"], res.q95[:, rows, cols].T, rtol=1e-6)
    assert raw.meta["calibration"]["method"] == "none"


def test_uncalibrated_option_keeps_the_sampler_quantiles(spots_model, tmp_path):
    path, spots = spots_model
    from diffst.cli import main

    out = tmp_path / "raw.h5ad"
    runner = CliRunner()
    done = runner.invoke(main, ["predict", str(spots.save_npz(tmp_path / "s.npz")), "--model",
                                str(path), "--out", str(out), "--samples", "3", "--steps", "2",
                                "--calibration", "none"])
    assert done.exit_code == 0, done.output
    assert "uncalibrated" in done.output
    adata = ad.read_h5ad(out)
    assert adata.uns["diffst_calibration"]["method"] == "none"
    from diffst.infer import super_resolve

    direct = super_resolve(load_model(path), spots, steps=2, n_samples=3, progress=False)
    rows, cols = np.nonzero(direct.mask)
    np.testing.assert_allclose(adata.layers["q05"], direct.q05[:, rows, cols].T, rtol=1e-5)
    done = runner.invoke(main, ["predict", str(tmp_path / "s.npz"), "--model", str(path),
                                "--out", str(out), "--calibration", str(tmp_path / "no.json")])
    assert done.exit_code != 0 and "does not exist" in done.output


def test_split_conformal_and_scale_shift_rules(spots_model, tmp_path):
    path, spots = spots_model
    lm = load_model(path)
    held_out = make_sample(seed=9, size=20)
    cal = split_conformal(lm, held_out, steps=2, n_samples=3)
    assert cal.method == "split-conformal" and cal.source["data"] == held_out.name
    assert cal.source["tissue_cells"] == int(held_out.mask.sum())
    saved = cal.save(tmp_path / "cal.json")
    res = predict(spots, path, None, n_samples=3, steps=2, progress=False, calibration=saved)
    assert res.meta["calibration"]["method"] == "split-conformal"
    on = predict(spots, path, None, n_samples=3, steps=2, progress=False, calibrate_on=held_out)
    assert on.meta["calibration"]["source"]["data"] == held_out.name
    np.testing.assert_allclose(on.q95, res.q95, rtol=1e-5)  # same data, same multipliers
    # spots of another size: self-calibration runs off the training scale, only on request
    coarse = make_sample(seed=5, size=20)
    coarse.cell_um = 8.0 * F
    with pytest.raises(SampleError, match="allow_scale_shift"):
        self_calibrate(lm, coarse, steps=1, n_samples=2)
    shifted = self_calibrate(lm, coarse, steps=1, n_samples=2, allow_scale_shift=True)
    assert shifted.source["scale_shift"] and shifted.source["area_ratio"] == pytest.approx(25)
    auto = predict(coarse, path, None, n_samples=2, steps=1, progress=False)
    assert auto.meta["calibration"]["method"] == "none"
    assert "off its training scale" in auto.meta["calibration"]["reason"]


def test_stochastic_ddim_adds_spread():
    sch = NoiseSchedule(1000)
    shape = (256, 1, 2, 2)

    def eps_fn(x, t):  # a fixed denoiser that shrinks the sample towards 0
        return 0.5 * x

    outs = {}
    for eta in (0.0, 1.0):
        gen = torch.Generator().manual_seed(0)
        outs[eta] = make_sampler("ddim", sch, 10, eta=eta).sample(eps_fn, shape, gen)
    assert not torch.allclose(outs[1.0], outs[0.0])
    again = make_sampler("ddim", sch, 10, eta=1.0).sample(eps_fn, shape,
                                                         torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, outs[1.0])  # seeded: reproducible
    with pytest.raises(ValueError, match="ddim sampler only"):
        make_sampler("dpmpp", sch, 10, eta=0.5)
    with pytest.raises(ValueError, match="eta must be"):
        make_sampler("ddim", sch, 10, eta=-1)

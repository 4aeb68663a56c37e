"""Whole-slide prediction: spot consistency, seams, quantiles, resume, atomic outputs, report."""

from __future__ import annotations

import dataclasses
import json

import anndata as ad
import numpy as np
import pytest
import torch
from conftest import make_sample, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

import diffst.infer as infer
from diffst.api import default_resume_dir, predict, train_model
from diffst.consistency import consistency_maps, max_relative_error, redistribute_np
from diffst.data.lr import padded_mask, pool_mask, pool_sum, simulate_lr
from diffst.data.sample import SampleError
from diffst.infer import model_from_trainer, super_resolve, tile_origins
from diffst.model.upsampler import istar_like_base
from diffst.tilestore import TileStore
from diffst.train import TrainConfig, Trainer

F = 5


@pytest.fixture(scope="module")
def trained():
    """A tiny model trained briefly on two toy samples (module-wide: about a second)."""
    torch.set_num_threads(1)
    samples = [make_sample(seed=0), make_sample(seed=1)]
    tc = TrainConfig(steps=12, batch_size=4, lr=3e-3, patch=10, work_um_per_px=2.0, seed=0)
    trainer = Trainer(samples, samples[0].genes, F, tiny_config(), tc)
    trainer.fit(progress=False)
    return trainer


@pytest.fixture(scope="module")
def model_file(trained, tmp_path_factory):
    return trained.export_model(tmp_path_factory.mktemp("model") / "m.pt")


@pytest.fixture(scope="module")
def toy_hr():
    return make_sample(seed=3, size=40)


def _run(trainer, hr, **kw):
    args = dict(steps=3, n_samples=4, patch=20, overlap=5, progress=False,
                hr_mask=padded_mask(hr.mask, F))
    args.update(kw)
    return super_resolve(model_from_trainer(trainer), simulate_lr(hr, F), **args)


def _tissue_lr_cells(mask):
    return pool_mask(mask, F)


# ------------------------------------------------------------------ the projection itself
def test_redistribution_by_hand():
    x = np.zeros((1, 2, 4), np.float64)
    x[0, :, :2] = [[1.0, 3.0], [0.0, 0.0]]  # LR cell 0: sum 4 -> target 8 (scale 2)
    mask = np.ones((2, 4), bool)  # LR cell 1: sum 0 -> target 6 spread over 3 tissue cells
    mask[1, 3] = False
    target = np.array([[[8.0, 6.0]]])
    out = redistribute_np(x, target, mask, 2)
    np.testing.assert_allclose(out[0, :, :2], [[2.0, 6.0], [0.0, 0.0]])
    np.testing.assert_allclose(out[0, :, 2:], [[2.0, 2.0], [2.0, 0.0]])
    np.testing.assert_allclose(pool_sum(out, 2), target)
    # a zero count empties the cell; a cell without tissue stays 0 (its count is unplaced)
    out = redistribute_np(x + 1, np.array([[[0.0, 5.0]]]), np.pad(np.ones((2, 2), bool),
                                                                  ((0, 0), (0, 2))), 2)
    assert (out == 0).all()
    scale, fill = consistency_maps(torch.ones(1, 2, 2, dtype=torch.float64),
                                   torch.tensor([[[3.0]]], dtype=torch.float64),
                                   torch.ones(2, 2, dtype=torch.bool), 2)
    assert scale.item() == pytest.approx(0.75) and fill.item() == 0


# ------------------------------------------------------------------ spot consistency
@pytest.mark.parametrize("mode", ["draws", "steps"])
def test_mean_pools_back_to_the_measured_counts(trained, toy_hr, mode):
    res = _run(trained, toy_hr, consistency=mode)
    lr = simulate_lr(toy_hr, F)
    cells = _tissue_lr_cells(res.mask)
    pooled = pool_sum(res.mean.astype(np.float64), F)
    rel = np.abs(pooled - lr.expr)[:, cells] / np.maximum(lr.expr[:, cells], 1)
    assert rel.max() < 1e-4
    assert res.meta["consistency_max_rel_err"] < 1e-4 and res.meta["unplaced_counts"] == 0
    assert (res.mean[:, ~res.mask] == 0).all()


def test_without_consistency_the_identity_does_not_hold(trained, toy_hr):
    res = _run(trained, toy_hr, consistency=False)
    lr = simulate_lr(toy_hr, F)
    assert max_relative_error(res.mean, lr.expr, res.mask, F) > 1e-2
    with pytest.raises(ValueError, match="consistency must be"):
        _run(trained, toy_hr, consistency="sometimes")


# ------------------------------------------------------------------ uncertainty maps
@pytest.mark.parametrize("mode", ["draws", "off"])
def test_quantiles_are_ordered_and_spread_is_positive(trained, toy_hr, mode):
    res = _run(trained, toy_hr, n_samples=8, consistency=mode)
    tol = 1e-4 * (1 + np.abs(res.mean))
    assert (res.q05 <= res.q95 + tol).all()
    # with K <= 20 samples the mean lies between the 5% and 95% sample quantiles
    assert (res.q05 <= res.mean + tol).all() and (res.mean <= res.q95 + tol).all()
    assert (res.std >= 0).all() and res.std[:, res.mask].mean() > 0
    for arr in (res.std, res.q05, res.q95):
        assert (arr[:, ~res.mask] == 0).all()


# ------------------------------------------------------------------ seams
def test_blending_removes_steps_between_tiles(trained, toy_hr, monkeypatch):
    """Tiles with very different (constant) outputs: overlap blending turns the step at tile
    borders into a ramp; without overlap the full step shows."""
    levels = iter(np.linspace(0.1, 1.0, 50)[np.random.default_rng(0).permutation(50)])

    def fake(lm, batch, n_samples, steps, sampler, generator, **kw):
        b, g, p, _ = batch["lr_up"].shape
        return torch.stack([torch.full((n_samples, g, p, p), float(next(levels)))
                            for _ in range(b)])

    monkeypatch.setattr(infer, "sample_tiles", fake)
    steps = {}
    for overlap in (0, 10):
        res = _run(trained, toy_hr, overlap=overlap, consistency=False, n_samples=1)
        inside = res.mask[:, 1:] & res.mask[:, :-1]
        steps[overlap] = np.abs(np.diff(res.mean, axis=2))[:, inside].max()
    assert steps[10] < 0.4 * steps[0]


def _column_change(res) -> np.ndarray:
    """Mean |change| of the (per-gene normalised) mean map between column c-1 and c, per c."""
    level = res.mean[:, res.mask].mean(1)[:, None, None] + 1e-9
    diff = np.abs(np.diff(res.mean / level, axis=2))
    inside = res.mask[:, 1:] & res.mask[:, :-1]
    return np.array([np.nan] + [diff[:, :, c][:, inside[:, c]].mean() for c in
                                range(diff.shape[2])])


def test_no_seams_at_tile_borders_with_a_trained_model(trained, toy_hr):
    """Across tile borders the mean map changes no more than the same map made from one big
    tile (no borders at all) changes at those columns: tiling leaves no step."""
    patch, overlap = 20, 5
    width = toy_hr.shape[1]
    starts = tile_origins(width, patch, patch - overlap, F)
    borders = sorted({c for c in starts if c > 0} | {c + patch for c in starts
                                                    if c + patch < width})
    assert borders
    tiled, single = [], []
    for seed in (0, 1):
        tiled.append(_column_change(_run(trained, toy_hr, patch=patch, overlap=overlap,
                                         seed=seed)))
        one = _run(trained, toy_hr, patch=width, overlap=0, seed=seed)
        assert one.meta["n_tiles"] == 1
        single.append(_column_change(one))
    ratio = np.mean(tiled, 0)[borders].mean() / np.mean(single, 0)[borders].mean()
    assert ratio < 1.15  # about 0.95 here; tiles without overlap give about 1.2-1.4


# ------------------------------------------------------------------ resume and atomic writes
class _Stop(RuntimeError):
    pass


def test_interrupted_run_resumes_to_the_same_result(trained, toy_hr, tmp_path, monkeypatch):
    kw = dict(patch=20, overlap=10, batch_size=2, n_samples=2)
    reference = _run(trained, toy_hr, **kw)
    real = infer.sample_tiles
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Stop("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(infer, "sample_tiles", flaky)
    store = tmp_path / "tiles"
    with pytest.raises(_Stop):
        _run(trained, toy_hr, resume_dir=store, **kw)
    assert len(list(store.glob("batch_*.npz"))) == 2
    assert not list(store.glob("*.part"))
    calls["n"] = -1000  # the rerun samples only the missing batches
    resumed = _run(trained, toy_hr, resume_dir=store, **kw)
    n_batches = len(list(store.glob("batch_*.npz")))
    assert calls["n"] == -1000 + n_batches - 2
    for key, val in reference.layers().items():
        np.testing.assert_allclose(getattr(resumed, key), val, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="steps differ"):
        _run(trained, toy_hr, resume_dir=store, steps=2, **kw)


def test_tile_store_refuses_other_settings(tmp_path):
    TileStore(tmp_path / "s", {"steps": 3})
    with pytest.raises(ValueError, match="different run"):
        TileStore(tmp_path / "s", {"steps": 4})


def test_predict_writes_h5ad_report_and_cleans_up(model_file, toy_hr, tmp_path):
    out = tmp_path / "res.h5ad"
    res = predict(toy_hr, model_file, out, pool=True, n_samples=2, steps=2,
                  report_dir=tmp_path / "report", report_genes=["G0", "G1"], progress=False)
    adata = ad.read_h5ad(out)
    assert set(adata.layers) >= {"mean", "std", "q05", "q95"}
    assert adata.n_obs == int(res.mask.sum()) and list(adata.var_names) == res.genes
    np.testing.assert_allclose(adata.layers["mean"].sum(0), res.mean[:, res.mask].sum(1),
                               rtol=1e-4)
    meta = json.loads(adata.uns["diffst"]["meta_json"])
    assert meta["consistency"] == "draws" and meta["n_samples"] == 2
    assert not default_resume_dir(out).exists()
    html = (tmp_path / "report" / "report.html").read_text()
    assert "G0" in html and "data:image/png;base64," in html and "n_samples" in html
    pngs = sorted((tmp_path / "report" / "gallery").glob("*.png"))
    assert [p.name for p in pngs] == ["000_G0.png", "001_G1.png"]
    assert (tmp_path / "report" / "overview.png").exists()
    assert not list(tmp_path.rglob("*.part"))


def test_interrupted_write_leaves_no_file_under_the_final_name(model_file, toy_hr, tmp_path,
                                                              monkeypatch):
    def broken(self, path, *a, **k):
        path.write_bytes(b"half a file")
        raise _Stop("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", broken)
    out = tmp_path / "res.h5ad"
    with pytest.raises(_Stop):
        predict(toy_hr, model_file, out, pool=True, n_samples=1, steps=1, progress=False)
    assert not out.exists() and not list(tmp_path.glob("*.part"))
    # finished tiles are kept for the rerun
    assert len(list(default_resume_dir(out).glob("batch_*.npz"))) > 0
    with pytest.raises(ValueError, match="must end in"):
        predict(toy_hr, model_file, tmp_path / "res.csv", pool=True, progress=False)


# ------------------------------------------------------------------ models from elsewhere
def test_model_genes_and_cell_size_are_checked(trained, toy_hr):
    lm = model_from_trainer(trained)
    lr = simulate_lr(toy_hr, F)
    with pytest.raises(SampleError, match=r"2 of the model's 4 genes not in the data"):
        super_resolve(lm, lr.select_genes(["G0", "G1"]), steps=1, progress=False)
    with pytest.raises(SampleError, match="LR cells are 8 µm"):
        super_resolve(lm, toy_hr, steps=1, progress=False)


def test_train_on_own_spots_then_apply_one_scale_finer(tmp_path):
    spots = make_sample(seed=4, size=10)  # the measured map: no HR truth
    path = train_model([spots], F, tmp_path / "own.pt", steps=2, batch_size=2, patch=10,
                       work_um_per_px=2.0, spots_only=True, model_config=tiny_config(),
                       progress=False)
    res = predict(spots, path, n_samples=1, steps=1, progress=False)
    assert res.mean.shape == (4, 50, 50) and res.cell_um == pytest.approx(8.0 / F)
    measured = spots.select_genes(res.genes).expr
    assert max_relative_error(res.mean, measured, res.mask, F) < 1e-5


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 3]), st.floats(0.0, 0.9))
def test_redistribution_is_exact_for_random_maps(seed, factor, sparsity):
    rng = np.random.default_rng(seed)
    h, w = 2 * factor, 3 * factor
    x = rng.gamma(0.5, 2.0, (3, h, w)) * (rng.random((3, h, w)) > sparsity)
    mask = rng.random((h, w)) > 0.3
    target = rng.poisson(5.0, (3, 2, 3)).astype(np.float64)
    out = redistribute_np(x, target, mask, factor)
    has_tissue = pool_sum(mask.astype(int), factor) > 0
    np.testing.assert_allclose(pool_sum(out, factor)[:, has_tissue], target[:, has_tissue],
                               rtol=1e-12, atol=1e-12)
    assert (out >= 0).all() and (out[:, ~mask] == 0).all()


# ------------------------------------------------------------------ depth matching
def test_model_records_its_training_depth_and_keeps_it_in_the_file(trained, model_file):
    from diffst.infer import load_model
    from diffst.train import training_depth

    samples = [make_sample(seed=0), make_sample(seed=1)]
    counts = sum(float(s.expr[:, s.mask].sum()) for s in samples)
    area = sum(float(s.mask.sum()) * s.cell_um ** 2 for s in samples)
    pooled = [simulate_lr(s, F) for s in samples]
    lr_area = sum(float(p.mask.sum()) * p.cell_um ** 2 for p in pooled)
    assert training_depth(samples) == pytest.approx(counts / area)
    assert training_depth(samples, F) == pytest.approx(counts / lr_area)
    assert lr_area > area  # edge LR cells count in full: pooled tissue reads shallower
    for record in (trained.pipeline().record, load_model(model_file).record):
        assert record["counts_per_um2"] == pytest.approx(counts / area)
        assert record["lr_counts_per_um2"] == pytest.approx(counts / lr_area)


def test_a_training_section_pooled_reads_as_deep_as_the_training_data(trained):
    from diffst.train import training_depth

    section = make_sample(seed=0)
    lm = model_from_trainer(trained)
    lm.record = {"counts_per_um2": training_depth([section]),
                 "lr_counts_per_um2": training_depth([section], F)}
    assert infer.depth_ratio(lm, simulate_lr(section, F)) == pytest.approx(1.0)
    # a model file with only the HR depth compares unlike with like, and says so
    lm.record = {"counts_per_um2": training_depth([section])}
    with pytest.warns(UserWarning, match="shallower than they are"):
        assert infer.depth_ratio(lm, simulate_lr(section, F)) > 1.05


def test_match_depth_feeds_a_shallow_slide_at_the_training_depth(trained, toy_hr, monkeypatch):
    lr = simulate_lr(toy_hr, F)
    shallow = dataclasses.replace(lr, expr=np.round(lr.expr * 0.1))
    seen = []
    real = infer.prepare_inference_sample

    def spy(sample, *args, **kwargs):
        seen.append(float(sample.expr[:, sample.mask].sum()))
        return real(sample, *args, **kwargs)

    monkeypatch.setattr(infer, "prepare_inference_sample", spy)
    kw = dict(steps=3, n_samples=2, patch=20, overlap=5, progress=False,
              hr_mask=padded_mask(toy_hr.mask, F))
    lm = model_from_trainer(trained)
    deep = super_resolve(lm, lr, match_depth=True, **kw)
    low = super_resolve(lm, shallow, match_depth=True, **kw)
    # both inputs reach the model at the training depth
    ref = lm.record["lr_counts_per_um2"] * float(lr.mask.sum()) * lr.cell_um ** 2
    assert seen == pytest.approx([ref, ref], rel=1e-5)
    assert low.meta["depth_ratio"] / deep.meta["depth_ratio"] == pytest.approx(
        lr.expr[:, lr.mask].sum() / shallow.expr[:, shallow.mask].sum(), rel=1e-6)
    # the maps are in the measured counts again: the mean sum-pools to the shallow input
    cells = _tissue_lr_cells(low.mask)
    pooled = pool_sum(low.mean.astype(np.float64), F)
    rel = np.abs(pooled - shallow.expr)[:, cells] / np.maximum(shallow.expr[:, cells], 1)
    assert rel.max() < 1e-4 and low.meta["consistency_max_rel_err"] < 1e-4
    assert (low.q05 <= low.q95 + 1e-6).all()


def test_match_depth_needs_a_model_that_records_its_depth(trained, toy_hr):
    lm = model_from_trainer(trained)
    lm.record = {k: v for k, v in lm.record.items() if "counts_per_um2" not in k}
    with pytest.raises(ValueError, match="training depth"):
        super_resolve(lm, simulate_lr(toy_hr, F), steps=2, patch=20, overlap=5,
                      progress=False, match_depth=True)


def _predict_and_calibration_settings(monkeypatch, model_file, toy_hr, **kwargs):
    """``predict``'s result and the sampler settings it hands to the calibration."""
    import diffst.api as api

    seen = {}

    def spy(lm, sample, result, calibration, calibrate_on, sr_kwargs):
        seen.update(sr_kwargs)
        return result

    monkeypatch.setattr(api, "calibrate_prediction", spy)
    result = predict(toy_hr, model_file, pool=True, n_samples=2, steps=2, progress=False,
                     calibration="none", **kwargs)
    return result, seen


def test_predict_calibrates_with_the_same_depth_matching(model_file, toy_hr, monkeypatch):
    _, seen = _predict_and_calibration_settings(monkeypatch, model_file, toy_hr,
                                                match_depth=True)
    assert seen["match_depth"] is True


# ------------------------------------------------------------------ mixing in the slide's own fit
def test_istar_mix_moves_every_map_toward_the_slides_own_fit(trained, toy_hr):
    lm = model_from_trainer(trained)
    lr = simulate_lr(toy_hr, F)
    kw = dict(steps=2, n_samples=3, patch=20, overlap=5, progress=False,
              hr_mask=padded_mask(toy_hr.mask, F))
    alone = super_resolve(lm, lr, **kw)
    half = super_resolve(lm, lr, istar_mix=0.5, **kw)
    full = super_resolve(lm, lr, istar_mix=1.0, **kw)
    base = istar_like_base(lr.select_genes(lm.genes), F, alone.mask)
    np.testing.assert_allclose(full.mean, base, rtol=1e-5, atol=1e-6)
    for key in ("mean", "q05", "q95"):
        np.testing.assert_allclose(getattr(half, key), 0.5 * getattr(alone, key) + 0.5 * base,
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(half.std, 0.5 * alone.std, rtol=1e-5, atol=1e-6)
    assert not np.allclose(half.mean, alone.mean)
    # both parts keep the measured counts, so the mix does too
    assert half.meta["consistency_max_rel_err"] < 1e-4 and half.meta["istar_mix"] == 0.5
    assert "istar_mix" not in alone.meta


def test_the_depth_mix_leans_on_the_slides_own_fit_as_the_slide_gets_shallower(trained, toy_hr):
    lm = model_from_trainer(trained)
    lr = simulate_lr(toy_hr, F)
    deep = dataclasses.replace(lr, expr=lr.expr * 3.0)
    shallow = dataclasses.replace(lr, expr=lr.expr * 0.1)
    weights = [infer.istar_mix_weight("depth", lm, s) for s in (deep, lr, shallow)]
    assert weights[0] == 0.0  # deeper than training: Diff-ST alone
    assert weights[2] == pytest.approx(1.0 - 1.0 / infer.depth_ratio(lm, shallow))
    assert 0.0 <= weights[1] < weights[2] < 1.0
    assert infer.istar_mix_weight(0.3, lm, shallow) == 0.3  # a number is used as given


@pytest.mark.parametrize("bad", [1.5, -0.1, "deep", "nan"])
def test_a_bad_istar_mix_is_refused_before_sampling(trained, toy_hr, bad):
    with pytest.raises(ValueError, match="istar_mix must be a number between 0 and 1 or 'depth'"):
        super_resolve(model_from_trainer(trained), simulate_lr(toy_hr, F), steps=2, patch=20,
                      overlap=5, progress=False, istar_mix=bad)


def test_predict_mixes_and_calibrates_with_the_same_istar_mix(model_file, toy_hr, monkeypatch):
    result, seen = _predict_and_calibration_settings(monkeypatch, model_file, toy_hr,
                                                     istar_mix=0.25)
    assert seen["istar_mix"] == 0.25 and result.meta["istar_mix"] == 0.25


def test_predict_cli_istar_mix_option(model_file, toy_hr, tmp_path):
    from click.testing import CliRunner

    from diffst.cli import main

    data = str(simulate_lr(toy_hr, F).save_npz(tmp_path / "lr.npz"))
    args = ["predict", data, "--model", str(model_file), "--samples", "2", "--steps", "2",
            "--calibration", "none", "--no-resume"]
    runner = CliRunner()
    for name, mix in (("plain", "0"), ("mixed", "1")):
        done = runner.invoke(main, [*args, "--out", str(tmp_path / f"{name}.npz"),
                                    "--istar-mix", mix])
        assert done.exit_code == 0, done.output
    plain, mixed = (np.load(tmp_path / f"{n}.npz") for n in ("plain", "mixed"))
    assert not np.allclose(plain["expr"], mixed["expr"])
    done = runner.invoke(main, [*args, "--out", str(tmp_path / "bad.npz"), "--istar-mix", "2"])
    assert done.exit_code != 0 and "--istar-mix" in done.output
    assert not (tmp_path / "bad.npz").exists()

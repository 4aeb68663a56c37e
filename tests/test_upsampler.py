"""The base map a Diff-ST model refines (DiffSTConfig.upsampler, diffst.model.upsampler)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_sample, tiny_config

import diffst.model.upsampler as upsampler_module
from diffst.data.lr import hr_mask_from_lr, pool_sum, simulate_lr, upsample_bicubic
from diffst.data.normalize import GeneScaler
from diffst.data.patches import prepare_training_sample
from diffst.infer import super_resolve
from diffst.model.config import DiffSTConfig, parse_model_setting
from diffst.model.upsampler import istar_like_base, upsampler_for
from diffst.pipeline import DiffSTPipeline
from diffst.train import TrainConfig, Trainer


def test_an_unknown_upsampler_is_refused_with_its_name():
    with pytest.raises(ValueError, match="upsampler must be one of .*'nearest'"):
        DiffSTConfig(upsampler="nearest")
    with pytest.raises(ValueError, match="upsampler must be one of"):
        upsampler_for("nearest")
    assert parse_model_setting("upsampler=istar_like") == ("upsampler", "istar_like")


def test_the_istar_like_base_keeps_every_lr_count_and_stays_on_tissue():
    lr = simulate_lr(make_sample(seed=2, size=30), 5)
    mask = hr_mask_from_lr(lr.mask, 5)
    base = istar_like_base(lr, 5, mask)
    assert base.shape == (lr.n_genes, 30, 30) and base.dtype == np.float32
    assert np.all(base >= 0) and not base[:, ~mask].any()
    np.testing.assert_allclose(pool_sum(base, 5)[:, lr.mask], lr.expr[:, lr.mask], rtol=1e-4)
    spread = base[:, mask].std(axis=1)
    assert np.all(spread > 0)  # a map from the image, not each spot's count spread evenly


def test_training_sections_get_the_base_map_of_their_own_pooled_map():
    sample = make_sample(seed=3, size=30)
    scaler = GeneScaler.fit([sample.expr], [sample.mask])
    seen = []

    def spy(lr, factor, hr_mask):
        seen.append(lr)
        return istar_like_base(lr, factor, hr_mask)

    prep = prepare_training_sample(sample, 5, scaler, k=4, upsampler=spy)
    (lr,) = seen
    np.testing.assert_array_equal(lr.expr, simulate_lr(sample, 5).expr)  # never the HR truth
    np.testing.assert_allclose(prep.lr_up, scaler.transform(istar_like_base(lr, 5, prep.mask)))
    bicubic = prepare_training_sample(sample, 5, scaler, k=4)
    np.testing.assert_allclose(bicubic.lr_up, upsample_bicubic(bicubic.lr, 5))
    assert not np.allclose(prep.lr_up, bicubic.lr_up)


def test_a_model_trained_on_the_istar_like_base_keeps_it_when_saved_and_predicting(
        tmp_path, monkeypatch):
    calls = []

    def counted(lr, factor, hr_mask):
        calls.append(lr.name)
        return istar_like_base(lr, factor, hr_mask)

    monkeypatch.setattr(upsampler_module, "istar_like_base", counted)
    samples = [make_sample(seed=0), make_sample(seed=1)]
    tc = TrainConfig(steps=2, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0,
                     checkpoint_every=2)
    trainer = Trainer(samples, samples[0].genes, 5, tiny_config(upsampler="istar_like"), tc)
    assert len(calls) == 2  # one base map per training section
    trainer.fit(progress=False)
    path = trainer.pipeline().save(tmp_path / "model.pt")
    loaded = DiffSTPipeline.load(path, device="cpu")
    assert loaded.model.config.upsampler == "istar_like"
    lr = simulate_lr(make_sample(seed=4), 5)
    result = super_resolve(loaded, lr, n_samples=1, steps=2, progress=False)
    assert calls[-1] == lr.name and len(calls) == 3
    assert np.isfinite(result.mean).all()


def test_the_same_slide_is_fitted_once_and_a_changed_slide_again(monkeypatch):
    fits = []
    real = upsampler_module.istar_like

    def counting(*args, **kwargs):
        fits.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(upsampler_module, "istar_like", counting)
    monkeypatch.setattr(upsampler_module, "_cache", type(upsampler_module._cache)())
    lr = simulate_lr(make_sample(seed=4, size=30), 5)
    mask = hr_mask_from_lr(lr.mask, 5)
    first = istar_like_base(lr, 5, mask)
    first[:] = -1  # a caller changing its copy changes nothing stored
    again = istar_like_base(lr, 5, mask)
    assert len(fits) == 1 and again.min() >= 0
    lr.expr[0, lr.mask] += 1  # other counts: another map
    changed = istar_like_base(lr, 5, mask)
    assert len(fits) == 2 and not np.allclose(changed, again)
    for seed in range(upsampler_module.CACHED_MAPS + 1):  # the cache stays bounded
        other = simulate_lr(make_sample(seed=10 + seed, size=20), 5)
        istar_like_base(other, 5, hr_mask_from_lr(other.mask, 5))
    assert len(upsampler_module._cache) == upsampler_module.CACHED_MAPS

"""DiffSTPipeline: the one model-file format (versions, errors), training -> pipeline ->
inference, the frozen configs, and inference importing nothing from training."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_sample, tiny_config

from diffst.data.lr import simulate_lr
from diffst.infer import load_model, super_resolve
from diffst.model.config import DiffSTConfig, SchedulerConfig, split_legacy_config
from diffst.pipeline import (
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    DiffSTPipeline,
    ModelFileError,
    read_model_file,
)
from diffst.train import TrainConfig, Trainer

V1_MODEL = Path(__file__).parent / "data" / "model_v1.pt"
"""A model file written by diffst 0.1 (format diffst.model/1, prediction "v"): 3 genes, factor 5,
2 training steps on ``make_sample(seed=0, size=20, genes=3)``."""


@pytest.fixture(scope="module")
def trainer() -> Trainer:
    torch.set_num_threads(1)
    samples = [make_sample(seed=0), make_sample(seed=1)]
    tc = TrainConfig(steps=2, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0)
    trainer = Trainer(samples, samples[0].genes, 5, tiny_config(), tc,
                      scheduler_config=SchedulerConfig(prediction="epsilon"))
    trainer.fit(progress=False)
    return trainer


def test_inference_imports_nothing_from_training():
    code = ("import sys, diffst.infer, diffst.pipeline, diffst.calibration; "
            "bad = [m for m in sys.modules if m in ('diffst.train', 'diffst.distributed')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_save_load_round_trip_and_call(trainer, tmp_path):
    pipe = trainer.pipeline()
    path = pipe.save(tmp_path / "m.pt")
    state = read_model_file(path)
    assert state["format"] == MODEL_FORMAT == f"diffst.model/{MODEL_FORMAT_VERSION}"
    assert "prediction" not in state["model_config"]  # architecture only since version 2
    loaded = DiffSTPipeline.load(path, device="cpu")
    assert loaded.genes == trainer.genes and loaded.factor == 5 and loaded.patch == 10
    assert loaded.scheduler == trainer.scheduler_config
    assert loaded.scheduler.prediction == "epsilon"
    assert loaded.config == trainer.model_config
    assert loaded.record == {"trained_steps": 2, "batch_size": 2,
                             "counts_per_um2": pytest.approx(trainer.counts_per_um2),
                             "lr_counts_per_um2": pytest.approx(trainer.lr_counts_per_um2)}
    for a, b in zip(loaded.model.state_dict().values(), trainer.ema.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b)
    assert loaded.fingerprint() == pipe.fingerprint()
    lr = simulate_lr(make_sample(seed=3, size=20), 5)
    kw = dict(steps=2, n_samples=2, progress=False)
    direct = super_resolve(load_model(path, "cpu"), lr, **kw)
    called = loaded(lr, **kw)
    np.testing.assert_array_equal(direct.std, called.std)
    np.testing.assert_array_equal(direct.mean, loaded.super_resolve(lr, **kw).mean)


def test_version_1_model_files_still_load_and_predict():
    pipe = DiffSTPipeline.load(V1_MODEL, device="cpu")
    assert pipe.scheduler.prediction == "v"
    assert pipe.scheduler.residual_scale == pytest.approx(0.41128331422805786)
    assert pipe.genes == ["G0", "G1", "G2"] and pipe.factor == 5 and pipe.config.channels == 4
    assert pipe.record == {"trained_steps": 2, "batch_size": 2}
    res = pipe(simulate_lr(make_sample(seed=5, size=20, genes=3), 5), steps=2, n_samples=2,
               progress=False)
    # reference values: the same call with diffst 0.1 (before the format changed)
    assert float(res.std.astype(np.float64).sum()) == pytest.approx(968.914628219849, rel=1e-4)
    assert float(res.mean.astype(np.float64).sum()) == pytest.approx(3532.0, rel=1e-6)


def test_unknown_newer_and_incomplete_model_files_are_named(trainer, tmp_path):
    good = read_model_file(trainer.export_model(tmp_path / "m.pt"))
    torch.save({**good, "format": f"diffst.model/{MODEL_FORMAT_VERSION + 1}"}, tmp_path / "n.pt")
    with pytest.raises(ModelFileError, match=r"n\.pt: model format version \d+ is newer"):
        DiffSTPipeline.load(tmp_path / "n.pt")
    torch.save({**good, "format": "diffst.model/zero"}, tmp_path / "u.pt")
    with pytest.raises(ModelFileError, match="unknown model format"):
        DiffSTPipeline.load(tmp_path / "u.pt")
    torch.save({**good, "format": "diffst.checkpoint/1"}, tmp_path / "c.pt")
    with pytest.raises(ModelFileError, match="expected a diffst.model/2 file"):
        DiffSTPipeline.load(tmp_path / "c.pt")
    incomplete = {k: v for k, v in good.items() if k != "scheduler"}
    torch.save(incomplete, tmp_path / "i.pt")
    with pytest.raises(ModelFileError, match=r"lacks \['scheduler'\]"):
        DiffSTPipeline.load(tmp_path / "i.pt")
    torch.save({**incomplete, "format": "diffst.model/1"}, tmp_path / "v1.pt")
    assert DiffSTPipeline.load(tmp_path / "v1.pt").scheduler.residual_scale == 0.5
    torch.save({**good, "scaler": {"lo": [0.0]}}, tmp_path / "d.pt")
    with pytest.raises(ModelFileError, match="damaged or inconsistent"):
        DiffSTPipeline.load(tmp_path / "d.pt")


def test_pipeline_validates_its_geometry(trainer):
    pipe = trainer.pipeline()
    with pytest.raises(ValueError, match="multiple of the factor"):
        dataclasses.replace(pipe, patch=12)
    with pytest.raises(ValueError, match="genes"):
        dataclasses.replace(pipe, genes=["G0"])
    with pytest.raises(TypeError):
        DiffSTPipeline(pipe.model, pipe.scheduler, pipe.scaler)  # named fields only


def test_configs_are_frozen_and_validated():
    cfg = DiffSTConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.channels = 3
    for bad in (dict(channels=0), dict(factor=1.5), dict(channel_mults=()),
                dict(attn_dim=10, attn_heads=4), dict(n_tiles=True)):
        with pytest.raises(ValueError, match="model config"):
            DiffSTConfig(**bad)
    assert DiffSTConfig(channel_mults=[1, 2]).channel_mults == (1, 2)
    for bad in (dict(prediction="noise"), dict(schedule="cosine"), dict(num_train_timesteps=1),
                dict(beta_start=0.1, beta_end=0.01), dict(residual_scale=0.0)):
        with pytest.raises(ValueError):
            SchedulerConfig(**bad)
    with pytest.raises(ValueError, match="unknown model config keys"):
        DiffSTConfig.from_dict({"prediction": "v"})


def test_legacy_config_dict_splits_into_its_parts():
    legacy = {**DiffSTConfig(channels=8).to_dict(), "prediction": "v", "beta_end": 0.03,
              "residual_scale": 0.7, "disentangle_weight": 0.2, "num_train_timesteps": 500,
              "beta_start": 1e-4}
    arch, sched, train = split_legacy_config(legacy)
    assert DiffSTConfig.from_dict(arch) == DiffSTConfig(channels=8)
    assert SchedulerConfig.from_dict(sched) == SchedulerConfig(
        prediction="v", num_train_timesteps=500, beta_end=0.03, residual_scale=0.7)
    assert train == {"disentangle_weight": 0.2}


def test_trainer_sets_data_values_without_touching_the_given_configs():
    samples = [make_sample(seed=0)]
    given, sched = tiny_config(), SchedulerConfig()
    trainer = Trainer(samples, samples[0].genes[:3], 3, given, TrainConfig(work_um_per_px=2.0),
                      scheduler_config=sched)
    assert given == tiny_config() and sched == SchedulerConfig()
    assert (trainer.model_config.n_genes, trainer.model_config.factor) == (3, 3)
    assert trainer.scheduler_config.residual_scale != sched.residual_scale
    assert trainer.tc.patch == 24  # default patch: 8 x factor (40 was invalid for factor 3)
    assert trainer.pipeline().patch == 24


def test_api_predict_takes_a_pipeline(trainer):
    from diffst.api import predict

    lr = simulate_lr(make_sample(seed=3, size=20), 5)
    result = predict(lr, trainer.pipeline(), n_samples=1, steps=1, resume=False,
                     progress=False, calibration="none", device="cpu")
    assert result.mean.shape == (4, 20, 20)

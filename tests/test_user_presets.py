"""Benchmark presets for a user's own data (`diffst train --preset`, ``ds.tl.train(preset=)``),
and the sampling settings the model file keeps for `diffst predict` and ``ds.tl.super_resolve``."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_sample

import diffst.api as api
import diffst.tl as tl
from diffst.benchmark.presets import get_preset, predict_settings
from diffst.cli import describe_predict_settings, main
from diffst.config import DEPTH_MIX
from diffst.io import sample_to_anndata
from diffst.pipeline import DiffSTPipeline


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def toy_npz(tmp_path) -> Path:
    return make_sample(seed=0).save_npz(tmp_path / "toy.npz")


@pytest.fixture
def train_calls(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def record(samples, factor, out, **kwargs):
        calls.append(dict(kwargs, factor=factor))
        return out

    monkeypatch.setattr(api, "train_model", record)
    return calls


def test_cells_preset_sets_training_and_keeps_its_sampling(toy_npz, tmp_path, train_calls):
    result = run("train", toy_npz, "--factor", "5", "--preset", "short", "--out",
                 tmp_path / "m.pt")
    assert result.exit_code == 0, result.output
    kw = train_calls[0]
    assert (kw["steps"], kw["lr"], kw["ema_decay"]) == (200, 1e-3, 0.995)
    assert kw["batch_size"] == 16  # batches of 16 at x5, whatever the data size
    assert "200 steps of batch 16 at" in result.output
    assert kw["patch"] == 20  # 160 µm of 8 µm cells: the toy section is small
    assert "patch 20 cells (the training tissue (810 cells of 8 µm) covers less than 4 " \
           "patches of 320 µm)" in result.output
    assert kw["grid_shifts"] == 2  # the cells presets' shifted pooling grids
    assert kw["model_config"].graph_edges == "paper"  # the paper's gene graph at x5
    expected = predict_settings(get_preset("short", "cells").at(5))
    assert kw["predict_settings"] == expected
    assert expected["istar_mix"] == 0.25 and expected["sampler"] == "mean" and expected["turns"]
    assert "preset short (cells data, x5): 200 steps" in result.output
    assert "graph_edges=paper" in result.output
    assert "--sampler mean --samples 8" in result.output and "--istar-mix 0.25" in result.output


def test_cells_preset_pools_more_grids_at_x10(toy_npz, tmp_path, train_calls):
    result = run("train", toy_npz, "--factor", "10", "--preset", "short", "--out",
                 tmp_path / "m.pt")
    assert result.exit_code == 0, result.output
    kw = train_calls[0]
    assert kw["grid_shifts"] == 5  # 5 x 5 grids at x10 (Xenium + simulated validation)
    assert kw["predict_settings"]["istar_mix"] == 0.0  # x10 does not mix
    assert kw["model_config"].graph_edges == "cosine"  # nor take the paper's graph


def test_cells_preset_focuses_on_the_last_noise_step_for_large_data_at_x10(tmp_path,
                                                                           train_calls):
    paths = [make_sample(seed=s, size=60).save_npz(tmp_path / f"s{s}.npz") for s in (0, 1)]
    result = run("train", *paths, "--factor", "10", "--preset", "short", "--out",
                 tmp_path / "m.pt")
    assert result.exit_code == 0, result.output
    assert train_calls[0]["t_focus"] == 0.5 and train_calls[0]["patch"] == 40
    assert "batch 16 (the training tissue (6840 cells of 8 µm) covers at least 4 patches of " \
           "320 µm)" in result.output  # batches of 16 for large data at x10 too
    assert "50% of examples at the last noise step (the same data-size rule)" in result.output
    result = run("train", paths[0], "--factor", "10", "--preset", "short", "--out",
                 tmp_path / "m.pt")
    assert train_calls[1]["t_focus"] == 0.0 and "noise step" not in result.output


def test_default_cells_preset_trains_longer_on_large_data_and_says_why(tmp_path, train_calls):
    paths = [make_sample(seed=s, size=60).save_npz(tmp_path / f"s{s}.npz") for s in (0, 1)]
    result = run("train", *paths, "--factor", "5", "--preset", "default", "--out",
                 tmp_path / "m.pt")
    assert result.exit_code == 0, result.output
    assert train_calls[0]["steps"] == 1000
    assert "1000 steps (the training tissue (6840 cells of 8 µm) covers at least 4 patches of " \
           "320 µm) of batch 16" in result.output
    result = run("train", *paths, "--factor", "5", "--preset", "default", "--steps", "7",
                 "--out", tmp_path / "m.pt")
    assert train_calls[1]["steps"] == 7 and "7 steps of batch 16" in result.output
    result = run("train", paths[0], "--factor", "5", "--preset", "default", "--out",
                 tmp_path / "m.pt")  # small data at x5: 500 steps, batches of 16 as for any
    assert train_calls[2]["steps"] == 500 and train_calls[2]["batch_size"] == 16
    assert "500 steps of batch 16 at" in result.output
    result = run("train", paths[0], "--factor", "5", "--preset", "default", "--batch-size", "8",
                 "--out", tmp_path / "m.pt")  # a batch given holds
    assert train_calls[3]["batch_size"] == 8 and "500 steps of batch 8 at" in result.output
    result = run("train", paths[0], "--factor", "10", "--preset", "default", "--out",
                 tmp_path / "m.pt")  # x10 trains 1000 steps whatever the data size: no note
    assert train_calls[4]["steps"] == 1000 and "1000 steps of batch 8" in result.output
    result = run("train", *paths, "--factor", "10", "--preset", "default", "--out",
                 tmp_path / "m.pt")  # large data at x10: batches of 16, and says why
    assert train_calls[5]["batch_size"] == 16, result.output
    assert "1000 steps of batch 16 (the training tissue (6840 cells of 8 µm) covers at least 4 " \
           "patches of 320 µm) at" in result.output  # the reason once, in full
    assert "50% of examples at the last noise step (the same data-size rule)" in result.output


def test_spots_preset_keeps_its_ema_warm_up_for_the_user(toy_npz, tmp_path, train_calls):
    result = run("train", toy_npz, "--factor", "3", "--preset", "short", "--spots-only",
                 "--out", tmp_path / "m.pt")
    assert result.exit_code == 0, result.output
    assert train_calls[0]["ema_warmup"] == 30.0 and "EMA warm-up 30" in result.output


def test_flags_given_override_the_preset(toy_npz, tmp_path, train_calls):
    result = run("train", toy_npz, "--factor", "5", "--preset", "short", "--steps", "7",
                 "--lr", "0.01", "--out", tmp_path / "m.pt")
    assert result.exit_code == 0, result.output
    kw = train_calls[0]
    assert (kw["steps"], kw["lr"], kw["batch_size"]) == (7, 0.01, 16)  # x5, small data


def test_spots_preset_follows_the_factor(toy_npz, tmp_path, train_calls):
    for factor in (2, 3):
        result = run("train", toy_npz, "--factor", factor, "--spots-only", "--preset", "short",
                     "--out", tmp_path / f"m{factor}.pt")
        assert result.exit_code == 0, result.output
    x2, x3 = train_calls
    assert (x2["grid_shifts"], x3["grid_shifts"]) == (1, 2)  # HER2ST validation: x3 only
    assert x2["work_um_per_px"] == 4.0 and x2["model_config"].upsampler == "bicubic"
    assert (x2["predict_settings"]["self_tune"], x2["predict_settings"]["istar_mix"]) == (30, 0.5)
    assert x3["model_config"].upsampler == "istar_like"
    assert (x2["model_config"].graph_edges, x3["model_config"].graph_edges) == ("cosine", "paper")
    assert (x3["predict_settings"]["self_tune"], x3["predict_settings"]["istar_mix"]) == (
        0, DEPTH_MIX)


def test_without_preset_nothing_is_kept(toy_npz, tmp_path, train_calls):
    assert run("train", toy_npz, "--factor", "5", "--out", tmp_path / "m.pt").exit_code == 0
    assert "predict_settings" not in train_calls[0] and "ema_decay" not in train_calls[0]


def test_model_file_keeps_the_settings_and_predict_uses_them(toy_npz, tmp_path, monkeypatch):
    model = tmp_path / "m.pt"
    result = run("train", toy_npz, "--factor", "5", "--preset", "quick", "--out", model)
    assert result.exit_code == 0, result.output
    kept = DiffSTPipeline.load(model).record["predict_settings"]
    assert kept == predict_settings(get_preset("quick", "cells").at(5))
    assert api.recorded_predict_settings(model) == kept
    seen: list[dict] = []

    def record(sample, model, out, **kwargs):
        seen.append(kwargs)
        raise SystemExit(0)  # stop before sampling: only the settings are checked

    monkeypatch.setattr(api, "predict", record)
    run("predict", toy_npz, "--pool", "--model", model, "--out", tmp_path / "a.npz")
    assert {k: seen[0][k] for k in kept} == kept
    run("predict", toy_npz, "--pool", "--model", model, "--out", tmp_path / "b.npz",
        "--samples", "3", "--no-turns", "--sampler", "ddim")
    assert (seen[1]["n_samples"], seen[1]["turns"], seen[1]["sampler"]) == (3, False, "ddim")
    assert seen[1]["istar_mix"] == kept["istar_mix"]


def test_train_model_refuses_unknown_sampling_settings(toy_npz, tmp_path):
    with pytest.raises(ValueError, match="unknown predict settings"):
        api.train_model([make_sample()], 5, tmp_path / "m.pt", steps=1,
                        predict_settings={"samplr": "mean"})


def test_settings_read_as_predict_flags():
    text = describe_predict_settings({"sampler": "mean", "n_samples": 8, "turns": True,
                                      "istar_mix": DEPTH_MIX, "match_depth": False,
                                      "self_tune_lr": 3e-5})
    assert text == ("--sampler mean --samples 8 --turns --istar-mix depth --no-match-depth "
                    "--self-tune-lr 3e-05")


def test_scanpy_style_tools_train_with_a_preset_and_sample_with_its_settings(tmp_path):
    import diffst as ds

    adata = sample_to_anndata(make_sample())
    model = tl.train(adata, 5, tmp_path / "m.pt", preset="quick", steps=2, progress=False)
    kept = api.recorded_predict_settings(model)
    assert kept == predict_settings(get_preset("quick", "cells").at(5))
    assert DiffSTPipeline.load(model).record["trained_steps"] == 2  # the keyword given wins
    sr = tl.super_resolve(ds.pp.pool(adata, factor=5), model, n_samples=2, steps=3,
                          progress=False)
    record = sr.uns["diffst_sr"]
    assert (record["sampler"], record["turns"]) == (kept["sampler"], kept["turns"])
    assert (record["n_samples"], record["steps"]) == (2, 3)


def test_scanpy_style_super_resolve_passes_the_kept_settings(tmp_path, monkeypatch):
    adata = sample_to_anndata(make_sample())
    model = tl.train(adata, 5, tmp_path / "m.pt", preset="quick", steps=1, progress=False)
    seen: list[dict] = []

    def record(sample, model, **kwargs):
        seen.append(kwargs)
        raise SystemExit(0)  # stop before sampling: only the settings are checked

    monkeypatch.setattr(tl, "predict", record)
    with pytest.raises(SystemExit):
        tl.super_resolve(adata, model, n_samples=3, steps=4, progress=False)
    kept = api.recorded_predict_settings(model)
    assert (seen[0]["sampler"], seen[0]["turns"]) == (kept["sampler"], kept["turns"])
    assert (seen[0]["n_samples"], seen[0]["steps"]) == (3, 4)


def test_more_grids_than_the_factor_are_refused_before_reading(toy_npz, tmp_path, train_calls):
    result = run("train", toy_npz, "--factor", "2", "--grid-shifts", "3", "--out",
                 tmp_path / "m.pt")
    assert result.exit_code == 2 and "more than --factor 2" in result.output
    assert not train_calls


def test_train_model_passes_the_noise_step_focus_and_ema_warm_up_to_training(tmp_path):
    from diffst.train import Trainer

    class Planned(Exception):
        pass

    seen = []

    class Recorder(Trainer):
        def __init__(self, samples, genes, factor, cfg, tc, **kwargs):
            seen.append(tc)
            raise Planned

    with pytest.raises(Planned):
        api.train_model([make_sample()], 5, tmp_path / "m.pt", steps=1, t_focus=0.3,
                        ema_warmup=20.0, trainer_cls=Recorder, progress=False)
    assert (seen[0].t_focus, seen[0].ema_warmup) == (0.3, 20.0)

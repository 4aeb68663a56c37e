"""Self-supervised fine-tuning on the input slide (diffst.selftune)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_sample, tiny_config

from diffst.data.lr import simulate_lr
from diffst.data.sample import SampleError
from diffst.infer import super_resolve
from diffst.selftune import self_tune
from diffst.train import TrainConfig, Trainer


def _pipeline():
    samples = [make_sample(seed=0), make_sample(seed=1)]
    tc = TrainConfig(steps=3, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0,
                     checkpoint_every=3)
    trainer = Trainer(samples, samples[0].genes, 5, tiny_config(), tc)
    trainer.fit(progress=False)
    return trainer.pipeline()


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_a_trainer_started_from_a_pipeline_starts_from_its_weights_and_scaling():
    pipe = _pipeline()
    slide = simulate_lr(make_sample(seed=4, size=50), 5)
    tc = TrainConfig(steps=1, batch_size=2, patch=10, work_um_per_px=2.0)
    trainer = Trainer([slide], pipe.genes, 5, train_config=tc, spots_only=True, start=pipe)
    start = pipe.model.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in trainer.model.state_dict().items())
    assert trainer.scaler is pipe.scaler
    assert trainer.scheduler_config == pipe.scheduler
    assert trainer.k == 5 * pipe.k  # the slide's 40 µm cells at the same image resolution


def test_self_tune_changes_a_copy_and_keeps_the_geometry():
    pipe = _pipeline()
    before = _weights(pipe.model)
    slide = simulate_lr(make_sample(seed=4, size=50), 5)
    tuned = self_tune(pipe, slide, steps=3, lr=1e-2, batch_size=2)
    assert all(torch.equal(v, before[k]) for k, v in pipe.model.state_dict().items())
    changed = [k for k, v in tuned.model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed
    assert (tuned.cell_um, tuned.k, tuned.patch, tuned.factor) == (
        pipe.cell_um, pipe.k, pipe.patch, pipe.factor)
    assert tuned.record["self_tune_steps"] == 3 and "self_tune_steps" not in pipe.record
    assert not tuned.model.training
    res = super_resolve(tuned, slide, steps=2, n_samples=1, progress=False)
    assert res.mean.shape == (4, 50, 50)
    assert self_tune(pipe, slide, steps=0) is pipe


def test_self_tune_names_the_slide_without_the_models_genes():
    pipe = _pipeline()
    slide = simulate_lr(make_sample(seed=4, size=50), 5).select_genes(["G0", "G1"])
    with pytest.raises(SampleError, match="toy4.*genes not in the data"):
        self_tune(pipe, slide, steps=2)
    with pytest.raises(ValueError, match=">= 0"):
        self_tune(pipe, slide, steps=-1)
    with pytest.raises(SampleError, match="toy4.*LR cells are 8 µm"):  # checked before tuning
        self_tune(pipe, make_sample(seed=4, size=50), steps=2)


def test_self_tune_names_a_slide_too_small_for_its_patches():
    pipe = _pipeline()
    slide = simulate_lr(make_sample(seed=4, size=50), 5)
    slide.mask[:] = False
    slide.mask[0, 0] = True
    with pytest.raises(SampleError, match="toy4.*cannot be used for self-tuning.*tissue"):
        self_tune(pipe, slide, steps=2)


def test_predict_self_tunes_a_copy_and_says_so():
    from diffst.api import predict

    pipe = _pipeline()
    before = _weights(pipe.model)
    slide = simulate_lr(make_sample(seed=4, size=50), 5)
    lines: list[str] = []
    kw = dict(n_samples=1, steps=2, calibration="none", progress=False, resume=False)
    plain = predict(slide, pipe, log=lines.append, **kw)
    tuned = predict(slide, pipe, self_tune=3, self_tune_lr=1e-2, log=lines.append, **kw)
    assert any(line.startswith("self-tuned on this slide: 3 steps") for line in lines)
    assert all(torch.equal(v, before[k]) for k, v in pipe.model.state_dict().items())
    assert tuned.mean.shape == plain.mean.shape
    assert not torch.allclose(torch.from_numpy(tuned.mean), torch.from_numpy(plain.mean))


def test_self_tune_with_match_depth_tunes_on_the_training_depth():
    import dataclasses

    pipe = _pipeline()
    slide = simulate_lr(make_sample(seed=4, size=50), 5)
    half = dataclasses.replace(slide, expr=slide.expr * 0.5)
    quarter = dataclasses.replace(slide, expr=slide.expr * 0.25)
    kw = dict(steps=2, lr=1e-2, batch_size=2, match_depth=True)
    a = self_tune(pipe, half, **kw).model.state_dict()
    b = self_tune(pipe, quarter, **kw).model.state_dict()
    assert all(torch.allclose(v, b[k], atol=1e-5) for k, v in a.items())
    c = self_tune(pipe, quarter, steps=2, lr=1e-2, batch_size=2).model.state_dict()
    assert not all(torch.allclose(v, b[k], atol=1e-5) for k, v in c.items())


def test_predict_cli_self_tune_option(tmp_path):
    from click.testing import CliRunner

    from diffst.api import train_model
    from diffst.cli import main

    spots = make_sample(seed=4, size=20)
    model = train_model([spots], 5, tmp_path / "own.pt", steps=2, batch_size=2, patch=10,
                        work_um_per_px=2.0, spots_only=True, model_config=tiny_config(),
                        progress=False)
    data = str(spots.save_npz(tmp_path / "s.npz"))
    args = ["predict", data, "--model", str(model), "--samples", "2", "--steps", "2",
            "--calibration", "none"]
    runner = CliRunner()
    done = runner.invoke(main, [*args, "--out", str(tmp_path / "t.npz"), "--self-tune", "2"])
    assert done.exit_code == 0, done.output
    assert "self-tuned on this slide: 2 steps at lr 3e-05" in done.output
    done = runner.invoke(main, [*args, "--out", str(tmp_path / "u.npz"), "--self-tune", "-1"])
    assert done.exit_code != 0 and "--self-tune" in done.output

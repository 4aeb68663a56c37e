"""The first hour of a new user: threads, the training plan, spot detection, interrupts, help."""

from __future__ import annotations

import click
import pytest
import torch
from click.testing import CliRunner
from conftest import make_sample, tiny_config

import diffst.infer as infer
from diffst import threads as th
from diffst.api import (
    TrainingInterrupted,
    default_checkpoint,
    spot_data_message,
    train_model,
    training_summary,
)
from diffst.cli import main
from diffst.data.lr import padded_mask, simulate_lr
from diffst.infer import model_from_trainer, super_resolve
from diffst.tilestore import SamplingInterrupted
from diffst.train import TrainConfig, Trainer

F = 5


def _verb_args(name: str, existing: str) -> list[str]:
    """Minimal arguments that let each verb's options parse (nothing is run)."""
    return {
        "simulate": ["x.npz"],
        "inspect": [existing],
        "train": [existing, "--factor", "2", "--out", "m.pt"],
        "predict": [existing, "--model", existing, "--out", "o.npz"],
        "evaluate": ["--truth", existing, "--pred", existing],
    }.get(name, [])


# ------------------------------------------------------------------ threads
@pytest.mark.parametrize("verb", sorted(main.commands))
def test_every_verb_takes_threads(verb, tmp_path):
    existing = tmp_path / "some.npz"
    existing.write_bytes(b"")
    cmd = main.commands[verb]
    assert "--threads" in [o for p in cmd.params for o in p.opts]
    torch.set_num_threads(3)
    cmd.make_context(verb, [*_verb_args(verb, str(existing)), "--threads", "2"])
    assert torch.get_num_threads() == 2


def test_group_level_threads_and_the_environment_variable(monkeypatch):
    torch.set_num_threads(3)
    main.make_context("diffst", ["--threads", "2", "demo"])
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("DIFFST_THREADS", "3")
    main.make_context("diffst", ["demo"])
    assert torch.get_num_threads() == 3
    main.make_context("diffst", ["--threads", "1", "demo"])  # the option beats the variable
    assert torch.get_num_threads() == 1
    assert th.resolve_threads() == (3, "DIFFST_THREADS")
    assert th.resolve_threads(2) == (2, "option")


def test_bad_thread_settings_are_refused(monkeypatch):
    monkeypatch.setenv("DIFFST_THREADS", "many")
    with pytest.raises(ValueError, match="DIFFST_THREADS='many'"):
        th.resolve_threads()
    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 2 and "DIFFST_THREADS" in result.output
    monkeypatch.delenv("DIFFST_THREADS")
    result = CliRunner().invoke(main, ["simulate", "x.npz", "--threads", "0"])
    assert result.exit_code == 2 and "--threads" in result.output


def test_default_threads_leave_a_core_free(monkeypatch):
    monkeypatch.delenv("DIFFST_THREADS", raising=False)
    assert [th.default_threads(n) for n in (1, 2, 4, 64)] == [1, 1, 3, 8]
    assert th.resolve_threads() == (th.default_threads(), "default")


def test_python_api_applies_the_default_once_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("DIFFST_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(th, "usable_cores", lambda: 3)
    calls = []
    monkeypatch.setattr(th, "apply_threads", lambda n=None: calls.append(n) or 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # as PyTorch starts: all cores
    monkeypatch.setattr(th, "_applied_once", False)
    assert th.use_default_threads() == 2 and calls == [None]
    assert th.use_default_threads() is None and calls == [None]  # once per process
    monkeypatch.setattr(th, "_applied_once", False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # torch.set_num_threads(1) by hand
    assert th.use_default_threads() is None and calls == [None]
    monkeypatch.setattr(th, "_applied_once", False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice
    assert th.use_default_threads() is None
    monkeypatch.setattr(th, "_applied_once", False)
    monkeypatch.setenv("DIFFST_THREADS", "1")  # diffst's own variable always applies
    assert th.use_default_threads() == 2 and calls == [None, None]


# ------------------------------------------------------------------ spot data
def _spots(cell_um: float, size: int = 30):
    s = make_sample(seed=5, size=size, k=4)
    s.cell_um = cell_um
    s.image_um_per_px = cell_um / 4
    return s


def test_spot_data_is_recognised():
    assert spot_data_message([make_sample()], 5) is None
    msg = spot_data_message([_spots(200.0)], 2)
    assert "200 µm" in msg and "--spots-only" in msg and "--hr-truth" in msg
    assert "100 µm" in msg  # what the model will produce
    assert "2 or 3" in spot_data_message([_spots(200.0)], 5)


def test_train_switches_to_spots_only_on_spot_data(tmp_path, monkeypatch):
    data = _spots(100.0).save_npz(tmp_path / "spots.npz")
    import diffst.api as api

    seen = {}
    real = api.train_model

    def tiny(*args, **kw):
        seen.update(kw)
        kw.update(model_config=tiny_config(factor=2), progress=False)
        return real(*args, **kw)

    monkeypatch.setattr(api, "train_model", tiny)
    out = tmp_path / "m.pt"
    args = ["train", str(data), "--factor", "2", "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--patch", "10", "--work-um-per-px", "25", "--threads", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "training spots-only" in result.output and seen["spots_only"] is True
    assert "plan:" in result.output and "trained 2 steps" in result.output
    assert out.exists()
    result = CliRunner().invoke(main, [*args, "--hr-truth"])
    assert result.exit_code == 0 and "spots-only" not in result.output
    assert seen["spots_only"] is False


def test_predict_with_a_mismatched_model_says_what_to_run(tmp_path):
    sample = make_sample(seed=0)
    tc = TrainConfig(steps=1, batch_size=2, patch=10, work_um_per_px=2.0)
    trainer = Trainer([sample], sample.genes, F, tiny_config(), tc)
    with pytest.raises(Exception, match="diffst train DATA --spots-only --factor 5"):
        super_resolve(model_from_trainer(trainer), sample, steps=1, progress=False)


# ------------------------------------------------------------------ plan, estimate, interrupts
def test_training_prints_plan_estimate_and_summary(tmp_path):
    lines: list[str] = []
    sample = make_sample(seed=0)
    path = train_model([sample], F, tmp_path / "m.pt", steps=8, batch_size=2, patch=10,
                       work_um_per_px=2.0, model_config=tiny_config(), progress=False,
                       log=lines.append)
    assert training_summary(path) == ("on 8 µm HR truth pooled 5x5, applied 40 -> 8 µm; "
                                      "factor 5, 4 genes, patch 10 cells at 2 µm/px; "
                                      "8 steps of batch 2")
    plan = lines[0]
    assert plan.startswith("plan: 1 sample(s)") and "4 genes (G3, G2, G1, G0)" in plan
    assert "factor 5" in plan and "patch 10 x 10 cells = 80 µm = 40 x 40 px at 2 µm/px" in plan
    assert "1 CPU thread" in plan and "8 steps of batch 2 on cpu" in plan
    assert any("s/step -> about" in line and "remaining 2 steps" in line for line in lines)
    assert lines[-1].startswith("trained 8 steps in")


def test_ctrl_c_in_training_saves_the_state(tmp_path, monkeypatch):
    sample = make_sample(seed=0)
    real = Trainer.train_step

    def stop_at_3(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", stop_at_3)
    kw = dict(steps=6, batch_size=2, patch=10, work_um_per_px=2.0, model_config=tiny_config(),
              progress=False)
    out = tmp_path / "m.pt"
    with pytest.raises(TrainingInterrupted, match="interrupted at step 3 of 6") as info:
        train_model([sample], F, out, save_on_interrupt=True, **kw)
    assert info.value.checkpoint == default_checkpoint(out) and not out.exists()
    monkeypatch.setattr(Trainer, "train_step", real)
    lines: list[str] = []
    train_model([sample], F, out, checkpoint=info.value.checkpoint, log=lines.append, **kw)
    assert "resuming from" in lines[1] and "3 of 6 steps done" in lines[1]
    assert lines[-1].startswith("trained 3 steps")


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    sample = make_sample(seed=0)
    tc = TrainConfig(steps=4, batch_size=2, lr=3e-3, patch=10, work_um_per_px=2.0, seed=0)
    trainer = Trainer([sample], sample.genes, F, tiny_config(), tc)
    trainer.fit(progress=False)
    return model_from_trainer(trainer)


def _sr(lm, hr, **kw):
    return super_resolve(lm, simulate_lr(hr, F), steps=1, n_samples=1, patch=20, overlap=10,
                         batch_size=2, hr_mask=padded_mask(hr.mask, F), **kw)


def test_resume_and_interrupt_are_said_in_words(trained, tmp_path, monkeypatch, capsys):
    hr = make_sample(seed=3, size=40)
    store = tmp_path / "tiles"
    real = infer._sample_batch
    calls = {"n": 0}

    def interrupted_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(infer, "_sample_batch", interrupted_third)
    with pytest.raises(SamplingInterrupted) as info:
        _sr(trained, hr, resume_dir=store, progress=False)
    total = info.value.total
    assert info.value.done == 2 and total > 2
    assert str(info.value) == (f"interrupted: 2 of {total} tile batches kept in {store}; "
                               "rerun the same command to resume")
    monkeypatch.setattr(infer, "_sample_batch", real)
    capsys.readouterr()
    _sr(trained, hr, resume_dir=store, progress=True)
    assert f"resuming: 2 of {total} tile batches done ({store})" in capsys.readouterr().out


def test_interrupt_messages_when_nothing_is_kept():
    assert "nothing to keep yet" in str(SamplingInterrupted(0, 5, "x"))
    assert "nothing was kept" in str(SamplingInterrupted(2, 5, None))


# ------------------------------------------------------------------ help and the working folder
def test_every_option_has_help():
    missing = [f"{name} {p.opts[0]}" for name, cmd in main.commands.items()
               for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert missing == []
    for name in ("train", "predict", "inspect"):
        text = CliRunner().invoke(main, [name, "--help"], terminal_width=200).output
        assert "Space Ranger" in text and ".h5ad" in text, name


def test_inspect_writes_nothing_unasked(tmp_path, monkeypatch):
    path = make_sample(seed=0).save_npz(tmp_path / "s.npz")
    work = tmp_path / "work"  # an empty working folder
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert list(work.iterdir()) == []
    result = CliRunner().invoke(main, ["inspect", str(path), "--overlay", "o.png"])
    assert result.exit_code == 0 and (work / "o.png").exists()



def test_ctrl_c_on_the_command_line_prints_the_resume_command(tmp_path, monkeypatch):
    data = make_sample(seed=0).save_npz(tmp_path / "s.npz")
    out = tmp_path / "m.pt"
    argv = ["train", str(data), "--factor", "5", "--out", str(out), "--steps", "5",
            "--patch", "10", "--work-um-per-px", "2"]
    monkeypatch.setattr("sys.argv", ["diffst", *argv])

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 130
    assert "interrupted at step 0 of 5" in result.output
    assert f"resume with: diffst {' '.join(argv)} --checkpoint {out}.ckpt" in result.output
    assert default_checkpoint(out).exists()


def test_train_checks_patch_against_factor_before_reading(tmp_path):
    data = tmp_path / "unread.npz"
    data.write_bytes(b"not read: the options are checked first")
    result = CliRunner().invoke(main, ["train", str(data), "--factor", "5", "--out",
                                       str(tmp_path / "m.pt"), "--patch", "12"])
    assert result.exit_code == 2
    assert "--patch" in result.output and "multiple of --factor 5" in result.output


def test_predict_prints_its_plan_and_a_summary(tmp_path):
    sample = make_sample(seed=0)
    path = train_model([sample], F, tmp_path / "m.pt", steps=2, batch_size=2, patch=10,
                       work_um_per_px=2.0, model_config=tiny_config(), progress=False)
    lines: list[str] = []
    from diffst.api import predict

    predict(make_sample(seed=3, size=40), path, pool=True, n_samples=2, steps=1,
            progress=False, log=lines.append)
    assert lines[0].startswith("plan: 4 genes, 40 µm cells -> 8 µm (factor 5), 2 samples x 1 "
                               "ddim steps per tile, on cpu, 1 CPU thread")
    assert "trained on 8 µm HR truth pooled 5x5" in lines[0]
    assert lines[1].startswith("sampled ") and " tiles in " in lines[1]

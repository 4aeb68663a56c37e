"""DistributedDataParallel training: 2 CPU processes with gloo under torchrun, and world size 1.

Runtime: about 25 s on 2 cores (the torchrun launch starts two Python processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import make_sample, tiny_config

from diffst.distributed import DistributedTrainer, all_parts_used, init_process_group, main
from diffst.pipeline import MODEL_FORMAT
from diffst.train import TrainConfig, Trainer, safe_load

TESTS = Path(__file__).resolve().parent

# 1x1-convolution weight gradients carry arbitrary strides on their size-1 dims; DDP's reducer
# compares strides literally and warns, although the memory layout is the same.
pytestmark = pytest.mark.filterwarnings("ignore:Grad strides do not match bucket view strides")

WORKER = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
import torch.distributed as dist
from conftest import make_sample, tiny_config
from diffst.distributed import DistributedTrainer, init_process_group
from diffst.train import TrainConfig

torch.set_num_threads(1)
out = Path({out!r})
info = init_process_group()
samples = [make_sample(seed=0), make_sample(seed=1)]
tc = TrainConfig(steps=4, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0, seed=0,
                 checkpoint_every=2, device="cpu")
trainer = DistributedTrainer(samples, samples[0].genes, 5, tiny_config(), tc)
first = trainer.sampler.rng.bit_generator.state["state"]["state"]
trainer.fit(checkpoint=out / "ck.pt", progress=False)
trainer.export_model(out / "model.pt")
torch.save(trainer.model.state_dict(), out / f"rank{{info.rank}}.pt")
(out / f"rank{{info.rank}}.json").write_text(json.dumps(
    {{"history": trainer.history, "sampler_state": str(first),
      "world": dist.get_world_size(), "backend": dist.get_backend()}}))
dist.destroy_process_group()
"""


def _toy_trainer_args(steps: int = 4) -> tuple:
    samples = [make_sample(seed=0), make_sample(seed=1)]
    tc = TrainConfig(steps=steps, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0, seed=0,
                     checkpoint_every=2, device="cpu")
    return samples, samples[0].genes, 5, tiny_config(), tc


def test_two_gloo_processes_under_torchrun_stay_in_sync(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), out=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(log["world"] == 2 and log["backend"] == "gloo" for log in logs)
    # each rank drew its own patches, so the local losses differ
    assert logs[0]["sampler_state"] != logs[1]["sampler_state"]
    assert logs[0]["history"] != logs[1]["history"]
    # rank 0 wrote the model (with the common weights) and a checkpoint with both ranks' states
    model = safe_load(tmp_path / "model.pt", MODEL_FORMAT)
    assert model["genes"] == ["G0", "G1", "G2", "G3"]
    ck = safe_load(tmp_path / "ck.pt", "diffst.checkpoint/1")
    assert ck["step"] == 4 and ck["world_size"] == 2 and len(ck["rank_rng"]) == 2
    torch.testing.assert_close(ck["model"]["unet.stem.weight"], states[0]["unet.stem.weight"])
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["ck.pt", "model.pt", "rank0.pt",
                                                             "rank1.pt"]


@pytest.fixture
def one_process_group():
    os.environ.pop("MASTER_ADDR", None)
    init_process_group(device="cpu")
    yield
    dist.destroy_process_group()
    os.environ.pop("MASTER_ADDR", None)
    os.environ.pop("MASTER_PORT", None)


def test_world_size_one_matches_the_plain_trainer(one_process_group, tmp_path):
    plain = Trainer(*_toy_trainer_args())
    plain.fit(progress=False)
    ddp = DistributedTrainer(*_toy_trainer_args())
    ddp.fit(checkpoint=tmp_path / "ck.pt", progress=False)
    assert ddp.history == pytest.approx(plain.history, rel=1e-5)
    for a, b in zip(ddp.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # resume from the DDP checkpoint restores this rank's random state
    resumed = DistributedTrainer(*_toy_trainer_args(steps=6))
    resumed.load_checkpoint(tmp_path / "ck.pt")
    assert resumed.step == 4
    assert resumed.sampler.rng.bit_generator.state == ddp.sampler.rng.bit_generator.state


def test_main_trains_from_a_file_in_one_process(one_process_group, tmp_path):
    data = make_sample(seed=2).save_npz(tmp_path / "toy.npz")
    assert main([str(data), "--factor", "5", "--out", str(tmp_path / "m.pt"), "--steps", "1",
                 "--batch-size", "1", "--patch", "10", "--work-um-per-px", "2",
                 "--device", "cpu"]) == 0
    assert safe_load(tmp_path / "m.pt", MODEL_FORMAT)["factor"] == 5


def test_every_parameter_gets_a_gradient_when_all_parts_are_on():
    trainer = Trainer(*_toy_trainer_args())
    assert all_parts_used(trainer.model_config)
    loss = trainer.loss(trainer.model, trainer.draw_batch(), 0.25)
    loss.backward()
    unused = [n for n, p in trainer.model.named_parameters() if p.grad is None]
    assert not unused  # DDP runs without find_unused_parameters in this case


def test_distributed_trainer_needs_a_process_group():
    with pytest.raises(RuntimeError, match="process group"):
        DistributedTrainer(*_toy_trainer_args())


def test_launcher_threads_option_and_default(monkeypatch, tmp_path, capsys):
    import diffst.distributed as ddp_module
    import diffst.io
    from diffst import threads as th

    monkeypatch.setattr(diffst.io, "read_sample", lambda path: make_sample(seed=0))
    monkeypatch.setattr(ddp_module, "train_ddp", lambda *a, **k: tmp_path / "m.pt")
    monkeypatch.setattr(th, "usable_cores", lambda: 9)
    monkeypatch.delenv(th.ENV_VAR, raising=False)
    args = ["x.npz", "--factor", "5", "--out", str(tmp_path / "m.pt")]
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert main(args) == 0 and torch.get_num_threads() == 8  # as the verbs: cores - 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes share the 8 spare cores
        assert main(args) == 0 and torch.get_num_threads() == 4
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
        assert main(args) == 0 and torch.get_num_threads() == 1
        assert main([*args, "--threads", "2"]) == 0 and torch.get_num_threads() == 2
        monkeypatch.setenv(th.ENV_VAR, "3")
        assert main(args) == 0 and torch.get_num_threads() == 3
        for bad_args in ([*args, "--threads", "0"], args):
            if bad_args is args:
                monkeypatch.setenv(th.ENV_VAR, "lots")
            with pytest.raises(SystemExit) as exit_info:
                main(bad_args)
            assert exit_info.value.code == 2
        assert "--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)

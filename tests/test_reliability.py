"""Reliability: killed runs resume exactly, seeds are deterministic, hostile inputs fail clearly.

Runtime: about 40 s on 2 cores (the kill test starts one Python process; the fuzz tests run
at most 30 examples each).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_sample, tiny_config
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from diffst.data.lr import simulate_lr
from diffst.data.normalize import GeneScaler
from diffst.data.sample import SampleError, STSample, load_npz
from diffst.infer import model_from_trainer, super_resolve
from diffst.train import CHECKPOINT_FORMAT, TrainConfig, Trainer, safe_load

TESTS = Path(__file__).resolve().parent
CLEAR_ERRORS = (SampleError, ValueError, FileNotFoundError)
FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def _config(steps: int = 40, seed: int = 0) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=2, lr=2e-3, patch=10, work_um_per_px=2.0,
                       seed=seed, checkpoint_every=2, device="cpu")


def _trainer(steps: int = 40, seed: int = 0) -> Trainer:
    samples = [make_sample(seed=0), make_sample(seed=1)]
    return Trainer(samples, samples[0].genes, 5, tiny_config(), _config(steps, seed))


KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)  # as the parent test (conftest): same float results
from test_reliability import _trainer
_trainer().fit(steps=10**6, checkpoint={ck!r}, progress=False)  # runs until killed
"""


# ---------------------------------------------------------------------------- interruptions
def test_a_run_killed_mid_training_resumes_on_the_same_loss_curve(tmp_path):
    ck = tmp_path / "ck.pt"
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN.format(tests=str(TESTS), ck=str(ck)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ck.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(0.3)  # let it run on, possibly into the next checkpoint write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = safe_load(ck, CHECKPOINT_FORMAT)  # the file under the final name is complete
    done = int(state["step"])
    assert done >= 2 and done % 2 == 0

    resumed = _trainer()
    resumed.load_checkpoint(ck)
    resumed.fit(steps=done + 4, progress=False)
    reference = _trainer()
    reference.fit(steps=done + 4, progress=False)
    assert resumed.history == pytest.approx(reference.history, rel=1e-4)
    for a, b in zip(resumed.model.parameters(), reference.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = _trainer()
    trainer.fit(steps=2, progress=False)
    ck = trainer.save_checkpoint(tmp_path / "ck.pt")
    trainer.fit(steps=4, progress=False)

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(ck)
    monkeypatch.undo()
    assert safe_load(ck, CHECKPOINT_FORMAT)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left behind


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


def test_checkpoints_load_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _Payload()}, path)
    with pytest.raises(SampleError, match="evil.pt"):
        safe_load(path, CHECKPOINT_FORMAT)


# ---------------------------------------------------------------------------- determinism
def test_the_same_seed_gives_identical_losses_and_maps():
    runs = []
    for _ in range(2):
        trainer = _trainer(steps=4)
        trainer.fit(progress=False)
        hr = make_sample(seed=5, size=20)
        res = super_resolve(model_from_trainer(trainer), simulate_lr(hr, 5), steps=3,
                            n_samples=2, patch=10, overlap=5, seed=7, progress=False)
        runs.append((trainer.history, res))
    (h1, r1), (h2, r2) = runs
    assert h1 == h2
    for key in ("mean", "std", "q05", "q95"):
        np.testing.assert_array_equal(getattr(r1, key), getattr(r2, key))
    other = _trainer(steps=4, seed=1)
    other.fit(progress=False)
    assert other.history != h1


# ---------------------------------------------------------------------------- fuzzing
_values = st.sampled_from([0.0, 1.0, 3.0, -1.0, np.nan, np.inf, 1e30])


@st.composite
def _raw_sample_args(draw):
    g = draw(st.integers(0, 3))
    h, w = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    expr = np.full((g, h, w), draw(_values), np.float32)
    if draw(st.booleans()):
        expr = expr.reshape(-1)  # wrong dimensionality
    genes = draw(st.one_of(st.none(), st.just("ABC"),
                           st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4)))
    cell_um = draw(st.sampled_from([8.0, 0.0, -2.0, np.nan, np.inf, "8", None, "x"]))
    mh, mw = draw(st.sampled_from([(h, w), (w, h), (h + 1, w), (0, 0)]))
    mask = np.ones((mh, mw), bool)
    image = draw(st.sampled_from([None, "ok", "float", "gray", "empty"]))
    image = {None: None, "ok": np.zeros((4, 4, 3), np.uint8), "float": np.zeros((4, 4, 3)),
             "gray": np.zeros((4, 4), np.uint8), "empty": np.zeros((0, 4, 3), np.uint8)}[image]
    affine = draw(st.sampled_from(["eye", "zero", "nan", "2x2"]))
    affine = {"eye": np.eye(3), "zero": np.zeros((3, 3)), "nan": np.full((3, 3), np.nan),
              "2x2": np.eye(2)}[affine]
    um_px = draw(st.sampled_from([1.0, 0.0, np.nan, np.inf]))
    return dict(expr=expr, genes=genes, cell_um=cell_um, mask=mask, image=image,
                image_um_per_px=um_px, affine=affine)


@FUZZ
@given(_raw_sample_args())
def test_sample_construction_accepts_only_consistent_input(args):
    try:
        s = STSample(**args)
    except CLEAR_ERRORS as exc:
        assert str(exc)
        return
    g, h, w = s.expr.shape
    assert h > 0 and w > 0 and len(s.genes) == g == len(set(s.genes))
    assert np.isfinite(s.expr).all() and (s.expr >= 0).all() and 0 < s.cell_um < np.inf
    assert s.mask.shape == (h, w) and np.isfinite(s.affine).all()


@FUZZ
@given(h=st.integers(1, 12), w=st.integers(1, 12), genes=st.integers(0, 3),
       factor=st.one_of(st.integers(-2, 20), st.sampled_from([2.5, np.nan, None, "3", 10**9])))
def test_simulate_lr_pools_or_refuses(h, w, genes, factor):
    rng = np.random.default_rng(h * 13 + w)
    expr = rng.poisson(2.0, (genes, h, w)).astype(np.float32)
    s = STSample(expr, [f"g{i}" for i in range(genes)], 8.0, rng.random((h, w)) > 0.3)
    try:
        lr = simulate_lr(s, factor)
    except CLEAR_ERRORS as exc:
        assert "factor" in str(exc)
        return
    f = int(factor)
    assert lr.shape == (-(-h // f), -(-w // f)) and lr.cell_um == 8.0 * f
    np.testing.assert_allclose(lr.expr.sum(axis=(1, 2)), expr.sum(axis=(1, 2)), rtol=1e-5)
    assert lr.mask.any() == s.mask.any()


@FUZZ
@given(genes=st.integers(0, 3), h=st.integers(0, 4), w=st.integers(1, 4),
       value=_values, mask_shape=st.sampled_from(["same", "other"]), mask_fill=st.booleans(),
       n=st.integers(0, 2))
def test_gene_scaler_fits_or_refuses(genes, h, w, value, mask_shape, mask_fill, n):
    values = [np.full((genes, h, w), value) for _ in range(n)]
    shape = (h, w) if mask_shape == "same" else (h + 1, w)
    masks = [np.full(shape, mask_fill) for _ in range(n)]
    try:
        scaler = GeneScaler.fit(values, masks)
    except ValueError as exc:
        assert "gene scaling" in str(exc)
        return
    assert np.isfinite(scaler.hi).all() and (scaler.hi > scaler.lo).all()
    y = scaler.transform(values[0])
    assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= scaler.clip_max
    with pytest.raises(ValueError, match="genes"):
        scaler.transform(np.zeros((genes + 1, 2, 2)))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    trainer = _trainer(steps=1)
    trainer.fit(progress=False)
    return model_from_trainer(trainer)


BREAKS = {  # one hostile setting at a time; None keeps every setting valid
    "steps": dict(steps=0), "too many steps": dict(steps=2000), "sampler": dict(sampler="euler"),
    "samples": dict(n_samples=0), "patch": dict(patch=7), "overlap": dict(overlap=10),
    "batch": dict(batch_size=0), "hr_mask": "wrong", "cell": 8.0, "genes": ["G0", "G1"],
    "no genes": [],
}


@st.composite
def _lr_inputs(draw):
    h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3))  # LR cells
    broken = draw(st.sampled_from([None] * 6 + sorted(BREAKS)))
    genes = draw(st.sampled_from([["G0", "G1", "G2", "G3"], ["G3", "G0", "G1", "G2", "X"]]))
    genes = BREAKS[broken] if broken in ("genes", "no genes") else genes
    px = draw(st.sampled_from([1, 4, 20]))  # image pixels per HR cell: tiny to large
    level = draw(st.sampled_from([0.0, 5.0, 1e6]))
    expr = np.full((len(genes), h, w), level, np.float32)
    mask = np.array(draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))).reshape(h, w)
    image = np.full((h * 5 * px, w * 5 * px, 3), draw(st.integers(0, 255)), np.uint8)
    s = 5 * px
    affine = np.array([[s, 0, (s - 1) / 2], [0, s, (s - 1) / 2], [0, 0, 1.0]])
    lr = STSample(expr, genes, 8.0 if broken == "cell" else 40.0, mask, image, 8.0 / px,
                  affine, name="fuzz")
    hr_mask = draw(st.sampled_from([None, "right", "empty"]))
    hr_mask = "wrong" if broken == "hr_mask" else hr_mask
    hr_mask = {None: None, "right": np.ones((h * 5, w * 5), bool),
               "wrong": np.ones((h * 5 + 1, w * 5), bool),
               "empty": np.zeros((h * 5, w * 5), bool)}[hr_mask]
    patch = draw(st.sampled_from([None, 5, 10]))
    kwargs = dict(steps=draw(st.sampled_from([1, 2])),
                  sampler=draw(st.sampled_from(["ddim", "dpmpp"])),
                  n_samples=draw(st.sampled_from([1, 2])), patch=patch,
                  overlap=draw(st.sampled_from([None, 0] + ([5] if patch == 10 else []))),
                  batch_size=draw(st.sampled_from([1, 8])), hr_mask=hr_mask)
    if isinstance(BREAKS.get(broken), dict):
        kwargs.update(BREAKS[broken])
    return lr, kwargs, broken


@FUZZ
@given(_lr_inputs())
def test_super_resolve_answers_or_refuses_clearly(tiny_model, inputs):
    lr, kwargs, broken = inputs
    try:
        res = super_resolve(tiny_model, lr, seed=0, progress=False, **kwargs)
    except CLEAR_ERRORS as exc:
        event(f"refused: {type(exc).__name__}")
        assert broken is not None, f"valid input refused: {exc}"
        assert str(exc)
        return
    event(f"sampled {res.meta.get('n_tiles')} tiles")
    h, w = lr.shape
    assert res.mean.shape == (4, h * 5, w * 5)
    for layer in res.layers().values():
        assert np.isfinite(layer).all() and (layer[:, ~res.mask] == 0).all()


@FUZZ
@given(content=st.sampled_from([b"", b"garbage", b"PK\x03\x04broken zip", "npz-missing",
                                "npz-bad-meta", "directory"]))
def test_unreadable_sample_files_give_a_clear_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("files") / "s.npz"
    if content == "directory":
        path.mkdir()
    elif content == "npz-missing":
        np.savez(path, schema=np.array("diffst.STSample/1"))
    elif content == "npz-bad-meta":
        make_sample().save_npz(path)
        with np.load(path) as z:
            arrays = dict(z)
        arrays["meta"] = np.array("{not json")
        np.savez(path, **arrays)
    else:
        path.write_bytes(content)
    with pytest.raises(CLEAR_ERRORS, match="s.npz"):
        load_npz(path)

"""CLI hygiene: numbers checked up front, outputs checked writable before work, reader options,
named errors instead of tracebacks for misaligned and broken inputs."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA, make_sample

import diffst.api as api
from diffst.cli import main
from diffst.cli_options import reader_kwargs
from diffst.io.alignment import PositionFix

SR3 = SHARED_DATA / "fixtures" / "visium_spaceranger3"


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_named_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.fixture
def toy_npz(tmp_path) -> Path:
    return make_sample(seed=0).save_npz(tmp_path / "toy.npz")


@pytest.fixture
def sr3(tmp_path) -> Path:
    if not SR3.exists():
        pytest.skip(f"real data not found at {SR3} (../shared/data is absent)")
    dst = shutil.copytree(SR3, tmp_path / "sr3")
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def never(*args, **kwargs):
    raise AssertionError("the long work started although the input was invalid")


@pytest.mark.parametrize("option, value, message", [
    ("--factor", "0", "at least 2"), ("--factor", "1", "at least 2"),
    ("--top-genes", "0", "at least 1"), ("--batch-size", "0", "at least 1"),
    ("--steps", "-3", "at least 1"), ("--lr", "0", "positive"),
])
def test_train_rejects_bad_numbers_before_reading(toy_npz, tmp_path, monkeypatch, option, value,
                                                  message):
    monkeypatch.setattr(api, "train_model", never)
    args = ["train", toy_npz, "--factor", "2", "--out", tmp_path / "m.pt", option, value]
    assert_named_error(run(*args), 2, f"Invalid value for {option}", message)


def test_train_passes_model_settings_and_names_a_bad_one(toy_npz, tmp_path, monkeypatch):
    seen = {}

    def record(samples, factor, out, **kwargs):
        seen.update(kwargs)
        return out

    monkeypatch.setattr(api, "train_model", record)
    base = ["train", toy_npz, "--factor", "2", "--out", tmp_path / "m.pt"]
    result = run(*base, "--model", "upsampler=istar_like", "--model", "channels=16",
                 "--ablate", "graph")
    assert result.exit_code == 0, result.output
    config = seen["model_config"]
    assert (config.upsampler, config.channels, config.use_gene_graph) == ("istar_like", 16, False)
    monkeypatch.setattr(api, "train_model", never)
    assert_named_error(run(*base, "--model", "upsampler=nearest"), 1, "upsampler must be one of")
    assert_named_error(run(*base, "--model", "chanels=16"), 2, "Invalid value for --model",
                       "unknown model setting 'chanels'")


def test_predict_rejects_bad_numbers(toy_npz, tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    for option in ("--samples", "--steps", "--batch-size"):
        result = run("predict", toy_npz, "--model", model, "--out", tmp_path / "o.npz",
                     option, "0")
        assert_named_error(result, 2, f"Invalid value for {option}")


def test_unwritable_outputs_refused_before_work(toy_npz, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "train_model", never)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run("train", toy_npz, "--factor", "2", "--out", blocker / "sub" / "m.pt")
    assert_named_error(result, 2, "Invalid value for --out", "cannot create the folder")
    (tmp_path / "dir.pt").mkdir()
    result = run("train", toy_npz, "--factor", "2", "--out", tmp_path / "dir.pt")
    assert_named_error(result, 2, "is a directory")
    result = run("train", toy_npz, "--factor", "2", "--out", tmp_path / "m.pt",
                 "--checkpoint", blocker / "ck.pt")
    assert_named_error(result, 2, "Invalid value for --checkpoint")


def test_unwritable_folder_refused(tmp_path, toy_npz):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = run("evaluate", "--truth", toy_npz, "--pred", toy_npz, "--out",
                     locked / "m.csv")
        assert_named_error(result, 2, "cannot write in")
    finally:
        locked.chmod(0o700)


def test_report_genes_checked_before_sampling(toy_npz, tmp_path, monkeypatch):
    import torch
    from conftest import tiny_config

    from diffst.train import TrainConfig, Trainer

    torch.set_num_threads(1)
    sample = make_sample(seed=0)
    tc = TrainConfig(steps=1, batch_size=2, patch=10, work_um_per_px=2.0, seed=0)
    trainer = Trainer([sample], sample.genes, 5, tiny_config(), tc)
    model = trainer.export_model(tmp_path / "m.pt")
    monkeypatch.setattr(api, "super_resolve", never)
    result = run("predict", toy_npz, "--model", model, "--out", tmp_path / "o.npz",
                 "--report", tmp_path / "rep", "--report-genes", "G0,FOO")
    assert_named_error(result, 1, "report genes ['FOO'] are not genes of the model")


def test_reader_kwargs_only_passes_what_was_set(toy_npz):
    opts = dict(image=None, make_unique=False, image_um_per_px=None, section=None, layer=None,
                swap_xy=False, flip=None, rotate=None, position_scale=None,
                no_alignment_check=False, max_image_gb=None)
    assert reader_kwargs(toy_npz, opts) == {}
    assert reader_kwargs(toy_npz) == {}  # outside a command: none
    opts.update(make_unique=True, section="C2", swap_xy=True, rotate="90",
                no_alignment_check=True)
    assert reader_kwargs(toy_npz, opts) == {
        "make_unique": True, "section": "C2", "fix": PositionFix(swap_xy=True, rotate=90),
        "alignment_check": False}


def test_option_a_format_does_not_take_is_named(toy_npz, tmp_path):
    result = run("inspect", toy_npz, "--layer", "counts", "--overlay", tmp_path / "o.png")
    assert_named_error(result, 1, "--layer does not apply to a diffst .npz")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_inspect_names_the_swap_and_applies_the_fix(sr3, tmp_path):
    pos_path = sr3 / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(pos_path)
    cols = ["pxl_row_in_fullres", "pxl_col_in_fullres"]
    pos[cols] = pos[cols[::-1]].to_numpy()
    pos.to_csv(pos_path, index=False)
    overlay = tmp_path / "o.png"
    assert_named_error(run("inspect", sr3, "--overlay", overlay), 1, "x/y swapped",
                       "pass --swap-xy")
    fixed = run("inspect", sr3, "--swap-xy", "--overlay", overlay)
    assert fixed.exit_code == 0, fixed.output
    assert "fix:       positions corrected (--swap-xy)" in fixed.output
    assert "tissue:    100.0% of tissue cells" in fixed.output


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_broken_matrix_gives_a_message_not_an_abort(sr3, tmp_path):
    mtx = sr3 / "filtered_feature_bc_matrix" / "matrix.mtx.gz"
    with gzip.open(mtx, "rt") as fh:
        lines = fh.read().splitlines()
    lines[200000] = lines[200000].rsplit(" ", 1)[0] + " abc"
    with gzip.open(mtx, "wt", compresslevel=1) as fh:
        fh.write("\n".join(lines) + "\n")
    result = run("inspect", sr3, "--overlay", tmp_path / "o.png")
    assert_named_error(result, 1, "matrix.mtx.gz: line 200001: invalid value 'abc'")
    data = mtx.read_bytes()
    mtx.write_bytes(data[: len(data) // 2])
    result = run("inspect", sr3, "--overlay", tmp_path / "o.png")
    assert_named_error(result, 1, "matrix.mtx.gz: the file is truncated")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_spaceranger3_trains_with_make_unique(sr3, tmp_path):
    args = ["train", sr3, "--factor", "2", "--spots-only", "--steps", "1", "--top-genes", "2",
            "--batch-size", "1", "--out", tmp_path / "m.pt"]
    assert_named_error(run(*args), 1, "duplicate", "make_unique")
    result = run(*args, "--make-unique")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.pt").is_file()

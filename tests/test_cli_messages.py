"""Messages name options that exist: every ``--flag`` written in diffst's source is an option of a
``diffst`` command (or of ``python -m diffst.distributed``), and a message that names a reader
keyword with a command-line option also names that option. Plus the reader options added so that
every such message has a flag to point at. Runtime: about 5 s.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import anndata as ad
import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA

from diffst.cli import main
from diffst.cli_options import _READER_KEYS, reader_kwargs
from diffst.distributed import build_parser
from diffst.io.inspect import KEYWORDS_WITH_FLAGS, cli_flag

SRC = Path(__file__).resolve().parents[1] / "src" / "diffst"
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?![\w-])")
SR3 = SHARED_DATA / "fixtures" / "visium_spaceranger3"
SQUIDPY_H5AD = SHARED_DATA / "fixtures" / "visium_squidpy" / "test_data.h5ad"



def run(*args) -> click.testing.Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def source_texts(folder: Path = SRC) -> list[tuple[str, str]]:
    """(where, text) of every string literal in ``folder`` except docstrings; an f-string's
    literal parts are joined into one text."""
    texts = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant):
                skip.add(id(body[0].value))  # a docstring
            if isinstance(node, ast.JoinedStr):
                parts = [v for v in node.values if isinstance(v, ast.Constant)]
                skip.update(id(v) for v in parts)
                texts.append((f"{path.name}:{node.lineno}", "".join(v.value for v in parts)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in skip:
                texts.append((f"{path.name}:{node.lineno}", node.value))
    return texts


def cli_options() -> set[str]:
    """Every option string of the ``diffst`` group, its commands and the DDP launcher."""
    found: set[str] = set()

    def add(command: click.Command) -> None:
        for param in command.params:
            found.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            add(sub)

    add(main)
    for action in build_parser()._actions:
        found.update(o for o in action.option_strings if o.startswith("--"))
    return found


def test_every_flag_written_in_the_source_is_a_real_option():
    options = cli_options()
    assert {"--gene-key", "--bin-um", "--threads", "--no-resume", "--allow-non-integer"} <= options
    named = {(where, f"--{m}") for where, text in source_texts() for m in FLAG.findall(text)}
    assert len(named) > 50  # the scan does see the messages
    foreign = {"--tile", "--pyramid", "--compression"}  # the `vips tiffsave` command quoted
    unknown = sorted((where, flag) for where, flag in named
                     if flag not in options and flag not in foreign)
    assert not unknown, f"messages name options no diffst command has: {unknown}"


def test_the_scan_catches_an_invented_flag(tmp_path):
    (tmp_path / "m.py").write_text('def f(x):\n    """Doc --not-checked."""\n'
                                   '    raise ValueError(f"{x}: pass --gene-keys id")\n')
    flags = {f"--{m}" for _, text in source_texts(tmp_path) for m in FLAG.findall(text)}
    assert flags == {"--gene-keys"} and "--gene-keys" not in cli_options()


def test_a_reader_keyword_in_a_message_comes_with_its_flag():
    assert set(KEYWORDS_WITH_FLAGS) >= {k for k in _READER_KEYS if k not in (
        "swap_xy", "flip", "rotate", "position_scale", "no_alignment_check", "max_image_gb",
        "allow_non_integer")}
    bad = []
    for where, text in source_texts():
        for key in (k for k in KEYWORDS_WITH_FLAGS if k != "fix"):  # fix= takes an object
            if re.search(rf"(?<![\w.]){key}=", text) and cli_flag(key) not in text:
                bad.append((where, key, text[:120]))
    assert not bad, f"messages name a Python keyword without its option: {bad}"


def test_reader_options_reach_the_reader(tmp_path):
    opts = {"gene_key": "id", "bin_um": 16.0, "pitch_um": 55.0, "image_scale": 0.5,
            "max_dense_gb": 2.0, "allow_non_integer": True}
    kw = reader_kwargs(tmp_path / "x.npz", opts)
    assert kw == {"gene_key": "id", "bin_um": 16.0, "pitch_um": 55.0, "image_scale": 0.5,
                  "max_dense_gb": 2.0, "require_integer": False}
    assert reader_kwargs(tmp_path / "x.npz", {"allow_non_integer": False}) == {}
    for command in ("inspect", "train", "predict", "evaluate"):
        result = run(command, "--help")
        for flag in ("--gene-key", "--bin-um", "--pitch-um", "--image-scale",
                     "--allow-non-integer", "--max-dense-gb"):
            assert flag in result.output, (command, flag)


def test_an_option_a_format_does_not_take_names_those_it_does(tmp_path):
    from conftest import make_sample

    npz = make_sample(seed=0).save_npz(tmp_path / "toy.npz")
    result = run("inspect", npz, "--bin-um", "16")
    assert result.exit_code == 1 and "--bin-um does not apply to a diffst .npz" in result.output
    if SR3.exists():
        result = run("inspect", SR3, "--section", "C2")
        assert result.exit_code == 1
        assert "--section (section= in Python) does not apply to spaceranger data" in result.output
        assert "options that do: " in result.output and "--gene-key" in result.output


def test_gene_key_id_reads_ensembl_ids(tmp_path):
    if not SR3.exists():
        pytest.skip(f"real data not found at {SR3} (../shared/data is absent)")
    result = run("inspect", SR3, "--gene-key", "id", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["top_genes"] and all(g.startswith("ENS") for g in info["top_genes"])
    bad = run("inspect", SR3, "--gene-key", "symbol")
    assert bad.exit_code == 1 and "--gene-key" in bad.output and "'name' or 'id'" in bad.output


def test_allow_non_integer_accepts_normalised_counts():
    if not SQUIDPY_H5AD.exists():
        pytest.skip(f"real data not found at {SQUIDPY_H5AD} (../shared/data is absent)")
    refused = run("inspect", SQUIDPY_H5AD, "--image", "lowres")
    assert refused.exit_code == 1
    assert "--allow-non-integer" in refused.output and "--layer counts" in refused.output
    accepted = run("inspect", SQUIDPY_H5AD, "--image", "lowres", "--allow-non-integer", "--json")
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.output)["n_spots"] > 0


def test_pitch_um_for_a_square_grid_h5ad(tmp_path):
    rr, cc = np.mgrid[0:4, 0:5]
    adata = ad.AnnData(X=np.arange(40, dtype=np.float32).reshape(20, 2),
                       var=pd.DataFrame(index=["A", "B"]))
    adata.obsm["spatial"] = np.column_stack([10 + 20.0 * cc.ravel(), 5 + 20.0 * rr.ravel()])
    path = tmp_path / "grid.h5ad"
    adata.write_h5ad(path)
    refused = run("inspect", path, "--json")
    assert refused.exit_code == 1 and "--pitch-um" in refused.output, refused.output
    result = run("inspect", path, "--pitch-um", "10", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["cell_um"] == pytest.approx(10.0) and info["raster_shape"] == [4, 5]


def test_bin_um_chooses_the_visium_hd_bins(tmp_path):
    from test_io_visium import write_hd_bin

    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, size=(3, 12, 12)).astype(np.int64)
    rr, cc = np.mgrid[0:12, 0:12]
    tissue = (rr - 5.5) ** 2 + (cc - 5.5) ** 2 < 5**2
    outs = tmp_path / "hd" / "outs"
    write_hd_bin(outs, 8, counts, tissue)
    write_hd_bin(outs, 16, counts, tissue)
    (outs / "spatial").mkdir()
    from PIL import Image

    pink = np.array([230, 180, 200]) + rng.integers(-20, 20, size=(120, 120, 3))
    Image.fromarray(pink.astype(np.uint8)).save(outs / "spatial" / "tissue_hires_image.png")
    cells = {}
    for args in ([], ["--bin-um", "16"]):
        result = run("inspect", outs, *args, "--no-alignment-check", "--json")
        assert result.exit_code == 0, result.output
        cells[tuple(args)] = json.loads(result.output)["cell_um"]
    assert cells == {(): 8.0, ("--bin-um", "16"): 16.0}
    # a square_XXXum folder names its own size: no clash with the 8 µm default
    result = run("inspect", outs / "binned_outputs" / "square_016um", "--no-alignment-check",
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["cell_um"] == 16.0
    clash = run("inspect", outs / "binned_outputs" / "square_016um", "--bin-um", "8")
    assert clash.exit_code == 1 and "--bin-um" in clash.output

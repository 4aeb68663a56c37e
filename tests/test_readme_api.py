"""The README's Python quickstart runs as written, and the scanpy-style API behaves."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import diffst as ds

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Python quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_quickstart_runs_as_written(tmp_path):
    env_code = "import torch; torch.set_num_threads(1)\n" + _quickstart()
    done = subprocess.run([sys.executable, "-c", env_code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "AnnData object" in done.stdout and "layers: 'mean', 'std', 'q05', 'q95'" in done.stdout
    assert (tmp_path / "tiny.pt").is_file() and (tmp_path / "tiny_maps.png").is_file()


def test_import_is_light_and_attributes_resolve():
    code = ("import sys, diffst; assert 'torch' not in sys.modules; "
            "import diffst as ds; ds.pp; assert callable(ds.read); "
            "from diffst.pipeline import DiffSTPipeline as P; assert ds.DiffSTPipeline is P")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute"):
        ds.nothing  # noqa: B018


def test_read_and_pool_round_trip(tmp_path):
    from diffst.data.simulate import simulate_tissue

    sample = simulate_tissue(seed=0, size_um=200, n_genes=3)
    path = sample.save_npz(tmp_path / "t.npz")
    adata = ds.read(path)
    assert adata.n_obs == int(sample.mask.sum()) and list(adata.var_names) == sample.genes
    spots = ds.pp.pool(adata, 5)
    assert spots.X.sum() == pytest.approx(float(sample.expr[:, sample.mask].sum()), rel=1e-5)
    assert spots.uns["diffst"]["cell_um"] == 40.0


def test_super_resolve_refuses_the_layout_key(tmp_path):
    with pytest.raises(ValueError, match="key_added"):
        ds.tl.super_resolve(None, "unused.pt", key_added="diffst")

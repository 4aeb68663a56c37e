"""The validation script of the iStar-like early stopping (benchmarks/istar_early_stopping.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
from conftest import make_sample

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "istar_early_stopping.py"


def _script():
    spec = importlib.util.spec_from_file_location("diffst_istar_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_a_missing_dataset_is_skipped_with_its_reason(tmp_path, capsys):
    script = _script()
    assert script.main(["--data-root", str(tmp_path), "--cases", "her2st",
                        "--out", str(tmp_path / "out")]) == 1
    assert "her2st (no her2st/ under the data root)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_each_slide_is_scored_for_both_fits_and_losses_are_said(tmp_path):
    script = _script()
    case = script.Case("toy", None, factor=2, depth=0.5)
    rows = [row for seed in (0, 1) for row in
            script.score_case(case, seed, make_sample(seed, size=16, genes=3), 3)]
    df = pd.DataFrame(rows)
    assert sorted(df.method.unique()) == sorted([script.BICUBIC, script.FIXED, script.CHOSEN])
    assert (df[df.method == script.FIXED].steps == 300).all()
    assert (df[df.method == script.CHOSEN].steps <= 300).all()
    # a case where the fixed fit wins RMSE must say so in words
    df.loc[df.method == script.FIXED, "rmse"] = df.loc[df.method == script.CHOSEN, "rmse"].min() / 2
    script.write_table(df, tmp_path, [0, 1], [])
    text = (tmp_path / "table.md").read_text()
    assert "| toy x2, depth 50% | iStar-like + C, fixed steps |" in text
    assert "- toy x2, depth 50%: chosen steps against fixed steps: RMSE WORSE" in text
    assert "0/2 sections" in text
    df.to_csv(tmp_path / "per_run.csv", index=False)  # the table can be rebuilt from the runs
    (tmp_path / "table.md").unlink()
    assert script.main(["--table-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "table.md").read_text() == text

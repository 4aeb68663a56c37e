"""The validation script of Diff-ST mixed with the slide's own iStar-like map
(benchmarks/blend_validation.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "blend_validation.py"


def _script():
    spec = importlib.util.spec_from_file_location("diffst_blend_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_missing_data_folder_is_skipped_with_its_reason(tmp_path, capsys):
    assert _script().main(["--data-root", str(tmp_path / "none"), "--out",
                           str(tmp_path / "out")]) == 1
    assert "no data folder" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _runs(factor: int, depth: float, rmse: dict[str, float], w_depth: float) -> pd.DataFrame:
    rows = []
    for section, shift in (("A", 0.0), ("B", 0.01)):
        for weight, value in rmse.items():
            rows.append({"factor": factor, "depth": depth, "seed": 0, "section": section,
                         "weight": weight, "w": w_depth if weight == "depth" else float(weight),
                         "rmse": value + shift, "ssim": 1 - value, "pcc": 1 - value})
    return pd.DataFrame(rows)


def test_the_combined_table_says_the_presets_weight_against_no_mix(tmp_path):
    script = _script()
    x2 = _runs(2, 1.0, {"0": 0.12, "0.5": 0.11, "1": 0.13, "depth": 0.125}, 0.1)
    x3 = _runs(3, 0.05, {"0": 0.16, "0.5": 0.17, "1": 0.155, "depth": 0.158}, 0.95)
    for name, df in (("a", x2), ("b", x3)):
        (tmp_path / name).mkdir()
        df.to_csv(tmp_path / name / "per_run.csv", index=False)
    out = tmp_path / "out"
    assert script.main(["--combine", str(tmp_path / "a"), str(tmp_path / "b"),
                        "--out", str(out)]) == 0
    text = (out / "table.md").read_text()
    assert "| x3, depth 5% | depth (0.95, 0.95-0.95) |" in text
    # the preset mixes 0.5 at x2 and follows the depth at x3; both said against no mix
    assert "- x2: the preset's w = 0.5 against w = 0: RMSE better (0.1150 vs 0.1250, 2/2" in text
    assert "- x3, depth 5%: the preset's w = depth against w = 0: RMSE better" in text
    assert "best fixed weight: RMSE w = 1" in text  # the x3 case's best fixed weight
    assert "SSIM WORSE" not in text.split("x3, depth 5%: the preset's")[1].split("\n")[0]


def test_runs_on_cells_data_are_compared_with_the_cells_presets_weight(tmp_path):
    script = _script()
    x5 = _runs(5, 1.0, {"0": 0.12, "0.25": 0.11, "0.5": 0.115, "1": 0.13}, 0.0).assign(
        profile="cells")
    x10 = _runs(10, 1.0, {"0": 0.12, "0.5": 0.125, "1": 0.13}, 0.0).assign(profile="cells")
    for name, df in (("c", x5), ("d", x10)):
        (tmp_path / name).mkdir()
        df.to_csv(tmp_path / name / "per_run.csv", index=False)
    assert script.main(["--combine", str(tmp_path / "c"), str(tmp_path / "d"), "--out",
                        str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "table.md").read_text()
    # the cells presets mix a quarter at x5 and not at x10, where only the best is said
    assert "- x5: the preset's w = 0.25 against w = 0: RMSE better (0.1150 vs 0.1250" in text
    assert "- x10: best fixed weight: RMSE w = 0," in text


def test_test_strips_keep_the_right_part_of_each_held_out_section_at_factor_multiples():
    from diffst.benchmark.data import make_fold
    from diffst.data.simulate import simulate_tissue

    train, test = (simulate_tissue(seed=s, size_um=240.0, n_genes=4) for s in (1, 2))
    fold = make_fold("a->b", [train], [test], 4)
    cut = _script().with_test_strips(fold, 0.3, 5)
    (whole,), (strip,) = fold.test, cut.test
    assert strip.shape[0] == whole.shape[0] and strip.shape[1] < whole.shape[1]
    assert (whole.shape[1] - strip.shape[1]) % 5 == 0 and cut.train == fold.train
    assert (strip.expr == whole.expr[:, :, -strip.shape[1]:]).all()
    with pytest.raises(ValueError, match="--test-strip"):
        _script().with_test_strips(fold, 1.0, 5)

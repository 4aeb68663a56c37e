"""The benchmark harness (quick preset) and the histology-regression baseline.

Runtime: about 15 s on 2 idle cores (the HER2ST test adds about 10 s when ../shared exists).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA, make_sample, tiny_config
from PIL import Image

from diffst.baselines import BASELINES
from diffst.baselines.regression import HistologyRegression
from diffst.benchmark import (
    ABLATION_LABELS,
    METHOD_LABELS,
    Fold,
    ablation_key,
    get_preset,
    make_folds,
    make_method,
    method_label,
    patch_cells,
    run_benchmark,
    win_rates,
)
from diffst.data.lr import simulate_lr
from diffst.data.sample import SampleError
from diffst.metrics import METRIC_COLUMNS
from diffst.metrics import evaluate as score_maps
from diffst.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_benchmark("simulated", None, "holdout", "quick", out, progress=False)
    finally:
        torch.set_num_threads(before)
    return out, summary


def test_quick_run_writes_table_csv_json_and_figures(quick_run):
    out, summary = quick_run
    table = (out / "table.md").read_text(encoding="utf-8")
    for key in METHOD_LABELS:
        assert f"| {METHOD_LABELS[key]} |" in table
    for label in ABLATION_LABELS.values():
        assert f"Diff-ST {label}" in table
    assert "## x5" in table and "## x10" in table
    assert "Ablations at x5" in table and "Ablations at x10" not in table  # first factor only
    assert "do not edit the numbers by hand" in table
    stored = json.loads((out / "summary.json").read_text(encoding="utf-8"))  # strict JSON
    assert stored["factors"] == [5, 10] and stored["dataset"]["simulated"] is True
    assert stored["machine"]["cpu_count"] >= 1 and stored["machine"]["torch"] == torch.__version__
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) == 2
    for p in pngs:
        with Image.open(p) as img:
            assert img.size[0] > 100 and img.size[1] > 100


def test_quick_run_scores_every_method_with_finite_metrics(quick_run):
    out, summary = quick_run
    df = pd.read_csv(out / "per_gene.csv")
    n_genes = len(summary["dataset"]["genes"])
    main = set(METHOD_LABELS)
    ablated = {ablation_key(p) for p in ABLATION_LABELS}
    assert set(df.loc[df["factor"] == 5, "method"]) == main | ablated
    assert set(df.loc[df["factor"] == 10, "method"]) == main
    assert len(df) == (len(main) + len(ablated)) * n_genes + len(main) * n_genes
    assert np.isfinite(df[METRIC_COLUMNS].to_numpy(np.float64)).all()
    for f in ("5", "10"):
        means = summary["results"][f]["means"]
        for key, row in means.items():
            assert all(math.isfinite(row[m]) for m in (*METRIC_COLUMNS, "gene_corr_error"))
            assert row["fit_s"] >= 0 and row["predict_s"] > 0, key
        for per_metric in summary["results"][f]["win_rates"].values():
            assert all(0 <= v["win_rate"] <= 1 and 0 <= v["p"] <= 1 for v in per_metric.values())


def test_harness_scores_match_scoring_a_baseline_directly(quick_run):
    """The CSV holds exactly what metrics.evaluate gives for the pooled held-out strip."""
    out, summary = quick_run
    from diffst.data.simulate import simulate_tissue
    from diffst.demo import split_holdout

    preset = get_preset("quick", "cells")
    tissue = simulate_tissue(seed=0, size_um=preset.size_um, n_genes=preset.n_genes)
    _, test = split_holdout(tissue, preset.holdout_fraction, 10)
    h, w = test.shape
    lr = simulate_lr(test, 5)
    pred = BASELINES["bicubic"](lr, 5, (lr.shape[0] * 5, lr.shape[1] * 5))[:, :h, :w]
    expected = score_maps(test.expr, pred, test.mask, test.genes)
    df = pd.read_csv(out / "per_gene.csv")
    got = df[(df["factor"] == 5) & (df["method"] == "bicubic")].set_index("gene")
    np.testing.assert_allclose(got.loc[expected.index, "rmse"], expected["rmse"], rtol=1e-5)
    np.testing.assert_allclose(got.loc[expected.index, "pcc"], expected["pcc"], rtol=1e-5)


def test_script_wrapper_prints_the_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("run_benchmark",
                                                  ROOT / "benchmarks" / "run_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(["--preset", "quick", "--factors", "5", "--methods",
                      "spot_constant,bicubic", "--no-ablations", "--quiet", "--out",
                      str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0 and "| Bicubic |" in printed and "| Spot-constant |" in printed
    assert "Diff-ST" not in printed.split("## x5")[1].split("Machine")[0]
    assert (tmp_path / "table.md").is_file()


def test_fixed_seed_gives_identical_scores(tmp_path):
    kw = dict(methods=["regression", "diffst"], ablations=False, progress=False)
    run_benchmark("simulated", [5], "holdout", "quick", tmp_path / "a", **kw)
    run_benchmark("simulated", [5], "holdout", "quick", tmp_path / "b", **kw)
    a, b = (pd.read_csv(tmp_path / x / "per_gene.csv") for x in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)


# ---------------------------------------------------------------------------- pieces
def test_win_rates_by_hand():
    genes = ["a", "b", "c", "d"]
    rows = []
    for method, rmse in (("diffst", [0.1, 0.1, 0.1, 0.5]), ("bicubic", [0.2, 0.3, 0.2, 0.4])):
        for g, v in zip(genes, rmse, strict=True):
            rows.append({"fold": "f", "test": "t", "gene": g, "method": method, "rmse": v})
    wins = win_rates(pd.DataFrame(rows), metrics=("rmse",))
    assert wins["bicubic"]["rmse"]["win_rate"] == pytest.approx(0.75)  # lower RMSE on a, b, c
    assert 0 < wins["bicubic"]["rmse"]["p"] <= 1


def test_patch_sizes_follow_the_preset():
    spots = get_preset("default", "spots")
    assert patch_cells(spots, 200.0, 2) == 8 and patch_cells(spots, 200.0, 3) == 9
    cells = get_preset("default", "cells")
    assert patch_cells(cells, 8.0, 5) == 40 and patch_cells(cells, 8.0, 10) == 40
    assert patch_cells(get_preset("full", "cells"), 8.0, 5) == 40  # api default 8 x factor


def test_folds_and_bad_arguments():
    samples = [make_sample(seed=i) for i in range(3)]
    loo = make_folds(samples, "loo", get_preset("quick", "cells"), [5])
    assert [f.test[0].name for f in loo] == ["toy0", "toy1", "toy2"]
    assert all(len(f.train) == 2 and f.test[0].name not in [s.name for s in f.train] for f in loo)
    (hold,) = make_folds(samples, "holdout", get_preset("quick", "cells"), [5])
    assert hold.test[0].name == "toy2"
    (named,) = make_folds(samples, "toy0", get_preset("quick", "cells"), [5])
    assert isinstance(named, Fold) and named.test[0].name == "toy0"
    with pytest.raises(ValueError, match="loo"):
        make_folds(samples, "nope", get_preset("quick", "cells"), [5])
    with pytest.raises(ValueError, match="several sections"):
        make_folds(samples[:1], "loo", get_preset("quick", "cells"), [5])
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge", "cells")
    with pytest.raises(ValueError, match="unknown preset settings"):
        get_preset("quick", "cells", {"stepz": 3})
    with pytest.raises(ValueError, match="unknown method"):
        make_method("xfuse", get_preset("quick", "cells"), 0)
    with pytest.raises(ValueError, match="unknown method"):
        run_benchmark("simulated", [5], "holdout", "quick", "unused", methods=["xfuse"])
    with pytest.raises(ValueError, match="simulated"):
        run_benchmark("simulated", [5], "loo", "quick", "unused", progress=False)
    assert method_label(ablation_key("graph")) == "Diff-ST w/o CIGC-Graph"


# ---------------------------------------------------------------------------- regression
def _regression(steps: int = 30) -> HistologyRegression:
    samples = [make_sample(seed=0), make_sample(seed=1)]
    tc = TrainConfig(steps=steps, batch_size=4, lr=3e-3, patch=10, work_um_per_px=2.0, seed=0,
                     ema_decay=0.9)
    return HistologyRegression(samples, samples[0].genes, 5, tiny_config(), tc)


def test_regression_baseline_lowers_its_loss():
    reg = _regression()
    batch = reg.draw_batch()
    reg.model.eval()
    with torch.no_grad():
        before = float(reg.loss(reg.model, batch, 1.0))
    reg.fit(progress=False)
    reg.model.eval()
    with torch.no_grad():
        after = float(reg.loss(reg.model, batch, 1.0))
    assert after < 0.8 * before


def test_regression_predicts_whole_samples():
    reg = _regression(steps=3)
    reg.fit(progress=False)
    truth = make_sample(seed=2, size=27)  # not a multiple of the factor: padded raster
    lr = simulate_lr(truth, 5)
    hr_mask = np.zeros((30, 30), bool)
    hr_mask[:27, :27] = truth.mask
    pred = reg.predict(lr, hr_mask)
    assert pred.shape == (4, 30, 30) and pred.dtype == np.float32
    assert np.isfinite(pred).all() and (pred >= 0).all()
    assert not pred[:, ~hr_mask].any() and pred[:, hr_mask].sum() > 0
    with pytest.raises(SampleError, match="µm"):
        reg.predict(truth)  # HR cells, not LR cells
    with pytest.raises(NotImplementedError, match="regression"):
        reg.export_model("unused.pt")


# ---------------------------------------------------------------------------- HER2ST
@pytest.mark.slow
def test_her2st_quick_run(tmp_path):
    root = SHARED_DATA / "her2st"
    if not root.is_dir():
        pytest.skip(f"HER2ST data not found at {root} (../shared/data/her2st)")
    summary = run_benchmark("her2st", [2], "holdout", "quick", tmp_path,
                            methods=["bicubic", "diffst"], ablations=False, progress=False,
                            overrides={"n_genes": 4})
    (fold,) = summary["dataset"]["folds"]
    assert [t["name"] for t in fold["test"]] == ["C6"]
    assert sorted(t["name"] for t in fold["train"]) == ["C2", "C3", "C4", "C5"]
    assert summary["dataset"]["profile"] == "spots" and fold["test"][0]["cell_um"] == 200.0
    assert summary["train_config"]["2"]["patch"] == 8
    df = pd.read_csv(tmp_path / "per_gene.csv")
    assert set(df["method"]) == {"bicubic", "diffst"} and df["gene"].nunique() == 4
    assert np.isfinite(df[["rmse", "pcc", "ssim", "psnr"]].to_numpy(np.float64)).all()
    assert (tmp_path / "figures" / "her2st_C6_x2.png").is_file()

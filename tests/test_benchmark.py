"""The benchmark harness (quick preset) and the histology-regression baseline.

Runtime: about 15 s on 2 idle cores (the HER2ST test adds about 10 s when ../shared exists).
"""

from __future__ import annotations

import importlib.util
import json
import math
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHARED_DATA, make_sample, tiny_config
from PIL import Image

from diffst.baselines import BASELINES
from diffst.baselines.regression import HistologyRegression, regress
from diffst.benchmark import (
    ABLATION_LABELS,
    METHOD_LABELS,
    Fold,
    ablation_key,
    compare,
    get_preset,
    make_method,
    method_label,
    patch_cells,
    prediction_mask,
    run_benchmark,
    run_fold,
    section_folds,
    training_genes,
    with_consistency,
)
from diffst.benchmark.data import load_benchmark_data
from diffst.benchmark.methods import REFERENCE_METHODS, consistent_key
from diffst.benchmark.report import ablation_effects, method_stats, refresh_outputs
from diffst.benchmark.run import depth_shifted
from diffst.data.lr import padded_mask, pool_sum, simulate_lr, thin_counts
from diffst.data.sample import SampleError
from diffst.metrics import METRIC_COLUMNS
from diffst.metrics import evaluate as score_maps
from diffst.model.istar_like import istar_settings
from diffst.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ALL_KEYS = [k2 for k in METHOD_LABELS
            for k2 in ([k] if k in REFERENCE_METHODS else [k, consistent_key(k)])]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_benchmark("simulated", None, "holdout", "quick", out, seeds=[0, 1],
                                progress=False)
    finally:
        torch.set_num_threads(before)
    return out, summary


def test_quick_run_writes_table_csv_json_and_figures(quick_run):
    out, summary = quick_run
    table = (out / "table.md").read_text(encoding="utf-8")
    for key in ALL_KEYS:
        assert f"| {method_label(key)} |" in table, key
    for label in ABLATION_LABELS.values():
        assert f"Diff-ST {label} + C" in table
    assert "## x5" in table and "## x10" in table
    assert "Ablations at x5" in table and "Ablations at x10" not in table  # first factor only
    assert "In words (generated" in table and "do not edit the numbers by hand" in table
    assert " ± " in table  # two seeds: mean ± sd
    raw = (out / "summary.json").read_text(encoding="utf-8")
    stored = json.loads(raw)  # strict JSON
    assert stored["factors"] == [5, 10] and stored["dataset"]["simulated"] is True
    assert stored["seeds"] == [0, 1] and stored["stage"] == "test"
    assert set(stored["protocol"]) >= {"hr_mask", "consistency", "gene_selection", "seeds"}
    assert stored["machine"]["torch"] == torch.__version__
    for text in (table, raw):  # no path of the machine that ran it
        assert str(out) not in text and str(Path.home()) not in text and "/work/" not in text
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) == 2  # first seed only
    for p in pngs:
        with Image.open(p) as img:
            assert img.size[0] > 100 and img.size[1] > 100


def test_quick_run_scores_every_method_raw_and_consistent(quick_run):
    out, summary = quick_run
    df = pd.read_csv(out / "per_gene.csv")
    n_genes = summary["dataset"]["n_genes"]
    ablated = {k2 for p in ABLATION_LABELS
               for k2 in (ablation_key(p), consistent_key(ablation_key(p)))}
    assert set(df.loc[df["factor"] == 5, "method"]) == set(ALL_KEYS) | ablated
    assert set(df.loc[df["factor"] == 10, "method"]) == set(ALL_KEYS)
    assert set(df["seed"]) == {0, 1}
    per_seed = (len(ALL_KEYS) + len(ablated)) * n_genes + len(ALL_KEYS) * n_genes
    assert len(df) == 2 * per_seed
    assert np.isfinite(df[METRIC_COLUMNS].to_numpy(np.float64)).all()
    for f in ("5", "10"):
        res = summary["results"][f]
        for key, row in res["stats"].items():
            assert row["rmse"]["n"] == 2 and math.isfinite(row["rmse"]["sd"]), key
        for key, per_metric in res["comparisons"].items():
            assert key.endswith("+C") or key in ("gene_mean", "diffst")
            assert all(v["runs"] == 2 and v["sections"] == 2 for v in per_metric.values())


def test_simulated_test_and_validation_tissues_differ_from_the_demo():
    preset = get_preset("quick", "cells")
    test, _ = load_benchmark_data("simulated", "holdout", "test", "quick", [5], seed=0)
    val, _ = load_benchmark_data("simulated", "holdout", "validation", "quick", [5], seed=0)
    names = {s.name for d in (test, val) for f in d.folds for s in (*f.train, *f.test)}
    assert "simulated_seed0" not in names  # the demo's tissue is in neither stage
    t_names = {s.name for f in test.folds for s in f.test}
    v_names = {s.name for f in val.folds for s in (*f.train, *f.test)}
    assert not t_names & v_names and preset.holdout_fraction > 0


def test_harness_scores_match_scoring_a_baseline_directly(quick_run):
    """The CSV holds what metrics.evaluate gives for bicubic (raw and + C) on the LR input."""
    out, summary = quick_run
    data, _ = load_benchmark_data("simulated", "holdout", "test", "quick", [5, 10], seed=0)
    test = data.folds[0].test[0]
    h, w = test.shape
    lr = simulate_lr(test, 5)
    given = prediction_mask(lr, 5)
    raw = BASELINES["bicubic"](lr, 5, given.shape) * given
    df = pd.read_csv(out / "per_gene.csv")
    sel = (df["factor"] == 5) & (df["seed"] == 0)
    for key, pred in (("bicubic", raw), ("bicubic+C", with_consistency(raw, lr, given, 5))):
        expected = score_maps(test.expr, pred[:, :h, :w], test.mask, test.genes)
        got = df[sel & (df["method"] == key)].set_index("gene")
        np.testing.assert_allclose(got.loc[expected.index, "rmse"], expected["rmse"], rtol=1e-5)
        np.testing.assert_allclose(got.loc[expected.index, "pcc"], expected["pcc"], rtol=1e-5)


class _Spy:
    """A method that records the HR mask it is given and predicts a fixed pattern."""

    seen: list[np.ndarray] = []

    def fit(self, train, genes, factor):
        self.factor = factor

    def predict(self, lr, hr_mask):
        _Spy.seen.append(hr_mask.copy())
        g = lr.expr.shape[0]
        ramp = np.arange(hr_mask.size, dtype=np.float32).reshape(hr_mask.shape) % 7 + 1
        return np.broadcast_to(ramp, (g, *hr_mask.shape)) * hr_mask


def test_no_method_sees_the_truth_mask_and_consistency_is_the_same_step():
    train = [make_sample(seed=0)]
    truth = make_sample(seed=1)
    truth.mask[:, :3] = False  # truth mask differs from its LR mask repeated
    fold = Fold("f", train, [truth], list(truth.genes))
    _Spy.seen = []
    res = run_fold(fold, 5, ["spy"], get_preset("quick", "cells"), 0,
                   make=lambda *a, **k: _Spy())
    lr = simulate_lr(truth, 5)
    (given,) = _Spy.seen
    np.testing.assert_array_equal(given, prediction_mask(lr, 5))
    assert not np.array_equal(given, padded_mask(truth.mask, 5))  # the truth mask is not given
    raw, fixed = res.maps[truth.name]["spy"], res.maps[truth.name]["spy+C"]
    h, w = truth.shape
    expected = with_consistency(_Spy().predict(lr, given), lr, given, 5)[:, :h, :w]
    np.testing.assert_allclose(fixed, expected, rtol=1e-6)
    pooled = pool_sum(np.pad(fixed, ((0, 0), (0, (-h) % 5), (0, (-w) % 5))), 5)
    np.testing.assert_allclose(pooled[:, lr.mask], lr.expr[:, lr.mask], rtol=1e-4)
    assert not np.allclose(raw, fixed)


class _DepthSpy(_Spy):
    """Records the training samples' totals and the LR totals it is given."""

    train_totals: list[float] = []
    lr_totals: list[float] = []

    def fit(self, train, genes, factor):
        super().fit(train, genes, factor)
        _DepthSpy.train_totals = [float(t.expr.sum()) for t in train]

    def predict(self, lr, hr_mask):
        _DepthSpy.lr_totals.append(float(lr.expr.sum()))
        return super().predict(lr, hr_mask)


def test_depth_shift_thins_only_the_test_section_and_scores_against_the_expected_counts():
    train = [make_sample(seed=0)]
    truth = make_sample(seed=1)
    fold = Fold("f", train, [truth], list(truth.genes))
    before = float(train[0].expr.sum())
    _DepthSpy.lr_totals = []
    res = run_fold(fold, 5, ["spy"], get_preset("quick", "cells"), 3,
                   make=lambda *a, **k: _DepthSpy(), thin=0.1)
    assert _DepthSpy.train_totals == [before]  # training sections untouched
    (lr_total,) = _DepthSpy.lr_totals
    full = float(truth.expr.sum())
    assert abs(lr_total - 0.1 * full) < 4 * math.sqrt(0.1 * 0.9 * full)  # a binomial draw
    # scored against 0.1 x truth: the same table as scoring that target directly
    lr, target = depth_shifted(truth, 5, 0.1, 3)
    assert float(lr.expr.sum()) == lr_total
    np.testing.assert_allclose(target.expr, truth.expr * 0.1, rtol=1e-6)
    pred = res.maps[truth.name]["spy+C"]
    direct = score_maps(target.expr, pred, truth.mask, truth.genes)
    got = res.per_gene[res.per_gene["method"] == "spy+C"].set_index("gene")
    np.testing.assert_allclose(got.loc[direct.index, "rmse"], direct["rmse"], rtol=1e-6)
    # thin = 1 is the section as measured
    lr1, target1 = depth_shifted(truth, 5, 1.0, 3)
    np.testing.assert_array_equal(lr1.expr, simulate_lr(truth, 5).expr)
    assert target1 is truth


def test_thin_counts_is_a_binomial_draw_of_integer_counts():
    sample = make_sample(seed=2)
    thin = thin_counts(sample, 0.25, seed=0)
    assert np.all(thin.expr <= sample.expr) and np.array_equal(thin.expr, np.rint(thin.expr))
    ratio = thin.expr.sum() / sample.expr.sum()
    assert 0.2 < ratio < 0.3
    assert thin_counts(sample, 1.0) is sample
    np.testing.assert_array_equal(thin_counts(sample, 0.25, seed=0).expr, thin.expr)
    with pytest.raises(SampleError, match="integer counts"):
        thin_counts(replace(sample, expr=sample.expr + 0.5), 0.5)
    with pytest.raises(ValueError, match="fraction"):
        thin_counts(sample, 0.0)


def test_gene_selection_ignores_the_test_section():
    a, b, c = (make_sample(seed=i) for i in range(3))
    genes = training_genes([a, b], [c], 2)
    c.expr[-1] *= 1000  # the test section's counts change nothing
    assert training_genes([a, b], [c], 2) == genes
    totals = a.expr[:, a.mask].sum(1) + b.expr[:, b.mask].sum(1)
    assert genes == [a.genes[i] for i in np.argsort(-totals, kind="stable")[:2]]


def test_validation_folds_never_hold_the_test_section():
    samples = [make_sample(seed=i) for i in range(4)]
    preset = get_preset("quick", "cells")
    for test_fold, val_fold in zip(section_folds(samples, "loo", "test", preset, [5]),
                                   section_folds(samples, "loo", "validation", preset, [5]),
                                   strict=True):
        held = test_fold.test[0].name
        used = [s.name for s in (*val_fold.train, *val_fold.test)]
        assert held not in used and val_fold.test[0].name != held
        assert set(used) | {held} == {s.name for s in samples}
    one = make_sample(seed=0, size=60)
    (test,) = section_folds([one], "holdout", "test", preset, [5, 10])
    (val,) = section_folds([one], "holdout", "validation", preset, [5, 10])
    test_cols = test.test[0].shape[1]
    assert val.train[0].shape[1] + val.test[0].shape[1] + test_cols == 60
    assert test.train[0].shape[1] == 60 - test_cols


def test_statistics_by_hand():
    rows = []
    for seed in (0, 1):
        for test, (ref, other) in {"A": (0.1, 0.2), "B": (0.3, 0.2), "C": (0.1, 0.4)}.items():
            for method, v in (("diffst+C", ref + seed / 100), ("bicubic+C", other)):
                rows.append({"factor": 2, "seed": seed, "fold": f"test_{test}", "test": test,
                             "method": method, "rmse": v, "ssim": 0.5, "pcc": 0.5,
                             "psnr": 10.0})
    units = pd.DataFrame(rows)
    c = compare(units, metrics=("rmse",))["bicubic+C"]["rmse"]
    assert (c["wins"], c["runs"], c["section_wins"], c["sections"]) == (4, 6, 2, 3)
    from scipy import stats
    p = stats.ttest_rel([0.105, 0.305, 0.105], [0.2, 0.2, 0.4]).pvalue
    assert c["p"] == pytest.approx(p)
    units["fit_s"] = units["predict_s"] = 0.0
    for m in METRIC_COLUMNS + ["gene_corr_error"]:
        if m not in units:
            units[m] = np.nan
    st = method_stats(units)
    v = [0.2, 0.2, 0.4] * 2
    assert st["bicubic+C"]["rmse"]["mean"] == pytest.approx(np.mean(v))
    assert st["bicubic+C"]["rmse"]["sd"] == pytest.approx(np.std(v, ddof=1))


def test_ablation_effects_by_hand():
    # seed 0: ablation worse by 0.02 and 0.04 on the two sections (mean 0.03);
    # seed 1: better by 0.01 on both (mean -0.01)
    rows = []
    for seed, deltas in ((0, (0.02, 0.04)), (1, (-0.01, -0.01))):
        for test, delta in zip("AB", deltas, strict=True):
            for method, v in (("diffst+C", 0.1), ("diffst-no_graph+C", 0.1 + delta)):
                rows.append({"factor": 2, "seed": seed, "fold": f"test_{test}", "test": test,
                             "method": method, "rmse": v, "ssim": 0.5, "pcc": 0.5})
    effect = ablation_effects(pd.DataFrame(rows))["diffst-no_graph+C"]
    assert effect["rmse"]["mean"] == pytest.approx(0.01)
    assert effect["rmse"]["sd"] == pytest.approx(np.std([0.03, -0.01], ddof=1))
    assert (effect["rmse"]["seeds"], effect["rmse"]["worse"]) == (2, 1)
    assert (effect["ssim"]["mean"], effect["ssim"]["worse"]) == (0.0, 0)


def test_a_diffst_ensemble_averages_its_members_maps():
    train = [make_sample(seed=0, size=40), make_sample(seed=1, size=40)]
    test = make_sample(seed=2, size=40)
    lr, hr_mask = simulate_lr(test, 5), test.mask
    preset = get_preset("quick", "cells", {"n_models": 2})
    ensemble = make_method("diffst", preset, 3)
    ensemble.fit(train, train[0].genes, 5)
    assert ensemble.member_seeds() == [3, 1003]
    assert [t.tc.seed for t in ensemble.trainers] == [3, 1003]
    together = ensemble.predict(lr, hr_mask)
    maps = []
    for seed in (3, 1003):
        single = make_method("diffst", get_preset("quick", "cells"), seed)
        single.fit(train, train[0].genes, 5)
        maps.append(single.predict(lr, hr_mask))
    assert not np.allclose(maps[0], maps[1])
    np.testing.assert_allclose(together, (maps[0] + maps[1]) / 2, rtol=1e-5, atol=1e-6)


def test_refreshing_a_run_folder_adds_the_ablation_effects_without_changing_scores(tmp_path):
    out = tmp_path / "run"
    run_benchmark("simulated", [5], "holdout", "quick", out, methods=["bicubic", "diffst"],
                  ablations=True, seeds=[0], progress=False)
    summary = json.loads((out / "summary.json").read_text())
    # the iStar-like settings the run used, as the quick preset sets them on the defaults
    expected = {**istar_settings(), "n_models": 1, "steps": 20}
    assert summary["istar_settings"] == json.loads(json.dumps(expected))
    del summary["results"]["5"]["ablation_effects"]  # as a folder written before it existed
    (out / "summary.json").write_text(json.dumps(summary))
    old_table = (out / "table.md").read_text()
    refreshed = refresh_outputs(out)
    assert set(refreshed["results"]["5"]["ablation_effects"]) == {
        f"diffst-no_{part}+C" for part in ("disentangle", "modulation", "attention", "graph")}
    assert refreshed["results"]["5"]["stats"] == summary["results"]["5"]["stats"]
    assert (out / "table.md").read_text() == old_table
    assert "Effect of switching each part off at x5" in old_table


def test_script_wrapper_prints_the_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("run_benchmark",
                                                  ROOT / "benchmarks" / "run_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(["--preset", "quick", "--factors", "5", "--methods",
                      "spot_constant,bicubic", "--no-ablations", "--quiet", "--out",
                      str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0 and "| Bicubic + C |" in printed and "| Spot-constant |" in printed
    assert "| Diff-ST" not in printed.split("## x5")[1].split("Machine")[0]
    assert (tmp_path / "table.md").is_file()


def test_fixed_seed_gives_identical_scores(tmp_path):
    kw = dict(methods=["regression", "diffst"], ablations=False, progress=False)
    run_benchmark("simulated", [5], "holdout", "quick", tmp_path / "a", **kw)
    run_benchmark("simulated", [5], "holdout", "quick", tmp_path / "b", **kw)
    a, b = (pd.read_csv(tmp_path / x / "per_gene.csv") for x in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)


# ---------------------------------------------------------------------------- pieces
def test_patch_sizes_follow_the_preset():
    spots = get_preset("default", "spots")
    assert patch_cells(spots, 200.0, 2) == 8 and patch_cells(spots, 200.0, 3) == 9
    cells = get_preset("default", "cells")
    assert patch_cells(cells, 8.0, 5) == 40 and patch_cells(cells, 8.0, 10) == 40
    assert patch_cells(get_preset("full", "cells"), 8.0, 5) == 40  # api default 8 x factor


def test_cells_presets_train_on_smaller_patches_when_the_training_tissue_is_small():
    from diffst.benchmark.report import overridden

    cells = get_preset("short", "cells")  # 320 µm: 40 cells of 8 µm at x5 and at x10
    assert patch_cells(cells, 8.0, 5, tissue_cells=4 * 40**2) == 40
    assert patch_cells(cells, 8.0, 5, tissue_cells=4 * 40**2 - 1) == 20  # 160 µm
    assert patch_cells(cells, 8.0, 10, tissue_cells=2447) == 20  # the Xenium training strip
    assert patch_cells(cells, 16.0, 10, tissue_cells=100) == 20  # never under 2 x 2 LR cells
    assert patch_cells(cells, 16.0, 5, tissue_cells=100) == 10
    assert patch_cells(cells, 8.0, 5) == 40  # tissue not known: no rule
    full = get_preset("full", "cells")  # 8 LR cells per patch: 640 µm at x10
    assert patch_cells(full, 8.0, 5, tissue_cells=100) == 20
    assert patch_cells(full, 8.0, 10, tissue_cells=23000) == 80  # the area, not the side
    assert patch_cells(get_preset("short", "spots"), 200.0, 2, tissue_cells=10) == 8
    given = get_preset("short", "cells", {"patch_um": 320.0})  # an explicit side holds
    assert patch_cells(given, 8.0, 5, tissue_cells=10) == 40
    assert overridden(given)["patch_um"] == 320.0  # and the run's command repeats it


def test_the_small_data_rule_counts_the_tissue_of_every_training_section():
    from diffst.benchmark.presets import train_config

    cells = get_preset("short", "cells").at(5)
    small = make_sample(size=60)  # 57 x 60 tissue cells: fewer than 4 patches of 40 x 40
    assert train_config(cells, [small], 5, seed=0).patch == 20
    two = [small, make_sample(seed=1, size=60)]
    assert train_config(cells, two, 5, seed=0).patch == 40


def test_cells_presets_focus_on_the_last_noise_step_at_x10_for_large_training_data():
    from diffst.benchmark.presets import LARGE_DATA_T_FOCUS_X10, train_config
    from diffst.benchmark.report import overridden

    small = make_sample(size=60)  # 57 x 60 tissue cells: fewer than 4 patches of 40 x 40
    large = [small, make_sample(seed=1, size=60)]
    for name in ("short", "default", "full"):
        cells = get_preset(name, "cells")
        assert train_config(cells.at(10), large, 10, seed=0).t_focus == LARGE_DATA_T_FOCUS_X10
        assert train_config(cells.at(10), [small], 10, seed=0).t_focus == 0.0
        assert train_config(cells.at(5), large, 5, seed=0).t_focus == 0.0  # x10 only
    spots = get_preset("short", "spots")
    assert all(train_config(spots.at(f), [small] * 40, f, seed=0).t_focus == 0.0
               for f in (2, 3))
    given = get_preset("short", "cells", {"t_focus": 0.0})  # an explicit value holds
    assert train_config(given.at(10), large, 10, seed=0).t_focus == 0.0
    assert overridden(given) == {"t_focus": 0.0}  # and the run's command repeats it
    focused = get_preset("short", "cells", {"t_focus": 0.2})
    assert train_config(focused.at(10), [small], 10, seed=0).t_focus == 0.2
    assert train_config(focused.at(5), large, 5, seed=0).t_focus == 0.2
    assert overridden(get_preset("short", "cells")) == {}


def test_the_default_cells_preset_trains_longer_on_large_training_data():
    from diffst.benchmark.presets import LARGE_DATA_STEPS, LARGE_DATA_T_FOCUS_X10, train_config
    from diffst.benchmark.report import overridden

    small = make_sample(size=60)  # 57 x 60 tissue cells: fewer than 4 patches of 40 x 40
    large = [small, make_sample(seed=1, size=60)]
    default = get_preset("default", "cells")
    for factor in (5, 10):
        assert train_config(default.at(factor), large, factor, seed=0).steps == LARGE_DATA_STEPS
    assert train_config(default.at(5), [small], 5, seed=0).steps == 500
    assert train_config(default.at(10), [small], 10, seed=0).steps == LARGE_DATA_STEPS  # any
    both = train_config(default.at(10), large, 10, seed=0)  # x10 adds its own rule to it
    assert (both.steps, both.t_focus) == (LARGE_DATA_STEPS, LARGE_DATA_T_FOCUS_X10)
    assert both.checkpoint_every == LARGE_DATA_STEPS
    short = get_preset("short", "cells")  # the CPU-time preset keeps its length
    assert [train_config(short.at(f), large, f, seed=0).steps for f in (5, 10)] == [200, 200]
    given = get_preset("default", "cells", {"steps": 300})  # an explicit length holds
    assert [train_config(given.at(f), large, f, seed=0).steps for f in (5, 10)] == [300, 300]
    assert train_config(given.at(10), large, 10, seed=0).t_focus == LARGE_DATA_T_FOCUS_X10
    assert overridden(given) == {"steps": 300}


def test_the_cells_presets_train_on_larger_batches_at_x5_and_on_large_data_at_x10():
    from diffst.benchmark.presets import BATCH_X5, LARGE_DATA_BATCH_X10, train_config
    from diffst.benchmark.report import overridden

    small = [make_sample(size=60)]  # 57 x 60 tissue cells: fewer than 4 patches of 40 x 40
    large = [small[0], make_sample(seed=1, size=60)]
    for name in ("short", "default", "full"):
        cells = get_preset(name, "cells")
        batches = [train_config(cells.at(f), data, f, seed=0).batch_size
                   for f in (5, 10) for data in (small, large)]
        assert batches == [BATCH_X5, BATCH_X5, 8, LARGE_DATA_BATCH_X10]  # small x10 keeps 8
    both = train_config(get_preset("default", "cells").at(10), large, 10, seed=0)
    assert (both.batch_size, both.t_focus, both.steps) == (16, 0.5, 1000)  # x10 large-data rule
    given = get_preset("default", "cells", {"batch_size": 8})  # an explicit batch holds
    assert train_config(given.at(5), small, 5, seed=0).batch_size == 8
    assert train_config(given.at(10), large, 10, seed=0).batch_size == 8
    assert overridden(given) == {"batch_size": 8}  # and is recorded with the run
    assert get_preset("paper", "cells").at(5).batch_size == 8


def test_a_factors_large_data_settings_add_to_the_presets():
    from diffst.benchmark.presets import factor_changes

    by_factor = {10: {"large_data": {"t_focus": 0.5}}, "5": {"grid_shifts": 2}}
    assert factor_changes({}, by_factor, 10, {"steps": 9}) == {
        "large_data": {"steps": 9, "t_focus": 0.5}}
    assert factor_changes({}, by_factor, 5, {"steps": 9}) == {"grid_shifts": 2}
    assert factor_changes({}, {10: {"large_data": {"steps": 3}}}, 10, {"steps": 9}) == {
        "large_data": {"steps": 3}}  # the factor's own value wins
    small = {5: {"small_data": {"batch_size": 16}}}
    assert factor_changes({}, small, 5, {"steps": 9}, {"lr": 0.1}) == {
        "small_data": {"lr": 0.1, "batch_size": 16}}  # small-data settings merge alike


def test_data_size_settings_apply_to_small_or_to_large_training_data():
    from diffst.benchmark.presets import for_data_size

    preset = replace(get_preset("default", "cells"), small_data={"batch_size": 16},
                     large_data={"steps": 1000})
    small, large = for_data_size(preset, 8.0, 100), for_data_size(preset, 8.0, 10**6)
    assert (small.batch_size, small.steps) == (16, 500)
    assert (large.batch_size, large.steps) == (8, 1000)
    assert for_data_size(preset, 8.0, None) is preset  # size not known: no rule


def _recorded_run(preset, sections: list, factor: int) -> dict:
    """The ``summary.json`` (as read back) of a run of ``preset`` trained on ``sections`` (HR
    samples of 8 µm cells) at ``factor``, with what the headline reads."""
    from diffst.benchmark.presets import train_config

    tc = asdict(train_config(preset.at(factor), sections, factor=factor, seed=0))
    return json.loads(json.dumps({
        "preset": asdict(preset), "protocol": {}, "seeds": [0], "factors": [factor],
        "dataset": _dataset_record(sections), "train_config": {str(factor): tc},
        "istar_settings": istar_settings()}))


def _dataset_record(sections: list) -> dict:
    """The ``dataset`` entry of a run's summary with one fold trained on ``sections`` (HR
    samples of 8 µm cells): what the headline reads of the training data's size."""
    cells_in_tissue = sum(int(s.mask.sum()) for s in sections)
    return {"folds": [{"train": [{"cell_um": 8.0, "cells_in_tissue": cells_in_tissue}]}]}


def test_headline_names_a_shorter_training_than_todays_for_the_runs_own_data():
    headline = _headline_script()
    for sections, steps in (([make_sample(size=60)], 500),
                            ([make_sample(size=60), make_sample(seed=1, size=60)], 1000)):
        summary = _recorded_run(get_preset("default", "cells"), sections, factor=5)
        tc = summary["train_config"]["5"]
        assert tc["steps"] == steps
        assert headline.settings(summary, factor=5) == "`default`"
        before = dict(summary, train_config={"5": dict(tc, steps=500)},
                      preset={k: v for k, v in summary["preset"].items() if k != "large_data"})
        assert headline.settings(before, factor=5) == (
            "`default`" + (", 500 steps" if steps == 1000 else ""))


def test_headline_names_the_patch_side_a_run_trained_with_on_its_own_data():
    headline = _headline_script()
    summary = _recorded_run(get_preset("short", "cells"), [make_sample(size=60)], factor=5)
    assert headline.settings(summary, factor=5) == "`short`"
    before = dict(summary, train_config={"5": dict(summary["train_config"]["5"], patch=40)},
                  preset={k: v for k, v in summary["preset"].items()
                          if k != "small_data_patch_um"})
    assert headline.settings(before, factor=5) == "`short`, 320 µm patches"


def test_headline_compares_the_noise_steps_with_todays_rule_for_the_runs_own_data():
    headline = _headline_script()
    for sections, focused in (([make_sample(size=60)], False),
                              ([make_sample(size=60), make_sample(seed=1, size=60)], True)):
        summary = _recorded_run(get_preset("short", "cells"), sections, factor=10)
        tc = summary["train_config"]["10"]
        assert headline.settings(summary, factor=10) == "`short`"
        other = dict(summary, train_config={"10": dict(tc, t_focus=0.0 if focused else 0.5)})
        assert headline.settings(other, factor=10) == (
            "`short`, " + ("uniform noise steps" if focused
                           else "50% of training at the last noise step"))


def test_spots_presets_take_the_base_map_at_x3_and_an_explicit_setting_everywhere():
    short = get_preset("short", "spots")
    assert short.at(3).model["upsampler"] == "istar_like" and short.at(3).self_tune == 0
    assert "upsampler" not in short.at(2).model and short.at(2).self_tune == short.self_tune > 0
    assert short.at(3).model["tissue_px_per_cell"] == 16  # the preset's own setting stays
    for name in ("default", "full"):
        assert get_preset(name, "spots").at(3).model["upsampler"] == "istar_like"
    assert get_preset("paper", "spots").at(3) == get_preset("paper", "spots")
    assert get_preset("paper", "cells").at(5) == get_preset("paper", "cells")
    # a setting given on the command line holds at every factor; the rest of the rule stays
    tuned = get_preset("short", "spots", {"self_tune": 5})
    assert tuned.at(3).self_tune == tuned.at(2).self_tune == 5
    assert tuned.at(3).model["upsampler"] == "istar_like"
    plain = get_preset("short", "spots", {"model": {"upsampler": "bicubic"}})
    assert plain.at(3).model["upsampler"] == "bicubic" and plain.at(3).self_tune == 0
    # the recorded command names such a setting even where it equals the preset's default
    from diffst.benchmark.report import overridden

    assert overridden(tuned) == {"self_tune": 5}
    assert overridden(get_preset("short", "spots", {"self_tune": 30})) == {"self_tune": 30}
    assert overridden(plain) == {"model": {"upsampler": "bicubic"}}
    assert overridden(short) == {}
    with pytest.raises(ValueError, match="upsampler"):
        get_preset("short", "spots", {"by_factor": {3: {"model": {"upsampler": "nearest"}}}})


def test_each_factor_runs_with_its_own_settings(monkeypatch, tmp_path):
    import diffst.benchmark.run as run_module

    seen = {}
    real = run_module.run_fold

    def spy(fold, factor, keys, preset, *args, **kwargs):
        seen[factor] = preset.self_tune
        return real(fold, factor, keys, preset, *args, **kwargs)

    monkeypatch.setattr(run_module, "run_fold", spy)
    summary = run_benchmark("simulated", [5, 10], "holdout", "quick", tmp_path,
                            methods=["bicubic"], ablations=False, progress=False,
                            overrides={"by_factor": {10: {"self_tune": 3}}})
    assert seen == {5: 0, 10: 3}
    assert "at x10: 3 self-tuning steps" in summary["table"]
    assert "Before super-resolving a test slide (at x10), Diff-ST was fine-tuned" in (
        summary["table"])


def test_folds_and_bad_arguments():
    samples = [make_sample(seed=i) for i in range(3)]
    preset = get_preset("quick", "cells")
    loo = section_folds(samples, "loo", "test", preset, [5])
    assert [f.test[0].name for f in loo] == ["toy0", "toy1", "toy2"]
    assert all(len(f.train) == 2 and f.test[0].name not in [s.name for s in f.train] for f in loo)
    (hold,) = section_folds(samples, "holdout", "test", preset, [5])
    assert hold.test[0].name == "toy2"
    (named,) = section_folds(samples, "toy0", "test", preset, [5])
    assert isinstance(named, Fold) and named.test[0].name == "toy0"
    with pytest.raises(ValueError, match="loo"):
        section_folds(samples, "nope", "test", preset, [5])
    with pytest.raises(ValueError, match="several sections"):
        section_folds(samples[:1], "loo", "test", preset, [5])
    with pytest.raises(ValueError, match="stage"):
        section_folds(samples, "loo", "final", preset, [5])
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge", "cells")
    with pytest.raises(ValueError, match="unknown preset settings"):
        get_preset("quick", "cells", {"stepz": 3})
    with pytest.raises(ValueError, match="unknown method"):
        make_method("xfuse", preset, 0)
    with pytest.raises(ValueError, match="unknown method"):
        run_benchmark("simulated", [5], "holdout", "quick", "unused", methods=["xfuse"])
    with pytest.raises(ValueError, match="simulated"):
        run_benchmark("simulated", [5], "loo", "quick", "unused", progress=False)
    with pytest.raises(ValueError, match="--data-root"):
        run_benchmark("her2st", [2], "loo", "quick", "unused", progress=False)
    assert method_label(ablation_key("graph")) == "Diff-ST w/o CIGC-Graph"
    assert method_label("bicubic+C") == "Bicubic + C"


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


def test_regression_adds_the_consistency_loss_as_diffst_does():
    plain, weighted = _regression(steps=1), _regression(steps=1)
    weighted.tc = replace(weighted.tc, consistency_weight=1.0)
    batch = plain.draw_batch()
    with torch.no_grad():
        a = float(plain.loss(plain.model, batch, 1.0))
        b = float(weighted.loss(weighted.model, batch, 1.0))
        cond = weighted.model.encode_batch(batch, batch.tile_valid)
        extra = float(weighted.consistent_mse(regress(weighted.model, cond).float(), batch))
    assert extra > 0
    assert b == pytest.approx(a + extra, rel=1e-5)


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
                            overrides={"n_genes": 4}, data_root=root)
    (fold,) = summary["dataset"]["folds"]
    assert [t["name"] for t in fold["test"]] == ["C6"]
    assert sorted(t["name"] for t in fold["train"]) == ["C2", "C3", "C4", "C5"]
    assert summary["dataset"]["profile"] == "spots" and fold["test"][0]["cell_um"] == 200.0
    assert summary["train_config"]["2"]["patch"] == 8
    df = pd.read_csv(tmp_path / "per_gene.csv")
    assert set(df["method"]) == {"bicubic", "bicubic+C", "diffst", "diffst+C"}
    assert df["gene"].nunique() == 4
    assert np.isfinite(df[["rmse", "pcc", "ssim", "psnr"]].to_numpy(np.float64)).all()
    assert (tmp_path / "figures" / "her2st_C6_x2.png").is_file()
    # genes were chosen on C2-C5 only
    from diffst.io import read_her2st

    train = [read_her2st(root, s, work_um_per_px=50.0) for s in ("C2", "C3", "C4", "C5")]
    test = [read_her2st(root, "C6", work_um_per_px=50.0)]
    assert fold["genes"] == training_genes(train, test, 4)


@pytest.mark.slow
def test_xenium_crop_quick_run(tmp_path):
    root = SHARED_DATA / "xenium_breast_crop"
    if not root.is_dir():
        pytest.skip(f"Xenium crop not found at {root} (../shared/data/xenium_breast_crop)")
    summary = run_benchmark("xenium_crop", [5, 10], "holdout", "quick", tmp_path,
                            methods=["bicubic", "diffst"], ablations=False, progress=False,
                            overrides={"n_genes": 3}, data_root=root)
    (fold,) = summary["dataset"]["folds"]
    assert fold["name"] == "test_strip" and fold["test"][0]["cell_um"] == 8.0
    assert fold["train"][0]["shape"][1] + fold["test"][0]["shape"][1] == 65
    df = pd.read_csv(tmp_path / "per_gene.csv")
    assert set(df["factor"]) == {5, 10} and df["gene"].nunique() == 3
    assert (tmp_path / "figures" / "xenium_crop_xenium_breast_x5.png").is_file()


def test_command_line_records_every_setting_that_changes_the_numbers():
    from diffst.benchmark.report import _command, overridden

    assert overridden(get_preset("short", "spots")) == {}
    changed = get_preset("short", "spots", {"n_samples": 16, "match_depth": True,
                                            "turns": False, "sampler": "ddim", "log1p": True})
    assert overridden(changed)["n_samples"] == 16
    cmd = _command("her2st", [2], "loo", "short", list(METHOD_LABELS), False, [0],
                   "validation", 0.1, changed)
    assert cmd.endswith("--no-ablations --samples 16 --sampler ddim --no-turns --log1p "
                        "--match-depth --thin 0.1")
    plain = _command("simulated", [5], "holdout", "quick", list(METHOD_LABELS), True, [0], "test",
                     preset=get_preset("quick", "cells"))
    assert "--samples" not in plain and "--thin" not in plain and "--match" not in plain


def _preset_overrides(monkeypatch, args: list[str]) -> dict:
    """The preset overrides ``diffst benchmark ARGS`` passes on (nothing is run)."""
    from click.testing import CliRunner

    import diffst.benchmark
    from diffst.cli import main

    seen = {}

    def fake_run(*args, overrides=None, **kwargs):
        seen.update(overrides or {})
        return {"table": ""}

    monkeypatch.setattr(diffst.benchmark, "run_benchmark", fake_run)
    with tempfile.TemporaryDirectory() as work, monkeypatch.context() as here:
        here.chdir(work)  # the default output folder is made here
        result = CliRunner().invoke(main, ["benchmark", *args])
    assert result.exit_code == 0, result.output
    return seen


def test_training_overrides_reach_the_training_and_the_recorded_command(monkeypatch):
    from diffst.benchmark.presets import train_config
    from diffst.benchmark.report import _command

    seen = _preset_overrides(monkeypatch, ["--preset", "short", "--lr", "5e-4", "--batch-size",
                                           "16", "--work-um-per-px", "2", "--ema-warmup", "4",
                                           "--t-focus", "0.5"])
    assert seen == {"lr": 5e-4, "batch_size": 16, "work_um_per_px": 2.0, "ema_warmup": 4.0,
                    "t_focus": 0.5}
    preset = get_preset("short", "spots", seen)
    tc = train_config(preset, [make_sample()], factor=2, seed=0)
    assert (tc.lr, tc.batch_size, tc.work_um_per_px, tc.ema_warmup, tc.t_focus) == (
        5e-4, 16, 2.0, 4.0, 0.5)
    cmd = _command("her2st", [3], "loo", "short", list(METHOD_LABELS), False, [0],
                   "validation", preset=preset)
    assert cmd.endswith("--lr 0.0005 --ema-warmup 4 --t-focus 0.5 --batch-size 16 "
                        "--work-um-per-px 2")


def test_model_settings_change_the_architecture_and_are_recorded(monkeypatch):
    from diffst.benchmark.methods import DiffSTMethod
    from diffst.benchmark.report import _command, _model_sentence, overridden

    seen = _preset_overrides(monkeypatch, ["--preset", "short", "--model", "channels=48",
                                           "--model", "channel_mults=1,2"])
    assert seen == {"model": {"channels": 48, "channel_mults": (1, 2)}}
    preset = get_preset("short", "spots", seen)
    # the preset's own architecture setting stays; the named ones change
    assert preset.model == {"tissue_px_per_cell": 16, "channels": 48, "channel_mults": (1, 2)}
    config = DiffSTMethod(preset, seed=0).model_config
    assert (config.channels, config.channel_mults, config.tissue_px_per_cell) == (48, (1, 2), 16)
    assert overridden(preset) == {"model": {"channels": 48, "channel_mults": (1, 2)}}
    cmd = _command("her2st", [3], "loo", "short", list(METHOD_LABELS), False, [0],
                   "validation", preset=preset)
    assert cmd.endswith("--model channels=48 --model channel_mults=1,2")
    as_json = json.loads(json.dumps(asdict(preset)))  # tuples come back as lists
    assert _model_sentence(as_json) == (" Diff-ST's (and the regression's) network changed "
                                        "with `--model`: channels 48, channel_mults 1,2.")
    assert _model_sentence(json.loads(json.dumps(asdict(get_preset("quick", "cells"))))) == ""


@pytest.mark.parametrize("text, message", [
    ("channels", "expected KEY=VALUE"),
    ("width=3", "unknown model setting 'width'"),
    ("n_genes=5", "set from the data"),
    ("channels=wide", "expected an integer"),
    ("use_gene_graph=maybe", "expected true or false"),
    ("channel_mults=1,x", "expected comma-separated integers"),
])
def test_bad_model_settings_are_refused_with_the_setting_named(text, message):
    from click.testing import CliRunner

    from diffst.cli import main

    result = CliRunner().invoke(main, ["benchmark", "--preset", "quick", "--model", text])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_model_value_the_network_cannot_take_fails_before_training():
    with pytest.raises(ValueError, match="attn_dim 30 must be a multiple of attn_heads 4"):
        get_preset("short", "spots", {"model": {"attn_dim": 30}})


def _headline_script():
    """``benchmarks/headline.py`` as a module."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "headline.py"
    spec = importlib.util.spec_from_file_location("diffst_headline_script", script)
    headline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headline)
    return headline


def test_headline_shows_only_the_factors_asked_for(quick_run):
    out, _ = quick_run
    headline = _headline_script()
    assert headline.run_folder(f"{out}:10") == (out, [10])
    assert headline.run_folder(str(out)) == (out, None)
    both = headline.headline([out])
    only = headline.headline([headline.run_folder(f"{out}:10")])
    assert "| x5 |" in both and "| x10 |" in both
    assert "| x5 |" not in only and "| x10 |" in only
    assert "of 3 factor x metric cells" in only and "of 6 factor x metric cells" in both
    with pytest.raises(SystemExit, match="no factor \\[3\\] in this run"):
        headline.headline([(out, [3])])


def test_headline_names_the_changed_architecture_only():
    from diffst.benchmark.presets import train_config

    headline = _headline_script()
    preset = get_preset("short", "spots", {"model": {"channels": 48}})
    tc = asdict(train_config(preset, [make_sample()], factor=2, seed=0))
    summary = json.loads(json.dumps({"preset": asdict(preset), "protocol": {}, "seeds": [0],
                                     "train_config": {"2": tc},
                                     "istar_settings": istar_settings(**preset.istar)}))
    assert headline.settings(summary) == "`short`, channels 48"
    summary["preset"]["model"] = {"tissue_px_per_cell": 16}
    assert headline.settings(summary) == "`short`"
    del summary["istar_settings"]  # a run from before the iStar-like fit chose its steps
    assert headline.settings(summary) == "`short`, iStar-like without early stopping"


def test_headline_compares_each_factor_with_that_factors_preset():
    from diffst.benchmark.presets import train_config

    headline = _headline_script()
    # a run made before the rule: the x3 settings given on the command line, at every factor
    preset = get_preset("short", "spots", {"self_tune": 0, "model": {"upsampler": "istar_like"}})
    tcs = {str(f): asdict(train_config(preset.at(f), [make_sample()], factor=f, seed=0))
           for f in (2, 3)}
    summary = json.loads(json.dumps({"preset": asdict(preset), "protocol": {}, "seeds": [0],
                                     "train_config": tcs, "istar_settings": istar_settings()}))
    assert headline.settings(summary, factor=3) == "`short`"
    assert headline.settings(summary, factor=2) == ("`short`, no self-tuning, "
                                                   "upsampler istar_like")
    # today's preset as run: its own rule, read back from JSON (string factors)
    summary["preset"] = json.loads(json.dumps(asdict(get_preset("short", "spots"))))
    assert headline.settings(summary, factor=3) == headline.settings(summary, factor=2) == (
        "`short`")
    summary["split"] = "seeds"  # a split other than the usual one is named
    assert headline.settings(summary, factor=2) == "`short`, split seeds"


def test_headline_run_line_names_what_one_factor_did_differently():
    from diffst.benchmark.presets import train_config

    headline = _headline_script()
    preset = get_preset("short", "cells", {"grid_shifts": 2})  # x10 before its 5 x 5 grids
    tcs = {str(f): asdict(train_config(preset.at(f), [make_sample()], factor=f, seed=0))
           for f in (5, 10)}
    summary = json.loads(json.dumps({"preset": asdict(preset), "protocol": {}, "seeds": [0],
                                     "train_config": tcs, "istar_settings": istar_settings(),
                                     "factors": [5, 10],
                                     "dataset": _dataset_record([make_sample()])}))
    run = headline.run_label(summary)
    assert run == "`short`"
    assert headline.factor_notes(summary, run) == "; at x10: 2 x 2 pooling grids"
    summary["train_config"]["5"]["batch_size"] = 8  # x5 before its batches of 16
    assert headline.run_label(summary) == "`short`"  # named at x5 only, not for the run
    assert headline.factor_notes(summary, run) == (
        "; at x5: batch 8; at x10: 2 x 2 pooling grids")
    for f in ("5", "10"):  # a setting of both factors is the run's
        summary["train_config"][f]["steps"] = 100
    assert headline.run_label(summary) == "`short`, 100 steps"
    summary["preset"] = json.loads(json.dumps(asdict(get_preset("short", "cells"))))
    summary["train_config"]["5"].update(batch_size=16, steps=100)
    summary["train_config"]["10"]["grid_shifts"] = 5  # today's preset but the length
    assert headline.factor_notes(summary, headline.run_label(summary)) == ""


def test_spots_presets_mix_in_the_slides_own_fit_by_factor(monkeypatch):
    from diffst.benchmark.report import _command, overridden

    short = get_preset("short", "spots")
    assert short.at(2).istar_mix == 0.5 and short.at(3).istar_mix == "depth"
    assert get_preset("paper", "spots").at(3).istar_mix == 0.0
    for name in ("short", "default", "full"):  # cells: a quarter at x5, no mix at x10
        cells = get_preset(name, "cells")
        assert cells.at(5).istar_mix == 0.25 and cells.at(10).istar_mix == cells.istar_mix == 0
    assert get_preset("paper", "cells").at(5).istar_mix == 0.0
    # given on the command line it holds at every factor and is recorded in the command
    seen = _preset_overrides(monkeypatch, ["--preset", "short", "--istar-mix", "0"])
    assert seen == {"istar_mix": 0.0}
    off = get_preset("short", "spots", seen)
    assert off.at(2).istar_mix == off.at(3).istar_mix == 0.0
    assert off.at(3).model["upsampler"] == "istar_like"  # the rest of the x3 rule stays
    assert overridden(off) == {"istar_mix": 0.0}
    cmd = _command("her2st", [2, 3], "loo", "short", list(METHOD_LABELS), False, [0],
                   "validation", preset=get_preset("short", "spots", {"istar_mix": "depth"}))
    assert cmd.endswith("--istar-mix depth")
    with pytest.raises(ValueError, match="istar_mix must be a number between 0 and 1"):
        get_preset("short", "spots", {"istar_mix": 1.5})


def test_cells_presets_pool_x10_pairs_on_more_grids():
    from diffst.benchmark.report import _factor_sentence, overridden

    for name in ("short", "default", "full"):  # Xenium + simulated validation: x10 gained
        cells = get_preset(name, "cells")
        assert (cells.at(5).grid_shifts, cells.at(10).grid_shifts) == (2, 5)
        assert cells.at(7).grid_shifts == 2  # other factors keep the preset's 2 x 2
    two = get_preset("short", "cells", {"grid_shifts": 2})  # given: holds at every factor
    assert two.at(5).grid_shifts == two.at(10).grid_shifts == 2
    assert two.at(5).istar_mix == 0.25  # the rest of the x5 settings stay
    assert overridden(two) == {"grid_shifts": 2}
    sentence = _factor_sentence(json.loads(json.dumps(asdict(get_preset("short", "cells")))),
                                [5, 10])
    assert "at x10: training pairs pooled on 5 x 5 shifted grids" in sentence


def test_spots_presets_pool_x3_pairs_on_shifted_grids():
    from diffst.benchmark.report import _factor_sentence

    for name in ("short", "default", "full"):  # HER2ST validation: x3 gained, x2 did not
        spots = get_preset(name, "spots")
        assert (spots.at(2).grid_shifts, spots.at(3).grid_shifts) == (None, 2)
    assert get_preset("paper", "spots").at(3).grid_shifts is None
    one = get_preset("short", "spots", {"grid_shifts": 1})  # given: holds at every factor
    assert one.at(2).grid_shifts == one.at(3).grid_shifts == 1
    sentence = _factor_sentence(json.loads(json.dumps(asdict(get_preset("short", "spots")))),
                                [2, 3])
    assert "at x3:" in sentence and "pooled on 2 x 2 shifted grids" in sentence
    assert "at x2" not in sentence


def test_spots_presets_warm_the_ema_up_longer_at_x3_only():
    from diffst.benchmark.presets import EMA_WARMUP_X3, train_config

    headline = _headline_script()
    for name in ("short", "default", "full"):  # HER2ST validation: x3 gained at both seeds
        spots = get_preset(name, "spots")
        assert train_config(spots.at(3), [make_sample()], factor=3, seed=0).ema_warmup == 30
        assert train_config(spots.at(2), [make_sample()], factor=2, seed=0).ema_warmup == 10
    assert EMA_WARMUP_X3 == 30
    assert get_preset("paper", "spots").at(3).ema_warmup is None
    for name in ("short", "default"):  # single-cell-scale data were not checked: unchanged
        assert get_preset(name, "cells").at(5).ema_warmup is None
    given = get_preset("short", "spots", {"ema_warmup": 10})  # given: holds at every factor
    assert given.at(3).ema_warmup == given.at(2).ema_warmup == 10
    # a run made before the x3 warm-up is labelled with what it used
    before = get_preset("short", "spots", {"ema_warmup": 10})
    tcs = {"3": asdict(train_config(before.at(3), [make_sample()], factor=3, seed=0))}
    summary = json.loads(json.dumps({"preset": asdict(get_preset("short", "spots")),
                                     "protocol": {}, "seeds": [0], "train_config": tcs,
                                     "istar_settings": istar_settings()}))
    assert headline.settings(summary, factor=3) == "`short`, EMA warm-up 10"
    summary["train_config"]["3"]["ema_warmup"] = 30.0
    assert headline.settings(summary, factor=3) == "`short`"
    from diffst.benchmark.report import _factor_sentence

    sentence = _factor_sentence(json.loads(json.dumps(asdict(get_preset("short", "spots")))),
                                [2, 3])
    assert "the weights' EMA warmed up over 30 steps" in sentence


def test_cells_presets_take_the_papers_gene_graph_at_x5_only():
    from diffst.benchmark.report import _factor_sentence, network_configs

    for name in ("short", "default", "full"):  # Xenium + simulated validation: x5 gained
        cells = get_preset(name, "cells")
        assert cells.at(5).model.get("graph_edges") == "paper"
        assert "graph_edges" not in cells.at(10).model  # worse at x10 on the Xenium strip
        net = {f: network_configs(cells.at(f).model, ())["model_config"] for f in (5, 10)}
        assert (net[5]["graph_edges"], net[10]["graph_edges"]) == ("paper", "cosine")
    assert "graph_edges" not in get_preset("short", "spots").at(2).model
    given = get_preset("short", "cells", {"model": {"graph_edges": "cosine"}})  # every factor
    assert given.at(5).model["graph_edges"] == "cosine" and given.at(5).istar_mix == 0.25
    sentence = _factor_sentence(json.loads(json.dumps(asdict(get_preset("short", "cells")))),
                                [5, 10])
    assert "at x5: Diff-ST's map mixed with the slide's own iStar-like map, weight 0.25, " \
           "the paper's graph, training batches of 16;" in sentence


def test_spots_presets_take_the_papers_gene_graph_at_x3_only():
    from diffst.benchmark.report import network_configs

    for name in ("short", "default", "full"):  # HER2ST validation folds: x3 passed the rule
        spots = get_preset(name, "spots")
        net = {f: network_configs(spots.at(f).model, ())["model_config"] for f in (2, 3)}
        assert (net[2]["graph_edges"], net[3]["graph_edges"]) == ("cosine", "paper")
        assert net[3]["upsampler"] == "istar_like"  # the rest of the x3 rule stays
    provenance = get_preset("short", "spots").provenance
    assert "the CIGC-Graph takes the Diff-ST paper's edges" in provenance
    given = get_preset("short", "spots", {"model": {"graph_edges": "cosine"}})  # every factor
    assert given.at(3).model["graph_edges"] == "cosine"
    assert given.at(3).model["upsampler"] == "istar_like"


def test_headline_names_the_gene_graph_the_same_way_whether_variant_or_preset():
    headline = _headline_script()
    from diffst.benchmark.presets import train_config

    cells = get_preset("short", "cells")
    today = json.loads(json.dumps(asdict(cells)))
    tcs = {str(f): asdict(train_config(cells.at(f), [make_sample()], factor=f, seed=0))
           for f in (5, 10)}
    summary = json.loads(json.dumps({"preset": today, "protocol": {}, "seeds": [0],
                                     "train_config": tcs, "istar_settings": istar_settings(),
                                     "dataset": _dataset_record([make_sample()])}))
    assert headline.settings(summary, factor=5) == "`short`"
    before = dict(today, by_factor={"5": {"istar_mix": 0.25}, "10": {"grid_shifts": 5}})
    assert headline.settings(dict(summary, preset=before), factor=5) == "`short`, diffst's graph"
    variant = dict(before, paper_variants=["graph"])  # --paper-variant graph, as run before
    assert headline.settings(dict(summary, preset=variant), factor=5) == "`short`"
    assert headline.settings(dict(summary, preset=variant), factor=10) == (
        "`short`, the paper's graph")


def test_the_training_sentence_names_each_factors_length_and_batch_where_they_differ():
    from diffst.benchmark.report import _per_factor

    summary = {"train_config": {"5": {"steps": 500, "batch_size": 16},
                                "10": {"steps": 1000, "batch_size": 16}}}
    assert _per_factor(summary, "steps") == "500/1000 (x5/x10)"
    assert _per_factor(summary, "batch_size") == "16"


def test_a_by_factor_setting_without_its_own_words_is_named_by_its_option():
    from diffst.benchmark.report import factor_settings_text

    assert factor_settings_text({"lr": 0.0005}) == "`--lr 0.0005`"
    assert factor_settings_text({"thin_inputs": 0.1, "grid_shifts": 3}) == (
        "`--thin-inputs 0.1`, training pairs pooled on 3 x 3 shifted grids")
    assert factor_settings_text({"large_data": {"t_focus": 0.5}}) == (
        "where the training tissue covers at least 4 patches of 320 µm, 50% of the training "
        "examples at the last noise step")
    assert factor_settings_text({"large_data": {}}) == ""
    assert factor_settings_text({"large_data": {"steps": 1000}}) == (
        "where the training tissue covers at least 4 patches of 320 µm, 1000 training steps")
    assert factor_settings_text({"large_data": {"t_focus": 0.5}, "steps": 1000}) == (
        "1000 training steps, where the training tissue covers at least 4 patches of 320 µm, "
        "50% of the training examples at the last noise step")  # the clause comes last
    assert factor_settings_text({"small_data": {"batch_size": 16}, "steps": 1000}) == (
        "1000 training steps, where the training tissue covers less than 4 patches of 320 µm, "
        "training batches of 16")
    assert factor_settings_text({"not_a_setting": 1}) == "not_a_setting 1"


def test_simulated_tissue_side_reaches_the_data_and_the_recorded_command(monkeypatch,
                                                                          tmp_path):
    from click.testing import CliRunner

    from diffst.benchmark.data import load_benchmark_data
    from diffst.benchmark.report import _command
    from diffst.cli import main

    seen = _preset_overrides(monkeypatch, ["--preset", "quick", "--size-um", "400"])
    assert seen == {"size_um": 400.0}
    data, preset = load_benchmark_data("simulated", "holdout", "test", "quick", [5],
                                       overrides=seen)
    sides = [x.shape[0] * x.cell_um for fold in data.folds for x in fold.train]
    assert sides == [400.0]  # 50 rows of 8 µm cells (quick's own tissue is 480 µm)
    cmd = _command("simulated", [5], "holdout", "quick", list(METHOD_LABELS), False, [0], "test",
                   preset=preset)
    assert cmd.endswith("--no-ablations --size-um 400")
    with monkeypatch.context() as here:
        here.chdir(tmp_path)  # the default output folder is made in the working folder
        refused = CliRunner().invoke(main, ["benchmark", "--dataset", "her2st", "--size-um",
                                            "400"])
    assert refused.exit_code == 2 and "--size-um" in refused.output
    assert "simulated tissue" in refused.output


def test_a_bad_istar_mix_on_the_command_line_names_the_option():
    from click.testing import CliRunner

    from diffst.cli import main

    result = CliRunner().invoke(main, ["benchmark", "--istar-mix", "deep"])
    assert result.exit_code == 2
    assert "--istar-mix" in result.output and "between 0 and 1 or 'depth'" in result.output


def test_diffst_method_samples_with_the_presets_mix(monkeypatch):
    import diffst.benchmark.methods as methods_module

    seen = {}

    def fake_super_resolve(pipeline, lr, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(methods_module, "super_resolve", fake_super_resolve)
    method = methods_module.DiffSTMethod(get_preset("short", "spots").at(3), seed=0)
    method.trainers = [type("T", (), {"pipeline": lambda self: None})()]
    monkeypatch.setattr(methods_module, "self_tune", lambda pipeline, *a, **k: pipeline)
    with pytest.raises(RuntimeError, match="stop here"):
        method.predict(make_sample(), np.ones((4, 4), bool))
    assert seen["istar_mix"] == "depth"


def test_headline_names_runs_made_without_the_mix():
    from diffst.benchmark.presets import train_config

    headline = _headline_script()
    preset = json.loads(json.dumps(asdict(get_preset("short", "spots"))))
    tcs = {str(f): asdict(train_config(get_preset("short", "spots").at(f), [make_sample()],
                                       factor=f, seed=0)) for f in (2, 3)}
    summary = {"preset": preset, "protocol": {}, "seeds": [0], "train_config": tcs,
               "istar_settings": istar_settings()}
    assert headline.settings(summary, factor=2) == headline.settings(summary, factor=3) == (
        "`short`")
    del summary["preset"]["istar_mix"]  # a run from before the mix
    del summary["preset"]["by_factor"]["3"]["istar_mix"]
    assert headline.settings(summary, factor=2) == "`short`, no iStar-like mix"
    assert headline.settings(summary, factor=3) == "`short`, no iStar-like mix"

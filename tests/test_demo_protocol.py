"""The demo treats Diff-ST and bicubic alike: same inputs, same consistency step."""

from __future__ import annotations

import json

import pandas as pd
import torch

from diffst.demo import DemoSettings, format_summary, run_demo


def test_demo_scores_both_methods_raw_and_with_the_same_consistency_step(tmp_path):
    torch.set_num_threads(1)
    cfg = DemoSettings(size_um=400.0, n_genes=4, steps=2, n_samples=1, sample_steps=2)
    report = run_demo(tmp_path, cfg, progress=False)
    assert list(report["summary"]) == ["bicubic", "bicubic + C", "diffst", "diffst + C"]
    table = pd.read_csv(tmp_path / "metrics_per_gene.csv")
    assert set(table["method"]) == set(report["summary"])
    # the consistency step changes bicubic too (it is not a Diff-ST-only post-processing)
    assert report["summary"]["bicubic"]["rmse"] != report["summary"]["bicubic + C"]["rmse"]
    assert json.loads((tmp_path / "summary.json").read_text())["settings"]["seed"] == 0
    assert "bicubic + C" in format_summary(report)

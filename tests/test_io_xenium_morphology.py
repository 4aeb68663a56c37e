"""Xenium transcripts as CSV and a one-channel morphology image in place of the H&E."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from diffst.data.image import aligned_image
from diffst.io.xenium import fluorescence_as_stain, read_xenium

CROP = Path(__file__).resolve().parents[2] / "shared" / "data" / "xenium_breast_crop"


def _bundle(tmp_path: Path, origin=(100.0, 50.0), px_um=0.5) -> Path:
    """Transcripts at two bright spots of a dark fluorescence image, stored as CSV.gz."""
    rng = np.random.default_rng(0)
    img = np.full((80, 120), 100, np.uint16)
    img[10:20, 10:20] = 4000  # a "nucleus" at x = origin + [5, 10) µm, y = origin + [5, 10)
    img[50:60, 90:100] = 4000
    tifffile.imwrite(tmp_path / "dapi.tif", img)
    xs = np.concatenate([rng.uniform(5, 10, 200), rng.uniform(45, 50, 200)]) + origin[0]
    ys = np.concatenate([rng.uniform(5, 10, 200), rng.uniform(25, 30, 200)]) + origin[1]
    pd.DataFrame({"feature_name": ["GeneA"] * 200 + ["GeneB"] * 200, "x_location": xs,
                  "y_location": ys, "qv": 40.0}).to_csv(tmp_path / "transcripts.csv.gz",
                                                       index=False)
    return tmp_path


def test_csv_transcripts_and_a_morphology_image_are_aligned(tmp_path):
    folder = _bundle(tmp_path)
    s = read_xenium(folder, bin_um=5.0, morphology_image=folder / "dapi.tif",
                    morphology_origin_um=(100.0, 50.0), image_um_per_px=0.5)
    assert s.genes == ["GeneA", "GeneB"] and s.expr.sum() == 400
    assert s.image.shape[2] == 3 and (s.image[..., 0] == s.image[..., 2]).all()
    img = aligned_image(s, 10)  # 10 px per 5 µm cell
    for g in range(2):  # cells holding a gene's transcripts sit on the (inverted) bright spot
        r, c = np.unravel_index(np.argmax(s.expr[g]), s.shape)
        patch = img[r * 10:(r + 1) * 10, c * 10:(c + 1) * 10, 0]
        assert patch.mean() < 100 < np.median(img[..., 0]), g


def test_fluorescence_is_inverted_and_stretched():
    img = np.zeros((10, 10, 3), np.uint8)
    img[2:4, 2:4] = 200
    out = fluorescence_as_stain(img)
    assert out.dtype == np.uint8 and out.shape == (10, 10, 3)
    assert out[3, 3, 0] < 70 and out[8, 8, 0] > 245


def test_real_xenium_crop_nuclear_transcripts_fall_on_nuclei():
    if not CROP.is_dir():
        pytest.skip(f"Xenium crop not found at {CROP} (../shared/data/xenium_breast_crop)")
    s = read_xenium(CROP, bin_um=8.0, morphology_image=CROP / "morphology_dapi.tif",
                    morphology_origin_um=(1062.0, 212.0), image_um_per_px=0.2125,
                    work_um_per_px=1.0)
    assert s.cell_um == 8.0 and s.n_genes > 300 and s.mask.mean() > 0.9
    tx = pd.read_csv(CROP / "transcripts.csv.gz", usecols=["x_location", "y_location",
                                                           "overlaps_nucleus"], nrows=20000)
    # Xenium µm -> working pixel through the sample's affine (raster -> image) and its inverse
    origin = np.asarray(s.meta["origin_um"])
    rc = (tx[["x_location", "y_location"]].to_numpy() - origin) / 8.0 - 0.5
    xy = (s.affine @ np.c_[rc, np.ones(len(rc))].T)[:2].T
    col = np.clip(np.round(xy[:, 0]).astype(int), 0, s.image.shape[1] - 1)
    row = np.clip(np.round(xy[:, 1]).astype(int), 0, s.image.shape[0] - 1)
    value = s.image[row, col, 0].astype(float)
    on = tx["overlaps_nucleus"].to_numpy() == 1
    assert value[on].mean() < value[~on].mean() - 20  # nuclei are dark after inversion

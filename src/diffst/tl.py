"""Tools in the scanpy style: AnnData in, AnnData out (``import diffst as ds; ds.tl...``).

An AnnData here is what :func:`diffst.read` returns or any AnnData in scanpy's Visium
convention (``obsm["spatial"]`` in image pixels, the image and scale factors in
``uns["spatial"]``); :func:`diffst.io.anndata_to_sample` turns it into the raster the model
works on, and results come back as AnnData with one observation per HR cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad

from diffst.api import model_name, predict, train_model
from diffst.io.anndata_io import anndata_to_sample, sample_to_anndata
from diffst.pipeline import DiffSTPipeline


def super_resolve(adata: ad.AnnData, model: str | Path | DiffSTPipeline, *,
                  key_added: str = "diffst_sr",
                  n_samples: int = 8, steps: int = 20, consistency: bool | str = True,
                  seed: int = 0, device: str = "auto", progress: bool = True,
                  read_kw: dict[str, Any] | None = None) -> ad.AnnData:
    """Super-resolve the spots of ``adata`` with a trained model file.

    Args:
        adata: measured spots (counts) with their image, e.g. from :func:`diffst.read`.
        model: a model file written by ``diffst train`` / :func:`train`, or a loaded
            :class:`~diffst.pipeline.DiffSTPipeline`.
        key_added: ``adata.uns[key_added]`` records what was run (model, factor, settings, the
            number of HR cells); the result carries the same record.
        n_samples, steps, consistency, seed, device: as :func:`diffst.api.predict`.
        read_kw: options for :func:`diffst.io.anndata_to_sample` (``library_id``, ``layer``...).

    Returns:
        A new AnnData with one observation per HR cell in tissue: ``X`` the mean map (counts per
        HR cell), layers ``mean``, ``std``, ``q05``, ``q95``, ``obsm["spatial"]`` in the image
        pixels of ``uns["spatial"]``.
    """
    if key_added == "diffst":
        raise ValueError("key_added='diffst' is where diffst keeps its raster layout; "
                         "choose another key")
    sample = anndata_to_sample(adata, **(read_kw or {}))
    result = predict(sample, model, n_samples=n_samples, steps=steps, consistency=consistency,
                     seed=seed, device=device, resume=False, progress=progress)
    out = sample_to_anndata(result.as_sample(sample), layers=result.layers(), max_image_px=None)
    record = {"model": model_name(model), "factor": int(result.meta["factor"]),
              "n_samples": n_samples, "steps": steps, "seed": seed,
              "consistency": str(result.meta["consistency"]), "n_hr_cells": int(out.n_obs),
              "hr_cell_um": float(result.cell_um)}
    adata.uns[key_added] = record
    out.uns[key_added] = dict(record)
    return out


def train(adatas: list[ad.AnnData] | ad.AnnData, factor: int, out: str | Path, *,
          spots_only: bool = False, read_kw: dict[str, Any] | None = None,
          **kw: Any) -> Path:
    """Train Diff-ST on AnnData sections (HR truth, or measured spots with ``spots_only``) and
    write the model file ``out``; keyword arguments go to :func:`diffst.api.train_model`."""
    items = [adatas] if isinstance(adatas, ad.AnnData) else list(adatas)
    samples = [anndata_to_sample(a, **(read_kw or {})) for a in items]
    return train_model(samples, factor, out, spots_only=spots_only, **kw)


__all__ = ["super_resolve", "train"]

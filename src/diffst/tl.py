"""Tools in the scanpy style: AnnData in, AnnData out (``import diffst as ds; ds.tl...``).

An AnnData here is what :func:`diffst.read` returns or any AnnData in scanpy's Visium
convention (``obsm["spatial"]`` in image pixels, the image and scale factors in
``uns["spatial"]``); :func:`diffst.io.anndata_to_sample` turns it into the raster the model
works on, and results come back as AnnData with one observation per HR cell. A SpatialData
object (optional extra ``diffst[spatialdata]``) is read and written by
:mod:`diffst.io.spatialdata_io`: results are added to it as elements.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad

from diffst.api import model_config_for, model_name, predict, recorded_predict_settings, train_model
from diffst.io.anndata_io import anndata_to_sample, sample_to_anndata
from diffst.io.spatialdata_io import is_spatialdata
from diffst.pipeline import DiffSTPipeline

if TYPE_CHECKING:  # pragma: no cover
    from spatialdata import SpatialData

    from diffst.infer import SRResult


def super_resolve(adata: ad.AnnData | SpatialData, model: str | Path | DiffSTPipeline, *,
                  key_added: str = "diffst_sr", n_samples: int = 8, steps: int = 20,
                  consistency: bool | str = True, seed: int = 0, device: str = "auto",
                  progress: bool = True,
                  read_kw: dict[str, Any] | None = None) -> ad.AnnData | SpatialData:
    """Super-resolve the spots of ``adata`` with a trained model file.

    Args:
        adata: measured spots (counts) with their image, e.g. from :func:`diffst.read`; or a
            SpatialData object with the H&E image and a table of spot/bin counts (extra
            ``diffst[spatialdata]``, :mod:`diffst.io.spatialdata_io`).
        model: a model file written by ``diffst train`` / :func:`train`, or a loaded
            :class:`~diffst.pipeline.DiffSTPipeline`.
        key_added: ``adata.uns[key_added]`` records what was run (model, factor, settings, the
            number of HR cells); the result carries the same record. For SpatialData it also
            names the elements added (:func:`diffst.io.spatialdata_io.element_names`).
        n_samples, steps, consistency, seed, device: as :func:`diffst.api.predict`. The
            model's other sampling settings, when its file keeps them (trained with a preset:
            :func:`train` ``preset``, ``diffst train --preset``), apply too: sampler, turns,
            self-tuning, iStar-like mix and depth matching.
        read_kw: options for :func:`diffst.io.anndata_to_sample` (``library_id``, ``layer``...);
            for SpatialData those of :func:`diffst.io.spatialdata_io.spatialdata_to_sample`
            (``table_key``, ``image_key``, ``region``, ``coordinate_system``, ``layer``...).

    Returns:
        A new AnnData with one observation per HR cell in tissue: ``X`` the mean map (counts per
        HR cell), layers ``mean``, ``std``, ``q05``, ``q95``, ``obsm["spatial"]`` in the image
        pixels of ``uns["spatial"]``. For SpatialData input: the same SpatialData object with
        the result added: images ``{key_added}_mean`` / ``_std`` / ``_q05`` / ``_q95`` (genes
        as channels), labels ``{key_added}_cells`` and table ``{key_added}``, all placed on the
        H&E's coordinate systems (``sdata.write(path)`` writes them to ``.zarr``).
    """
    if key_added == "diffst":
        raise ValueError("key_added='diffst' is where diffst keeps its raster layout; "
                         "choose another key")
    if is_spatialdata(adata):
        return _super_resolve_spatialdata(adata, model, key_added, n_samples, steps,
                                          consistency, seed, device, progress, read_kw)
    sample = _to_sample(adata, read_kw)
    result, record = _run(sample, model, n_samples, steps, consistency, seed, device, progress)
    out = sample_to_anndata(result.as_sample(sample), layers=result.layers(), max_image_px=None)
    adata.uns[key_added] = record
    out.uns[key_added] = dict(record)
    return out


def _run(sample, model: str | Path | DiffSTPipeline, n_samples: int, steps: int,
         consistency: bool | str, seed: int, device: str,
         progress: bool) -> tuple[SRResult, dict[str, Any]]:
    """:func:`diffst.api.predict` with the sampling settings the model keeps (``n_samples`` and
    ``steps`` as given), and what it did, for ``uns[key_added]``."""
    settings = {**recorded_predict_settings(model), "n_samples": n_samples, "steps": steps}
    result = predict(sample, model, consistency=consistency, seed=seed, device=device,
                     resume=False, progress=progress, **settings)
    record = {"model": model_name(model), "factor": int(result.meta["factor"]), **settings,
              "seed": seed, "consistency": str(result.meta["consistency"]),
              "n_hr_cells": int(result.mask.sum()), "hr_cell_um": float(result.cell_um)}
    return result, record


def _super_resolve_spatialdata(sdata: SpatialData, model, key_added, n_samples, steps,
                               consistency, seed, device, progress, read_kw) -> SpatialData:
    from diffst.io.spatialdata_io import (
        add_to_spatialdata,
        check_result_key,
        spatialdata_to_sample,
    )

    sample = spatialdata_to_sample(sdata, **(read_kw or {}))
    link = sample.meta["spatialdata"]
    inputs = (link["image"], link["table"], link["region"])
    check_result_key(key_added, inputs)  # before the (long) sampling
    result, record = _run(sample, model, n_samples, steps, consistency, seed, device, progress)
    add_to_spatialdata(sdata, result.as_sample(sample), key=key_added, layers=result.layers(),
                       image_key=link["image"], scale=link["scale"], protect=inputs,
                       uns={key_added: dict(record, input_table=link["table"],
                                            input_region=link["region"])})
    return sdata


def _to_sample(data: ad.AnnData | SpatialData, read_kw: dict[str, Any] | None):
    if is_spatialdata(data):
        from diffst.io.spatialdata_io import spatialdata_to_sample

        return spatialdata_to_sample(data, **(read_kw or {}))
    return anndata_to_sample(data, **(read_kw or {}))


def train(adatas: list[ad.AnnData] | ad.AnnData, factor: int, out: str | Path, *,
          spots_only: bool = False, read_kw: dict[str, Any] | None = None,
          preset: str | None = None, **kw: Any) -> Path:
    """Train Diff-ST on AnnData (or SpatialData) sections (HR truth, or measured spots with
    ``spots_only``) and write the model file ``out``; keyword arguments go to
    :func:`diffst.api.train_model`.

    With ``preset`` (a benchmark preset name, e.g. ``"short"``) the settings that preset
    trains with for this kind of data at ``factor`` fill in every keyword not given (the
    architecture too, unless ``model_config`` is), and the model file keeps the preset's
    sampling settings for :func:`super_resolve`
    (:func:`diffst.benchmark.presets.training_settings`).
    """
    items = [adatas] if isinstance(adatas, ad.AnnData) or is_spatialdata(adatas) \
        else list(adatas)
    samples = [_to_sample(a, read_kw) for a in items]
    if preset is not None:
        from diffst.benchmark.presets import training_settings

        chosen, settings = training_settings(preset, samples, factor, spots_only)
        kw = {**settings, "model_config": model_config_for(kw.get("ablate"), **chosen.model),
              **kw}
    return train_model(samples, factor, out, spots_only=spots_only, **kw)


__all__ = ["super_resolve", "train"]

"""Super-resolution of a whole sample with a trained Diff-ST model.

The HR raster is covered by overlapping ``P`` x ``P`` tiles (origins on the LR grid). For each
tile the conditioning is computed once, ``n_samples`` HR maps are drawn with the chosen sampler,
and per-tile statistics (mean, standard deviation, 5% and 95% quantiles, in counts per HR cell)
are blended into the slide with weights that fall off linearly towards tile borders, so
overlaps leave no seams. Only tiles that touch tissue are sampled; outside the mask the output
is 0. Memory is bounded by one batch of tiles (``batch_size * n_samples`` maps) plus four
``(G, H, W)`` float32 accumulators.

Spot consistency (:mod:`diffst.consistency`), on by default:

* ``"draws"``: every drawn HR map is redistributed within each LR cell so it sum-pools exactly
  to the measured LR counts; the tile statistics are computed from these consistent draws.
  Blending weights vary inside an LR cell, so the blended mean is then corrected once more by
  the same redistribution (a factor close to 1), which makes ``pool_sum(mean) == LR counts``
  hold to floating-point precision in every LR cell that contains tissue. ``std``, ``q05`` and
  ``q95`` get the same per-LR-cell affine map as the mean (``std`` only its scale), which keeps
  ``q05 <= q95`` and ``std >= 0``. The identity holds for ``mean`` only: a quantile map has no
  pooling identity.
* ``"steps"``: as ``"draws"`` plus the redistribution applied to the clean-sample estimate at
  every sampler step (a data-consistency projection in count space), so later steps denoise
  around a consistent estimate.
* ``"off"``: the raw model output.

The redistribution keeps each LR cell's pattern but not its level: where the model's total for
an LR cell is far from the measurement, the mean shows a step at that LR cell's border (the LR
grid shows through). ``benchmarks/whole_slide.py`` measures what each mode does to accuracy
and to the coverage of ``[q05, q95]``.

With K <= 20 samples, ``q05 <= mean <= q95`` holds per tile (the mean of K values lies between
the interpolated 5% and 95% sample quantiles) and survives blending and the consistency map;
for larger K a strongly skewed set of draws can put the mean outside ``[q05, q95]``.

Resume: with ``resume_dir`` every finished batch of tiles is saved (:mod:`diffst.tilestore`) and
a rerun with the same model, input and settings (including ``batch_size``, which fixes the
noise seeds) skips it and gives the same result; other settings are refused with a message.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffst.config import DEPTH_MIX, parse_mix
from diffst.consistency import (
    apply_maps,
    consistency_maps,
    max_relative_error,
    redistribute,
    unplaced_counts,
)
from diffst.data.image import px_per_cell_for
from diffst.data.lr import hr_frame_affine, tissue_depth
from diffst.data.patches import (
    PatchBatch,
    PreparedSample,
    collate,
    extract_patch,
    pad_prepared,
    prepare_inference_sample,
)
from diffst.data.sample import SampleError, STSample
from diffst.data.symmetry import N_TRANSFORMS, turn, turn_batch, unturn
from diffst.diffusion.samplers import make_sampler
from diffst.diffusion.schedule import NoiseSchedule
from diffst.model.config import DiffSTConfig
from diffst.model.upsampler import istar_like_base, upsampler_for
from diffst.pipeline import DiffSTPipeline
from diffst.precision import autocast as autocast_context
from diffst.precision import memory_format
from diffst.tilestore import STAT_KEYS, SamplingInterrupted, TileStore, fingerprint, resume_message

CONSISTENCY_MODES = ("off", "draws", "steps")
"""Spot-consistency modes of :func:`super_resolve` (module docstring)."""

LoadedModel = DiffSTPipeline
"""The name of :class:`diffst.pipeline.DiffSTPipeline` before diffst 0.2."""


def load_model(path: str | Path, device: str = "auto") -> DiffSTPipeline:
    """Load a model file (any readable format version; :meth:`DiffSTPipeline.load`)."""
    return DiffSTPipeline.load(path, device)


def model_from_trainer(trainer) -> DiffSTPipeline:
    """The EMA model of a training run, ready for inference (``trainer.pipeline()``)."""
    return trainer.pipeline()


@dataclass
class SRResult:
    """Super-resolved maps on the HR raster, counts per HR cell, ``(G, H, W)`` each."""

    mean: np.ndarray
    std: np.ndarray
    q05: np.ndarray
    q95: np.ndarray
    mask: np.ndarray
    genes: list[str]
    cell_um: float
    affine: np.ndarray
    meta: dict = field(default_factory=dict)

    def layers(self) -> dict[str, np.ndarray]:
        """The maps by name (for writers)."""
        return {"mean": self.mean, "std": self.std, "q05": self.q05, "q95": self.q95}

    def as_sample(self, lr: STSample, name: str | None = None) -> STSample:
        """The mean map as an :class:`STSample` on the HR raster with ``lr``'s image."""
        return STSample(expr=self.mean, genes=self.genes, cell_um=self.cell_um, mask=self.mask,
                        image=lr.image, image_um_per_px=lr.image_um_per_px, affine=self.affine,
                        name=name or f"{lr.name}_sr", meta=dict(self.meta))


def tile_origins(length: int, patch: int, stride: int, factor: int) -> list[int]:
    """Tile starts along one axis covering ``[0, length)``; all multiples of ``factor``."""
    if length <= patch:
        return [0]
    stride = max(factor, (stride // factor) * factor)
    starts = list(range(0, length - patch + 1, stride))
    last = ((length - patch) // factor) * factor
    if starts[-1] != last:
        starts.append(last)
    return starts


def blend_window(patch: int, overlap: int) -> np.ndarray:
    """``(P, P)`` blending weights: 1 in the middle, falling linearly over ``overlap`` cells."""
    ramp = np.ones(patch)
    if overlap > 0:
        edge = (np.arange(overlap) + 0.5) / overlap
        ramp[:overlap] = np.minimum(ramp[:overlap], edge)
        ramp[-overlap:] = np.minimum(ramp[-overlap:], edge[::-1])
    return np.outer(ramp, ramp)


def default_overlap(patch: int, factor: int) -> int:
    """Default tile overlap: a quarter of the tile, rounded down to the factor."""
    return (patch // 4 // factor) * factor


def tissue_tile_origins(mask: np.ndarray, patch: int, overlap: int,
                        factor: int) -> list[tuple[int, int]]:
    """Origins (HR cells, multiples of ``factor``) of the tiles covering the ``(H, W)`` raster
    of ``mask`` with ``overlap`` cells shared by neighbours, keeping those that touch tissue;
    row-major."""
    (h, w), stride = mask.shape, patch - overlap
    every = [(r, c) for r in tile_origins(h, patch, stride, factor)
             for c in tile_origins(w, patch, stride, factor)]
    return [(r, c) for r, c in every if mask[r : r + patch, c : c + patch].any()]


def tile_batch(padded: PreparedSample, chunk: list[tuple[int, int]], patch: int,
               config: DiffSTConfig) -> PatchBatch:
    """The collated model inputs of the tiles at ``chunk`` (un-augmented), for a model of
    architecture ``config`` (:class:`~diffst.model.config.DiffSTConfig`)."""
    return collate([extract_patch(padded, r, c, patch, config.tissue_px_per_cell,
                                  config.tile_px, config.n_tiles) for r, c in chunk])


class TileBlender:
    """Window-weighted accumulation of overlapping ``(G, P, P)`` tiles into ``(G, H, W)`` maps.

    Each named map sums ``tile * blend_window(patch, overlap)`` (in ``dtype``) and one weight
    raster (float64) sums the window; :meth:`pop` returns a map divided by the weight, cropped
    and zeroed off the mask.
    """

    def __init__(self, keys: tuple[str, ...], n_genes: int, shape: tuple[int, int], patch: int,
                 overlap: int, dtype: type = np.float32) -> None:
        self.patch = patch
        self.window = blend_window(patch, overlap)
        self._window = self.window.astype(dtype)
        self.acc = {key: np.zeros((n_genes, *shape), dtype) for key in keys}
        self.weight = np.zeros(shape, np.float64)

    def add(self, r: int, c: int, tiles: dict[str, np.ndarray]) -> None:
        """Add one tile per map (``{key: (G, P, P)}``) at origin ``(r, c)``."""
        p = self.patch
        for key, tile in tiles.items():
            self.acc[key][:, r : r + p, c : c + p] += tile * self._window
        self.weight[r : r + p, c : c + p] += self.window

    def pop(self, key: str, mask: np.ndarray) -> np.ndarray:
        """The blended map ``key`` on the ``mask.shape`` raster (float64; 0 off the mask); its
        accumulator is released."""
        h, w = mask.shape
        norm = np.maximum(self.weight[:h, :w], 1e-12)
        return np.where(mask, self.acc.pop(key)[:, :h, :w] / norm, 0.0)


def consistency_mode(value: bool | str | None) -> str:
    """Normalise a consistency option: True -> ``"draws"``, False/None -> ``"off"``."""
    if value is True:
        return "draws"
    if value is False or value is None:
        return "off"
    if value in CONSISTENCY_MODES:
        return str(value)
    raise ValueError(f"consistency must be one of {CONSISTENCY_MODES} (or True/False), "
                     f"got {value!r}")


@torch.no_grad()
def sample_tiles(lm: DiffSTPipeline, batch: PatchBatch, n_samples: int,
                 steps: int, sampler: str, generator: torch.Generator, *,
                 lr_counts: torch.Tensor | None = None,
                 progress: Callable[[int], None] | None = None,
                 autocast: bool = False, eta: float = 0.0, turns: bool = False) -> torch.Tensor:
    """Draw ``n_samples`` scaled HR maps per tile: ``(B, K, G, P, P)``.

    ``lr_counts`` ``(B, G, P/s, P/s)`` measured LR counts switch on the per-step consistency
    projection of the clean-sample estimate; ``progress(i)`` is called after sampler step i.
    ``autocast`` runs the network in bfloat16 (float16 on older GPUs); the sampler stays float32.
    ``eta`` > 0 makes DDIM stochastic (:func:`diffst.diffusion.samplers.make_sampler`).
    ``turns``: sample ``k`` sees the tile turned by dihedral transform ``k mod 8``
    (:mod:`diffst.data.symmetry`) and its map is turned back, so the mean over samples also
    averages over orientations (test-time augmentation); the conditioning is then computed once
    per orientation instead of once per tile.
    """
    sc = lm.scheduler
    batch = batch.to(lm.device)
    views = orientations(n_samples) if turns else [0] * n_samples
    with autocast_context(lm.device, autocast):
        if turns:
            batch = _per_sample(batch, views)
            cond = lm.model.encode_batch(batch, batch.tile_valid)
        else:
            cond = lm.model.encode_batch(batch, batch.tile_valid).repeat(n_samples)
    schedule = NoiseSchedule.from_config(sc)
    lr_up, mask = (batch.lr_up, batch.mask) if turns else (
        batch.lr_up.repeat_interleave(n_samples, 0), batch.mask.repeat_interleave(n_samples, 0))
    rs, top = sc.residual_scale, lm.scaler.clip_max
    if lr_counts is not None:
        target = _spread([turn(lr_counts.to(lm.device, torch.float32), d) for d in views])
        tissue = mask > 0

    def project(z0: torch.Tensor) -> torch.Tensor:
        """Keep the HR estimate ``lr_up + rs * z0`` inside the data range (and consistent)."""
        hr = (lr_up + rs * z0).clamp(0, top)
        if lr_counts is not None:
            counts = redistribute(lm.scaler.inverse(hr.float(), axis=1), target, tissue,
                                  lm.factor)
            hr = lm.scaler.transform(counts, axis=1).to(z0.dtype)
        return (hr - lr_up) / rs

    solver = make_sampler(sampler, schedule, steps, clip_x0=project, eta=eta)
    g, p = lr_up.shape[1], lr_up.shape[-1]
    b = lr_up.shape[0] // n_samples

    def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return schedule.to_epsilon(lm.model(x, t, cond), x, t, sc.prediction)

    with autocast_context(lm.device, autocast):
        z = solver.sample(eps_fn, (b * n_samples, g, p, p), generator=generator,
                          device=lm.device, progress=progress)
    hr = (lr_up + rs * z).clamp(0, top).view(b, n_samples, g, p, p).float()
    if turns:
        hr = torch.stack([unturn(hr[:, k], d) for k, d in enumerate(views)], 1)
    return hr.cpu()


def draws_in_words(n_samples: int, sampler: str, steps: int) -> str:
    """``n_samples`` draws of ``sampler`` in words, e.g. ``"4 DDIM samples (20 steps)"``."""
    if sampler == "mean":
        return f"{n_samples} one-step posterior-mean estimates"
    return f"{n_samples} {sampler.upper()} samples ({steps} steps)"


def orientations(n_samples: int) -> list[int]:
    """The dihedral transform of each of ``n_samples`` samples: ``k mod 8``."""
    return [k % N_TRANSFORMS for k in range(n_samples)]


def _spread(per_view: list[torch.Tensor]) -> torch.Tensor:
    """``K`` tensors ``(B, ...)`` -> ``(B * K, ...)``, tile ``i`` view ``k`` at ``i * K + k``."""
    stacked = torch.stack(per_view, 1)
    return stacked.reshape(-1, *stacked.shape[2:])


def _per_sample(batch: PatchBatch, views: list[int]) -> PatchBatch:
    """``batch`` with each tile repeated once per sample, turned by that sample's view."""
    parts = [turn_batch(batch, d) for d in views]
    return PatchBatch.from_dict({key: _spread([part[key] for part in parts]) for key in batch})


def check_model_fits(lm: DiffSTPipeline, lr: STSample) -> STSample:
    """Check ``lr`` can be super-resolved by ``lm`` (genes, cell size); return its model genes.

    A model trained on another sample applies when the sample has every model gene (extra genes
    are ignored) and LR cells of ``cell_um * factor`` µm. A spots-only model (trained on spot
    maps of ``cell_um`` µm pooled by the factor) applies to spot maps of ``cell_um`` µm (its
    intended use, one scale finer) or of ``cell_um * factor`` µm (the scale it was trained at).
    """
    missing = [g for g in lm.genes if g not in set(lr.genes)]
    if missing:
        raise SampleError(
            f"sample '{lr.name}': {len(missing)} of the model's {len(lm.genes)} genes not in "
            f"the data (e.g. {missing[:5]}); the model applies only to data measuring all of them "
            "(retrain on shared genes with --genes, or train on this sample)"
        )
    f = lm.factor
    allowed = [lm.cell_um * f] + ([lm.cell_um] if lm.spots_only else [])
    if not any(np.isclose(lr.cell_um, a, rtol=0.05) for a in allowed):
        kind = "spots-only model trained on" if lm.spots_only else "model trained with HR"
        raise SampleError(
            f"sample '{lr.name}': LR cells are {lr.cell_um:g} µm but this {kind} "
            f"{lm.cell_um:g} µm cells at factor {f} expects "
            + " or ".join(f"{a:g} µm" for a in allowed)
            + f". To super-resolve these {lr.cell_um:g} µm cells, train on them with "
            f"`diffst train DATA --spots-only --factor {f} --out MODEL.pt` (no finer truth), or "
            f"on data with {lr.cell_um / f:g} µm HR truth; with HR truth of the model's cell "
            "size, `diffst predict --pool` pools it first"
        )
    return lr.select_genes(lm.genes)


def super_resolve(
    lm: DiffSTPipeline,
    lr: STSample,
    *,
    steps: int = 20,
    sampler: str = "ddim",
    n_samples: int = 1,
    patch: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    hr_mask: np.ndarray | None = None,
    seed: int = 0,
    consistency: bool | str = True,
    resume_dir: str | Path | None = None,
    progress: bool = True,
    autocast: bool = False,
    channels_last: bool = False,
    eta: float = 0.0,
    match_depth: bool = False,
    turns: bool = False,
    istar_mix: float | str = 0.0,
) -> SRResult:
    """Super-resolve an LR sample by the model's factor.

    Args:
        lm: a loaded model.
        lr: the measured LR sample (counts per LR cell) with its H&E image; must contain the
            model's genes (others are ignored).
        steps: sampler steps (respaced from the training schedule).
        sampler: ``ddim`` (default), ``dpmpp``, ``ddpm`` or ``mean`` (one network call per
            sample: the posterior-mean estimate; ``steps`` is then 1).
        n_samples: samples per tile for the mean/std/quantile maps.
        patch: tile side in HR cells (default: the training patch size); ``overlap`` HR cells
            shared by neighbouring tiles
            (default a quarter of the tile, rounded to the factor).
        batch_size: tiles sampled together (bounds memory: ``batch_size * n_samples`` maps).
        hr_mask: ``(H, W)`` HR tissue mask; default the LR mask repeated.
        seed: seeds the sampler noise (each batch gets ``seed + index of its first tile``).
        consistency: ``True``/``"draws"`` (default), ``"steps"`` or ``False``/``"off"``: make
            the mean map sum-pool exactly to the LR counts (module docstring).
        resume_dir: folder for finished tile batches; a rerun with equal settings resumes.
        autocast: run the network in bfloat16 (float16 on GPUs without bfloat16); faster on
            GPUs and on CPUs with bfloat16 instructions, slower elsewhere (measure with
            ``benchmarks/speed.py``). The sampler arithmetic stays float32.
        channels_last: store the convolution weights NHWC while sampling (restored after).
        eta: DDIM stochasticity (0: deterministic steps; 1: DDPM variance); more spread between
            the draws (see :mod:`diffst.calibration` for turning the spread into intervals).
        match_depth: scale the LR counts to the training data's depth (counts per µm² of
            tissue, the training sections pooled by the factor: :func:`depth_ratio`) before
            sampling and the maps back after, for a slide sequenced much shallower or deeper
            than the training data; the mean map still sum-pools to the measured counts.
            ``meta["depth_ratio"]`` records it.
        turns: sample ``k`` of each tile sees the tile rotated/mirrored by dihedral transform
            ``k mod 8`` and is turned back (test-time augmentation; :func:`sample_tiles`).
        istar_mix: weight in [0, 1] of the slide's own iStar-like map in the returned maps
            (:func:`mixed_with_istar`), or ``"depth"`` for a weight that grows as the slide
            is shallower than the training data (:func:`istar_mix_weight`; needs a model
            that records its training depth); 0: Diff-ST's maps alone.

    Returns:
        An :class:`SRResult` on the HR raster ``(lr.H * factor, lr.W * factor)``.
    """
    mode = consistency_mode(consistency)
    parse_mix(istar_mix)  # a bad setting fails before the sampling
    if n_samples < 1 or steps < 1 or batch_size < 1:
        raise ValueError("n_samples, steps and batch_size must be at least 1")
    lr = check_model_fits(lm, lr)
    steps = 1 if sampler == "mean" else steps
    ratio = depth_ratio(lm, lr) if match_depth else 1.0
    measured, lr = lr, (lr if ratio == 1.0 else replace(lr, expr=lr.expr * ratio))
    f = lm.factor
    patch = patch or lm.patch
    overlap = default_overlap(patch, f) if overlap is None else overlap
    if patch % f or overlap % f or not 0 <= overlap < patch:
        raise ValueError(f"patch ({patch}) and overlap ({overlap}) must be multiples of the "
                         f"factor {f} with 0 <= overlap < patch")
    k = px_per_cell_for(lr.cell_um / f, lm.work_um_per_px) if lm.spots_only else lm.k
    prep = prepare_inference_sample(lr, f, lm.scaler, k, hr_mask=hr_mask,
                                    upsampler=upsampler_for(lm.model.config.upsampler))
    padded = pad_prepared(prep, patch)
    job = _Job(lm, padded, _padded_counts(lr.expr, padded), patch, overlap, steps, sampler,
               n_samples, batch_size, seed, mode, float(eta), bool(turns))
    store = None
    if resume_dir is not None:
        store = TileStore(resume_dir, {**_store_settings(job, lr, prep),
                                       "autocast": bool(autocast)})
    with memory_format(lm.model, channels_last), autocast_context(lm.device, autocast):
        blender = _accumulate(job, store, progress)
    result = _finish(job, prep, lr, blender)
    result = result if ratio == 1.0 else rescaled(result, measured, ratio)
    return mixed_with_istar(result, measured, istar_mix_weight(istar_mix, lm, measured))


def istar_mix_weight(setting: float | str, lm: DiffSTPipeline, lr: STSample) -> float:
    """The weight of the slide's iStar-like map that ``setting`` gives for ``lr``.

    A number is used as given. ``"depth"`` (:data:`diffst.config.DEPTH_MIX`) gives
    ``max(0, 1 - 1 / r)`` with ``r`` the training depth over the slide's depth
    (:func:`depth_ratio`): 0 for a slide as deep as the training data or deeper, 0.9 for one
    sequenced a tenth as deep. Diff-ST's refinement was learnt at the training depth; the
    shallower the slide, the more the map leans on the fit to the slide's own counts.
    """
    if parse_mix(setting) != DEPTH_MIX:
        return float(setting)
    return max(0.0, 1.0 - 1.0 / depth_ratio(lm, lr))


def mixed_with_istar(result: SRResult, lr: STSample, weight: float) -> SRResult:
    """``result`` with every draw ``x`` replaced by ``(1 - weight) * x + weight * b``.

    ``b`` is the slide's own iStar-like map (:func:`diffst.model.upsampler.istar_like_base`:
    fitted on ``lr``'s counts and H&E image, consistent with its counts, 0 off ``result.mask``).
    The mean and quantile maps mix the same way and the std map shrinks by ``1 - weight``;
    a mean map that sums to the LR counts still does. ``weight`` 0 returns ``result``.

    Args:
        result: Diff-ST's maps of ``lr`` (counts per HR cell, ``(G, H, W)``).
        lr: the measured LR sample, with the result's genes in its order.
        weight: ``0 <= weight <= 1``; recorded as ``meta["istar_mix"]``.
    """
    if parse_mix(weight) == DEPTH_MIX:
        raise ValueError("mixed_with_istar takes a weight; istar_mix_weight resolves 'depth'")
    if weight == 0.0:
        return result
    f = result.meta["factor"]
    base = istar_like_base(lr, f, result.mask)
    keep = 1.0 - weight
    maps_ = {key: (keep * getattr(result, key) + weight * base).astype(np.float32)
             for key in ("mean", "q05", "q95")}
    maps_["std"] = (keep * result.std).astype(np.float32)
    counts = np.asarray(lr.expr, np.float64)
    meta = dict(result.meta, istar_mix=weight, consistency_max_rel_err=max_relative_error(
        maps_["mean"], counts, result.mask, f))
    return replace(result, **maps_, meta=meta)


def depth_ratio(lm: DiffSTPipeline, lr: STSample) -> float:
    """Training depth / depth of ``lr`` (counts of the model's genes per µm² of tissue).

    The training depth is that of the training sections pooled by the model's factor
    (``lm.record["lr_counts_per_um2"]``), read like ``lr``'s: an LR cell at the tissue edge
    counts in full on both sides. Model files from before that record hold only the HR depth
    (``counts_per_um2``), which makes every slide read shallower than it is (a warning says
    so; HER2ST sections pooled by 2 read 1.2-1.3 times, by 3 1.4-1.5 times too shallow).
    """
    ref = lm.record.get("lr_counts_per_um2")
    if not ref:
        ref = lm.record.get("counts_per_um2")
        if not ref:
            raise ValueError("match_depth needs the training depth, which this model file does "
                             "not record (trained before diffst 0.2); train it again")
        warnings.warn("this model file records only the depth of its HR training data, so "
                      "slides read shallower than they are; train it again for a like-with-"
                      "like depth", stacklevel=2)
    counts, area = tissue_depth(lr)
    if counts <= 0 or area <= 0:
        raise ValueError(f"sample '{lr.name}': no counts in tissue to measure its depth")
    return float(ref) / (counts / area)


def rescaled(result: SRResult, measured: STSample, ratio: float) -> SRResult:
    """``result`` of the depth-scaled input divided back by ``ratio`` (counts of ``measured``)."""
    maps_ = {k: (getattr(result, k) / ratio).astype(np.float32) for k in STAT_KEYS}
    counts = np.asarray(measured.expr, np.float64)
    f = result.meta["factor"]
    meta = dict(result.meta, depth_ratio=ratio,
                consistency_max_rel_err=max_relative_error(maps_["mean"], counts, result.mask, f),
                unplaced_counts=unplaced_counts(counts, result.mask, f))
    return replace(result, **maps_, meta=meta)


@dataclass
class _Job:
    lm: DiffSTPipeline
    padded: PreparedSample
    counts: np.ndarray  # (G, ph/s, pw/s) measured LR counts on the padded raster
    patch: int
    overlap: int
    steps: int
    sampler: str
    n_samples: int
    batch_size: int
    seed: int
    mode: str
    eta: float = 0.0
    turns: bool = False

    def origins(self) -> list[tuple[int, int]]:
        """Tile origins (HR cells) of tiles that touch tissue, row-major."""
        return tissue_tile_origins(self.padded.mask, self.patch, self.overlap,
                                   self.padded.factor)


def _padded_counts(counts: np.ndarray, padded: PreparedSample) -> np.ndarray:
    """Measured LR counts ``(G, h, w)`` zero-padded to the padded sample's LR raster."""
    out = np.zeros(padded.lr.shape, np.float64)
    out[:, : counts.shape[1], : counts.shape[2]] = counts
    return out


def _store_settings(job: _Job, lr: STSample, prep: PreparedSample) -> dict:
    return {
        "model": job.lm.fingerprint(),
        "input": fingerprint(lr.expr, lr.mask, prep.mask, prep.image),
        "steps": job.steps, "sampler": job.sampler, "n_samples": job.n_samples,
        "patch": job.patch, "overlap": job.overlap, "batch_size": job.batch_size,
        "seed": job.seed, "consistency": job.mode, "eta": job.eta, "turns": job.turns,
    }


def _accumulate(job: _Job, store: TileStore | None, progress: bool) -> TileBlender:
    """Sample (or load) every batch of tiles and add its window-weighted statistics."""
    origins = job.origins()
    blender = TileBlender(STAT_KEYS, len(job.lm.genes), job.padded.shape, job.patch,
                          job.overlap, np.float32)
    starts = range(0, len(origins), job.batch_size)
    stored = {s for s in starts if store is not None and store.has(s)}
    resumed = sum(len(origins[s : s + job.batch_size]) for s in stored)
    if stored and progress:
        tqdm.write(resume_message(len(stored), len(starts), store.folder))
    bar = tqdm(total=len(origins) * job.steps, initial=resumed * job.steps, desc="sampling",
               unit="tile-step", disable=not progress, dynamic_ncols=True)
    done = len(stored)
    for start in starts:
        chunk = origins[start : start + job.batch_size]
        stats = store.load(start, len(chunk)) if start in stored else None
        if stats is None:
            try:
                stats = _sample_batch(job, chunk, start, bar)
            except KeyboardInterrupt:
                bar.close()
                raise SamplingInterrupted(done, len(starts),
                                          None if store is None else store.folder) from None
            if store is not None:
                store.save(start, stats)
            done += 1
        for i, (r, c) in enumerate(chunk):
            blender.add(r, c, {key: stats[key][i] for key in STAT_KEYS})
    bar.close()
    return blender


def _sample_batch(job: _Job, chunk: list[tuple[int, int]], start: int,
                  bar: tqdm) -> dict[str, np.ndarray]:
    """Per-tile statistics ``{key: (B, G, P, P)}`` float32 of one batch of tiles."""
    lm, cfg, p, f = job.lm, job.lm.config, job.patch, job.padded.factor
    batch = tile_batch(job.padded, chunk, p, cfg)
    lr_counts = torch.from_numpy(np.stack(
        [job.counts[:, r // f : (r + p) // f, c // f : (c + p) // f] for r, c in chunk]))
    gen = torch.Generator().manual_seed(job.seed + start)
    draws = sample_tiles(lm, batch, job.n_samples, job.steps, job.sampler, gen,
                         lr_counts=lr_counts if job.mode == "steps" else None,
                         progress=lambda _i: bar.update(len(chunk)), eta=job.eta,
                         turns=job.turns).numpy()
    counts = lm.scaler.inverse(draws, axis=2)  # (B, K, G, P, P) scaled -> counts
    counts = torch.from_numpy(counts.astype(np.float64))
    tissue = batch.mask[:, None] > 0  # (B, 1, 1, P, P)
    if job.mode != "off":
        counts = redistribute(counts, lr_counts[:, None], tissue, f)
    else:
        counts = counts * tissue
    stats = tile_statistics(counts.numpy().swapaxes(0, 1))
    return {key: val.astype(np.float32) for key, val in stats.items()}


def _finish(job: _Job, prep: PreparedSample, lr: STSample, blender: TileBlender) -> SRResult:
    """Normalise the blend, crop to the raster, apply the exact consistency fix to the mean.

    Maps are finished one at a time (float64 only transiently) to keep the peak memory low.
    """
    inside = prep.mask
    f = prep.factor
    target = torch.from_numpy(np.asarray(lr.expr, np.float64))
    mask_t = torch.from_numpy(inside)
    maps_: dict[str, np.ndarray] = {}
    scale = fill = None
    for key in STAT_KEYS:  # "mean" first: its consistency map is applied to the others
        blended = blender.pop(key, inside)
        if job.mode != "off":
            x = torch.from_numpy(blended)
            if scale is None:
                scale, fill = consistency_maps(x, target, mask_t, f)
            blended = apply_maps(x, scale, fill, mask_t, f, add_fill=key != "std").numpy()
        maps_[key] = blended.astype(np.float32)
        del blended
    counts = np.asarray(lr.expr, np.float64)
    meta = {"factor": f, "steps": job.steps, "sampler": job.sampler,
            "n_samples": job.n_samples, "patch": job.patch, "overlap": job.overlap,
            "seed": job.seed, "consistency": job.mode, "eta": job.eta, "turns": job.turns,
            "n_tiles": len(job.origins()),
            "consistency_max_rel_err": max_relative_error(maps_["mean"], counts, inside, f),
            "unplaced_counts": unplaced_counts(counts, inside, f)}
    return SRResult(mean=maps_["mean"], std=maps_["std"], q05=maps_["q05"], q95=maps_["q95"],
                    mask=inside, genes=list(job.lm.genes), cell_um=lr.cell_um / f,
                    affine=hr_frame_affine(lr, f), meta=meta)


def tile_statistics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, std, 5% and 95% quantiles over samples: ``(K, ...)`` -> 4 x ``(...)``."""
    q05, q95 = np.quantile(counts, [0.05, 0.95], axis=0)
    return {"mean": counts.mean(0), "std": counts.std(0), "q05": q05, "q95": q95}

"""Benchmark methods and the protocol they all share.

Every method gets the same inputs at prediction time: the LR sample (counts per LR cell and the
image) and an HR mask derived from it (:func:`prediction_mask`); the truth and its mask are used
for scoring only. Every method's raw map is also reported after the same post-processing, the
spot-consistency step :func:`with_consistency` (rows "<method> + C").
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from diffst.api import ABLATIONS, model_config_for
from diffst.baselines import BASELINES, IStarLike
from diffst.baselines.regression import HistologyRegression
from diffst.benchmark.presets import Preset, predict_settings, train_config
from diffst.config import paper_variant
from diffst.consistency import redistribute_np
from diffst.data.lr import hr_mask_from_lr
from diffst.data.sample import STSample
from diffst.infer import super_resolve
from diffst.model.config import SchedulerConfig
from diffst.selftune import self_tune
from diffst.train import Trainer

METHOD_LABELS: dict[str, str] = {
    "gene_mean": "Gene mean (reference)",
    "spot_constant": "Spot-constant",
    "bicubic": "Bicubic",
    "tesla": "TESLA-like",
    "regression": "Histology regression",
    "istar_like": "iStar-like",
    "diffst": "Diff-ST",
}
"""The main methods, in table order. ``gene_mean`` is a reference row, not a contender."""

REFERENCE_METHODS = frozenset({"gene_mean"})
ENSEMBLE_SEED_STRIDE = 1000
"""Seed offset between Diff-ST ensemble members (member ``i`` of seed ``s`` trains with
``s + 1000 * i``, so the members of one seed never share the seed of another run)."""
"""Rows that show a metric's floor; no consistency variant (it would be the spot-constant)."""

ABLATION_LABELS: dict[str, str] = {
    "disentangle": "w/o disentangling",
    "modulation": "w/o modulation",
    "attention": "w/o dynamic attention",
    "graph": "w/o CIGC-Graph",
}
"""Diff-ST parts that ablation rows switch off (keys of :data:`diffst.api.ABLATIONS`)."""

CONSISTENT = "+C"
"""Suffix of a method key after the spot-consistency step, e.g. ``bicubic+C``."""

HR_MASKS = ("lr",)
"""How the HR mask given to every method is made: ``lr`` = the LR tissue mask repeated."""


def ablation_key(part: str) -> str:
    """Method key of the Diff-ST run with ``part`` switched off, e.g. ``diffst-no_graph``."""
    return f"diffst-no_{part}"


def consistent_key(key: str) -> str:
    """Key of ``key``'s map after the consistency step."""
    return key + CONSISTENT


def method_label(key: str) -> str:
    """Human-readable name of a (possibly ``+C``) method key."""
    if key.endswith(CONSISTENT):
        return method_label(key.removesuffix(CONSISTENT)) + " + C"
    if key.startswith("diffst-no_"):
        return f"Diff-ST {ABLATION_LABELS[key.removeprefix('diffst-no_')]}"
    return METHOD_LABELS.get(key, key)


def prediction_mask(lr: STSample, factor: int, kind: str = "lr") -> np.ndarray:
    """``(h*s, w*s)`` HR mask every method receives, made from the LR input only."""
    if kind != "lr":
        raise ValueError(f"unknown HR mask {kind!r}: choose from {list(HR_MASKS)}")
    return hr_mask_from_lr(lr.mask, factor)


def with_consistency(pred: np.ndarray, lr: STSample, hr_mask: np.ndarray,
                     factor: int) -> np.ndarray:
    """The spot-consistency step (:func:`diffst.consistency.redistribute_np`) on a raw map:
    ``(G, h*s, w*s)`` -> the same map rescaled within each LR cell to its measured count."""
    return redistribute_np(pred, lr.expr, hr_mask, factor).astype(np.float32)


class Method(Protocol):
    """A super-resolution method: fitted on HR training samples, applied to an LR sample."""

    def fit(self, train: list[STSample], genes: list[str], factor: int) -> None: ...

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """``(G, h*s, w*s)`` counts per HR cell on the raster of ``hr_mask``."""
        ...


class GeneMean:
    """Reference: each gene's mean count per HR cell over the input tissue, a constant map."""

    def fit(self, train: list[STSample], genes: list[str], factor: int) -> None:
        """Nothing to learn."""

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """``(G, H, W)``: LR total of each gene / number of HR mask cells, on the mask."""
        per_cell = lr.expr[:, lr.mask].sum(axis=1) / max(int(hr_mask.sum()), 1)
        return (per_cell[:, None, None] * hr_mask[None]).astype(np.float32)


class LRBaseline:
    """A :data:`diffst.baselines.BASELINES` entry: uses only the test sample's LR map/image."""

    def __init__(self, key: str, seed: int) -> None:
        self.fn, self.seed, self.factor = BASELINES[key], seed, 1

    def fit(self, train: list[STSample], genes: list[str], factor: int) -> None:
        """Nothing to learn from the training part; remembers the factor."""
        self.factor = factor

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """``(G, H, W)`` counts per HR cell."""
        return self.fn(lr, self.factor, hr_mask.shape, seed=self.seed) * hr_mask


class IStarMethod(LRBaseline):
    """:class:`~diffst.baselines.IStarLike` fitted per test slide on its LR sums."""

    def __init__(self, seed: int, settings: dict) -> None:
        super().__init__("istar_like", seed)
        self.settings = settings

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """``(G, H, W)`` counts per HR cell."""
        model = IStarLike(seed=self.seed, **self.settings)
        return model.fit(lr, self.factor, hr_mask.shape).predict() * hr_mask


class DiffSTMethod:
    """Diff-ST (optionally with parts switched off) trained by :class:`~diffst.train.Trainer`;
    predictions are raw (no consistency inside the sampler: the benchmark applies it).

    With the preset's ``n_models`` > 1 it is an ensemble: that many models are trained with
    the seeds ``seed + ENSEMBLE_SEED_STRIDE * i`` and their mean maps are averaged.
    """

    def __init__(self, preset: Preset, seed: int, ablate: list[str] | None = None,
                 progress: bool = False) -> None:
        self.preset, self.seed, self.progress = preset, seed, progress
        model, scheduler, _ = paper_variant(preset.paper_variants)
        self.model_config = model_config_for(ablate, **{**preset.model, **model})
        self.scheduler_config = SchedulerConfig(**scheduler)
        self.trainers: list[Trainer] = []

    @property
    def trainer(self) -> Trainer | None:
        """The first (for a single model: the only) trained model's trainer."""
        return self.trainers[0] if self.trainers else None

    def member_seeds(self) -> list[int]:
        """Training seeds of the ensemble members (one for a single model)."""
        return [self.seed + ENSEMBLE_SEED_STRIDE * i for i in range(self.preset.n_models)]

    def fit(self, train: list[STSample], genes: list[str], factor: int) -> None:
        """Train on the HR training samples (every ensemble member)."""
        self.trainers = []
        for seed in self.member_seeds():
            tc = train_config(self.preset, train, factor, seed)
            trainer = Trainer(train, genes, factor, self.model_config, tc,
                              scheduler_config=self.scheduler_config)
            trainer.fit(progress=self.progress)
            self.trainers.append(trainer)

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """Mean of ``n_samples`` samples per tile (the preset's sampler), counts per HR cell,
        averaged over the ensemble members; with the preset's ``self_tune`` each model is
        first fine-tuned on ``lr`` itself, and with its ``istar_mix`` each member's map is
        mixed with ``lr``'s own iStar-like map."""
        maps = []
        how = predict_settings(self.preset)
        tune, tune_lr = how.pop("self_tune"), how.pop("self_tune_lr")
        for seed, trainer in zip(self.member_seeds(), self.trainers, strict=True):
            pipeline = self_tune(trainer.pipeline(), lr, tune, tune_lr, seed=seed,
                                 progress=self.progress, match_depth=how["match_depth"])
            result = super_resolve(pipeline, lr, hr_mask=hr_mask, seed=seed, consistency="off",
                                   progress=self.progress, **how)
            maps.append(result.mean)
        return np.mean(maps, axis=0).astype(maps[0].dtype, copy=False)


class RegressionMethod(DiffSTMethod):
    """:class:`HistologyRegression` with Diff-ST's full encoders and training budget."""

    def fit(self, train: list[STSample], genes: list[str], factor: int) -> None:
        """Train on the HR training samples."""
        tc = train_config(self.preset, train, factor, self.seed)
        trainer = HistologyRegression(train, genes, factor, self.model_config, tc,
                                      scheduler_config=self.scheduler_config)
        trainer.fit(progress=self.progress)
        self.trainers = [trainer]

    def predict(self, lr: STSample, hr_mask: np.ndarray) -> np.ndarray:
        """One deterministic pass per tile, counts per HR cell."""
        return self.trainer.predict(lr, hr_mask)


def make_method(key: str, preset: Preset, seed: int, progress: bool = False) -> Method:
    """Build the method ``key`` (see :data:`METHOD_LABELS` and :func:`ablation_key`)."""
    if key == "gene_mean":
        return GeneMean()
    if key in ("spot_constant", "bicubic", "tesla"):
        return LRBaseline(key, seed)
    if key == "istar_like":
        return IStarMethod(seed, preset.istar)
    if key == "regression":
        return RegressionMethod(preset, seed, progress=progress)
    if key == "diffst":
        return DiffSTMethod(preset, seed, progress=progress)
    if key.startswith("diffst-no_") and key.removeprefix("diffst-no_") in ABLATIONS:
        return DiffSTMethod(preset, seed, [key.removeprefix("diffst-no_")], progress)
    raise ValueError(f"unknown method {key!r}: choose from {list(METHOD_LABELS)} or "
                     f"{[ablation_key(p) for p in ABLATIONS]}")


def methods_for_factor(methods: list[str], ablations: bool, factor: int, factors: list[int],
                       preset: Preset) -> list[str]:
    """Method keys run at ``factor``: the chosen main methods plus, where due, the ablations."""
    keys = list(methods)
    at_factor = preset.ablation_factors == "all" or factor == factors[0]
    if ablations and at_factor and "diffst" in keys:
        keys += [ablation_key(p) for p in ABLATION_LABELS]
    return keys

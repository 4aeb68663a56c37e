"""Self-supervised fine-tuning of a trained model on the slide it is about to super-resolve.

The slide's own measured map is a truth one level up: pooled by the model's factor ``s`` it
gives pairs ``(spots pooled s x s) -> spots`` on the very tissue, stain and sequencing depth
to be refined, with no finer truth needed. :func:`self_tune` fine-tunes a copy of a trained
:class:`~diffst.pipeline.DiffSTPipeline` on those pairs (the training loss of
:class:`~diffst.train.Trainer`, started from the pipeline's weights, gene graph, scaler and
diffusion variable; all cell tiles visible) and returns a pipeline with the tuned weights and
the original geometry, so it is then applied to the slide at its usual scale.
"""

from __future__ import annotations

from dataclasses import replace

from diffst.config import SELF_TUNE_LR, TrainConfig
from diffst.data.sample import SampleError, STSample
from diffst.infer import check_model_fits, depth_ratio
from diffst.pipeline import DiffSTPipeline
from diffst.train import Trainer


def self_tune(pipeline: DiffSTPipeline, sample: STSample, steps: int, lr: float = SELF_TUNE_LR,
              batch_size: int = 8, seed: int = 0, progress: bool = False,
              match_depth: bool = False) -> DiffSTPipeline:
    """Fine-tune ``pipeline`` on ``sample`` pooled by its factor -> ``sample`` itself.

    Args:
        pipeline: a trained model; it is not changed.
        sample: the slide to be super-resolved (its measured map and H&E image): the
            pipeline's genes and cell size (:func:`diffst.infer.check_model_fits`), at least
            ``factor`` cells on a side.
        steps: optimiser steps (batches of ``batch_size`` patches of ``pipeline.patch`` cells
            of the sample's size); 0 returns ``pipeline`` unchanged.
        lr: AdamW learning rate.
        seed: seed of the patch draws and the diffusion noise.
        match_depth: tune on the sample scaled to the training data's depth, as
            :func:`diffst.infer.super_resolve` ``match_depth`` samples it.

    Returns:
        A :class:`DiffSTPipeline` with the fine-tuned EMA weights and ``pipeline``'s geometry
        (HR cell size, image pixels per cell, patch), its ``record`` noting ``self_tune_steps``.
    """
    if steps < 0:
        raise ValueError(f"self_tune steps must be >= 0, got {steps}")
    if steps == 0:
        return pipeline
    sample = check_model_fits(pipeline, sample)  # the model's genes, in its order; cell size
    if match_depth:
        sample = replace(sample, expr=sample.expr * depth_ratio(pipeline, sample))
    tc = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, patch=pipeline.patch,
                     work_um_per_px=pipeline.work_um_per_px, seed=seed,
                     curriculum=[(0.0, 1.0)], checkpoint_every=steps,
                     log1p=pipeline.scaler.log1p, device=str(pipeline.device))
    try:
        trainer = Trainer([sample], pipeline.genes, pipeline.factor, train_config=tc,
                          spots_only=True, start=pipeline)
    except SampleError as exc:
        raise SampleError(f"sample '{sample.name}' cannot be used for self-tuning ({exc}); "
                          "run without it (--self-tune 0; a model trained with --preset "
                          "self-tunes by default at x2 for spot data)") from exc
    trainer.fit(progress=progress)
    record = {**pipeline.record, "self_tune_steps": steps}
    return replace(pipeline, model=trainer.ema.eval(), record=record)

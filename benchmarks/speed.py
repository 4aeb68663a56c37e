"""Speed benchmark: training and sampling throughput, accuracy against sampler steps, whole slide.

Everything runs on the simulated tissue of :mod:`diffst.data.simulate` (no downloads) on this
machine, and every speed is also given as a ratio to a reference measured in the same run, so
figures from different machines can be compared:

1. Training steps per second of Diff-ST (default model, patch 40, batch 8, factor 5) in
   float32, with bfloat16 autocast, with channels-last weights and with both; reference: the
   histology regression baseline (the same networks trained without diffusion). Peak memory.
2. The training data pipeline: at batches 8, 32 and 128 (until memory runs out) the training
   step as it was before the device-resident pipeline (the per-item NumPy patch sampler,
   ``TrainConfig(data_pipeline="numpy", channels_last=False)``) and today's default (the
   device-resident sampler; channels-last weights on the CPU in float32) train alternately:
   data time per step, its share of the step, steps/s and patches/s, as ratios to the step
   before (and in bf16 autocast too on CUDA). Also a 10-section training set: memory the
   device sampler stores and the time to draw a batch.
3. A model trained briefly (``--train-steps``) on the left part of a 1.6 mm tissue; the held-out
   right strip is super-resolved with DDIM and DPM-Solver++ at 5, 10 and 20 steps (1 sample per
   tile): HR cells x genes per second, time relative to bicubic interpolation and to the
   regression baseline, and RMSE/SSIM/PCC against the truth (:mod:`diffst.metrics`).
4. The same sampling with autocast and/or channels-last, with the change of the output.
5. Whole-slide sampling of a simulated 2 mm tissue at factor 10 (8 µm HR cells: a 250 x 250 HR
   raster from a 25 x 25 LR map), 20 genes, 8 samples per tile, 20 DDIM steps: a few tiles are
   timed and the whole slide is extrapolated from them (``--slide-tiles 0`` samples it all).

Usage (from the repository root)::

    python benchmarks/speed.py            # full run; writes benchmarks/results/speed.md
    python benchmarks/speed.py --device cuda --out benchmarks/results/speed_cuda.md
    python benchmarks/speed.py --quick    # smoke test with a tiny model; prints only
    python benchmarks/speed.py --slide-tiles 0 --sections slide   # time the whole slide

The full run takes under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffst.baselines import IStarLike, bicubic
from diffst.data.lr import padded_mask, simulate_lr
from diffst.data.patches import pad_prepared, prepare_inference_sample
from diffst.data.sample import STSample
from diffst.data.simulate import simulate_tissue
from diffst.demo import split_holdout
from diffst.infer import super_resolve, tile_origins
from diffst.io.atomic import atomic_path
from diffst.metrics import evaluate, summarize
from diffst.model.config import DiffSTConfig
from diffst.pipeline import DiffSTPipeline
from diffst.precision import is_channels_last
from diffst.threads import apply_threads
from diffst.train import TrainConfig, Trainer, resolve_device

SECTIONS = ("train", "pipeline", "sample", "precision", "slide")
MODES = {  # name -> (bf16 autocast, channels_last)
    "fp32": (False, False),
    "bf16 autocast": (True, False),
    "channels_last": (False, True),
    "bf16 + channels_last": (True, True),
}


@dataclass
class Settings:
    """Knobs of the benchmark (defaults: the full run)."""

    seed: int = 0
    size_um: float = 1600.0
    n_genes: int = 20
    factor: int = 5
    holdout: float = 0.3
    patch: int = 40
    batch_size: int = 8
    speed_rounds: int = 2
    speed_steps: int = 2
    train_steps: int = 100
    train_lr: float = 1e-3
    sampler_steps: tuple[int, ...] = (5, 10, 20)
    samplers: tuple[str, ...] = ("ddim", "dpmpp")
    precision_sampler: str = "dpmpp"
    precision_steps: int = 10
    slide_um: float = 2000.0
    slide_factor: int = 10
    slide_genes: int = 20
    slide_samples: int = 8
    slide_steps: int = 20
    slide_tiles: int = 2
    slide_modes: tuple[str, ...] = ("fp32", "bf16 autocast")
    pipeline_batches: tuple[int, ...] = (8, 32, 128)
    pipeline_steps: int = 1
    pipeline_sections: int = 10
    pipeline_section_um: float = 800.0
    sustain_s: float = 5.0  # CUDA: seconds of back-to-back steps per row (GPU busy, steps/s)
    cpu_reference_threads: int = 2  # CUDA: the CPU rate the GPU rows are compared with
    compile: bool = False  # CUDA: also time torch.compile at the largest batch
    model: dict = field(default_factory=dict)
    device: str = "auto"
    quick: bool = False

    def model_config(self) -> DiffSTConfig:
        """The Diff-ST configuration benchmarked (the default one unless ``--quick``)."""
        return DiffSTConfig(**self.model)


def quick_settings() -> Settings:
    """A tiny model on small tissues: the whole script in well under a minute."""
    return Settings(size_um=480.0, patch=20, batch_size=4, speed_rounds=1, speed_steps=1,
                    train_steps=3, sampler_steps=(2, 4), precision_steps=2, slide_um=800.0,
                    slide_genes=6, slide_samples=2, slide_steps=2, slide_tiles=1,
                    n_genes=6, quick=True, pipeline_batches=(4, 8), pipeline_steps=1,
                    pipeline_sections=3, pipeline_section_um=320.0,
                    model=dict(channels=8, channel_mults=(1, 2), time_dim=16, cond_channels=8,
                               tissue_px_per_cell=2, tile_px=8, n_tiles=6, attn_dim=8,
                               attn_heads=2, graph_dim=4, graph_layers=1))


# ---------------------------------------------------------------------------- measurement
def machine_info(device: torch.device) -> dict[str, str]:
    """CPU model, cores, torch version and threads (plus the GPU when used)."""
    model, flags = platform.processor() or "unknown", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags.split()]
    info = {
        "cpu": model,
        "logical cores": str(os.cpu_count()),
        "cores usable": str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity")
        else "?",
        "bf16 CPU instructions": ", ".join(bf16) or "none",
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "device": str(device),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class PeakMemory:
    """Peak resident memory of this process (and peak CUDA memory) since the last reset."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        """Start a new measurement (Linux: resets VmHWM through /proc/self/clear_refs)."""
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> str:
        """``"<RSS> MiB"`` (plus ``" / <GPU> MiB GPU"`` on CUDA)."""
        rss = None
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024
        if rss is None:  # whole-run peak where VmHWM cannot be reset
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        text = f"{rss:.0f} MiB"
        if self.device.type == "cuda":
            text += f" / {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f} MiB GPU"
        return text


class GpuBusy:
    """Mean NVML GPU utilisation (% of time a kernel was running) while a block runs.

    Polls ``nvmlDeviceGetUtilizationRates`` every 50 ms in a thread; the first 0.5 s are
    dropped (NVML averages over its own sampling period, which may include the time before).
    ``mean`` is ``None`` without a GPU or without the ``nvidia-ml-py`` package.
    """

    def __init__(self, device: torch.device) -> None:
        self.handle, self.mean = None, None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self._read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        except Exception:  # noqa: BLE001 - any NVML failure means "not measured"
            self.handle = None

    def __enter__(self) -> GpuBusy:
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        if self.handle is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.wait(0.05):
            self.samples.append((time.perf_counter() - t0, float(self._read())))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.handle is not None:
            self._thread.join()
            kept = [u for t, u in self.samples if t >= 0.5] or [u for _, u in self.samples]
            self.mean = float(np.mean(kept)) if kept else None


def sustained(trainer: Trainer, seconds: float, busy: GpuBusy) -> float:
    """Steps per second of back-to-back training steps for about ``seconds`` (GPU busy too)."""
    _sync(trainer.device)
    with busy:
        t0, n = time.perf_counter(), 0
        while n < 2 or time.perf_counter() - t0 < seconds:
            trainer.train_step()
            n += 1
        _sync(trainer.device)
        elapsed = time.perf_counter() - t0
    return n / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """Run ``fn`` once; return its result and the wall time in seconds."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


@contextlib.contextmanager
def mode(trainer: Trainer, name: str) -> Iterator[None]:
    """Train in one of :data:`MODES` (bf16 autocast and/or channels-last weights); the
    trainer's precision and weight layout are restored afterwards."""
    bf16, channels_last = MODES[name]
    before, was_channels_last = trainer.tc.bf16, is_channels_last(trainer.model)
    trainer.tc.bf16 = bf16
    trainer.model.to(memory_format=_layout(channels_last))
    try:
        yield
    finally:
        trainer.tc.bf16 = before
        trainer.model.to(memory_format=_layout(was_channels_last))


def _layout(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def scores(truth: STSample, pred: np.ndarray) -> dict[str, float]:
    """Mean RMSE/SSIM/PCC over genes (truth min-max protocol) of ``pred`` cropped to the truth."""
    h, w = truth.shape
    table = evaluate(truth.expr, pred[:, :h, :w], truth.mask, truth.genes)
    return summarize(table)


def count_tiles(hr_mask: np.ndarray, patch: int, overlap: int, factor: int) -> int:
    """Tiles that :func:`diffst.infer.super_resolve` samples on a raster with ``hr_mask``."""
    h, w = hr_mask.shape
    ph, pw = max(0, patch - h), max(0, patch - w)
    ph, pw = ph + (-ph) % factor, pw + (-pw) % factor
    mask = np.pad(hr_mask, ((0, ph), (0, pw)))
    stride = patch - overlap
    rows = tile_origins(mask.shape[0], patch, stride, factor)
    cols = tile_origins(mask.shape[1], patch, stride, factor)
    return sum(bool(mask[r : r + patch, c : c + patch].any()) for r in rows for c in cols)


# ---------------------------------------------------------------------------- sections
@dataclass
class Data:
    """The simulated tissue split into a training part and a held-out strip."""

    tissue: STSample
    train: STSample
    test: STSample
    lr: STSample
    hr_mask: np.ndarray


def make_data(s: Settings) -> Data:
    """Simulate the tissue and pool the held-out strip to LR."""
    tissue = simulate_tissue(seed=s.seed, size_um=s.size_um, cell_um=8.0, n_genes=s.n_genes)
    train, test = split_holdout(tissue, s.holdout, s.factor)
    return Data(tissue, train, test, simulate_lr(test, s.factor), padded_mask(test.mask, s.factor))


def new_trainer(s: Settings, data: Data, steps: int, cls: type[Trainer] = Trainer,
                pipeline: str = "device", compile: bool = False,
                channels_last: bool | None = None) -> Trainer:
    """A fresh trainer on the training part with the benchmark's model and patch settings."""
    tc = TrainConfig(steps=steps, batch_size=s.batch_size, lr=s.train_lr, ema_decay=0.995,
                     patch=s.patch, seed=s.seed, checkpoint_every=10**9, device=s.device,
                     data_pipeline=pipeline, compile=compile, channels_last=channels_last)
    return cls([data.train], data.tissue.genes, s.factor, s.model_config(), tc)


PIPELINES = {"numpy": "per-item NumPy (before)", "device": "device-resident"}
STEPS = {"numpy": "before: per-item NumPy", "device": "today: device-resident"}
"""The training steps the pipeline table compares (the NumPy one as before this pipeline)."""
STEP_CHANNELS_LAST = {"numpy": False, "device": None}
"""``TrainConfig.channels_last`` of each compared step: NCHW before, today's default now."""


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


def bench_pipeline_batch(s: Settings, data: Data, batch: int, bf16: bool, mem: PeakMemory
                         ) -> list[dict]:
    """Data time, step time and peak memory of both pipelines at one batch size.

    The two trainers alternate step by step (and draw by draw), so a changing load on a
    shared machine slows both alike; more steps are timed at small batches.
    """
    trainers, peaks = {}, {}
    for name in PIPELINES:
        mem.reset()
        trainers[name] = new_trainer(dataclasses.replace(s, batch_size=batch), data, 10**6,
                                     pipeline=name, channels_last=STEP_CHANNELS_LAST[name])
        trainers[name].tc.bf16 = bf16
        timed(trainers[name].train_step, trainers[name].device)  # warm-up
        peaks[name] = mem.peak_mib()
    n_steps = max(s.pipeline_steps, min(6, 64 // batch))
    draws: dict[str, list[float]] = {name: [] for name in PIPELINES}
    steps: dict[str, list[float]] = {name: [] for name in PIPELINES}
    for _ in range(max(3, n_steps)):
        for name, tr in trainers.items():
            draws[name].append(timed(tr.draw_batch, tr.device)[1])
    for _ in range(n_steps):
        for name, tr in trainers.items():
            steps[name].append(timed(tr.train_step, tr.device)[1])
    rows = [{"batch": batch, "pipeline": name, "bf16": bf16, "steps": n_steps,
             "draw_s": float(np.median(draws[name])), "step_s": float(np.median(steps[name])),
             "peak": peaks[name], "held_mib": sampler_mib(trainers[name].sampler),
             "channels_last": is_channels_last(trainers[name].model)}
            for name in PIPELINES]
    if trainers["device"].device.type == "cuda" and s.sustain_s > 0:
        for row, tr in zip(rows, trainers.values(), strict=True):
            busy = GpuBusy(tr.device)
            row["sustained"] = sustained(tr, s.sustain_s, busy)
            row["busy"] = busy.mean
    return rows


def bench_compiled(s: Settings, data: Data, batch: int, bf16: bool, mem: PeakMemory) -> dict:
    """The device-resident pipeline with ``TrainConfig(compile=True)`` (CUDA): compile time
    (the first step) and sustained steps/s with GPU busy."""
    mem.reset()
    tr = new_trainer(dataclasses.replace(s, batch_size=batch), data, 10**6, compile=True)
    tr.tc.bf16 = bf16
    first = timed(tr.train_step, tr.device)[1]
    tr.train_step()
    busy = GpuBusy(tr.device)
    rate = sustained(tr, s.sustain_s, busy)
    return {"batch": batch, "pipeline": "device", "compiled": True, "bf16": bf16,
            "first_step_s": first, "sustained": rate, "busy": busy.mean, "peak": mem.peak_mib()}


def cpu_reference(s: Settings, data: Data) -> dict:
    """Patches/s of the default pipeline on the CPU with ``cpu_reference_threads`` threads
    (batch ``batch_size``, fp32, median of 3 steps after a warm-up): what the GPU rows are
    compared with, measured on the same machine in the same run."""
    before = torch.get_num_threads()
    torch.set_num_threads(s.cpu_reference_threads)
    try:
        tr = new_trainer(dataclasses.replace(s, device="cpu"), data, 10**6)
        tr.train_step()
        step = float(np.median([timed(tr.train_step, tr.device)[1] for _ in range(3)]))
    finally:
        torch.set_num_threads(before)
    return {"threads": s.cpu_reference_threads, "batch": s.batch_size, "step_s": step,
            "patches_s": s.batch_size / step}


def sampler_mib(sampler: object) -> float:
    """MiB of section data a patch sampler holds (its arrays or tensors)."""
    from diffst.data.device_patches import DevicePatchSampler

    if isinstance(sampler, DevicePatchSampler):
        return sum(p.nbytes for p in sampler.pools) / 2**20
    arrays = [a for p in sampler.samples for a in (p.lr, p.lr_up, p.mask, p.image, p.hr)
              if a is not None]
    return sum(a.nbytes for a in arrays) / 2**20


def bench_pipeline(s: Settings, data: Data, mem: PeakMemory, log: Callable[[str], None]
                   ) -> dict:
    """Both patch pipelines at every batch size of ``pipeline_batches`` (OOM ends the list),
    and the memory and draw time of a many-section training set."""
    device = resolve_device(s.device)
    precisions = [False, True] if device.type == "cuda" else [False]
    rows, fitted = [], []
    for batch in s.pipeline_batches:
        try:
            for bf16 in precisions:
                for r in bench_pipeline_batch(s, data, batch, bf16, mem):
                    rows.append(r)
                    log(f"pipeline {r['pipeline']}{' bf16' if bf16 else ''} batch {batch}: "
                        f"data {r['draw_s']:.3f} s of {r['step_s']:.3f} s/step"
                        + (f", sustained {r['sustained']:.2f} steps/s, GPU busy "
                           f"{_busy(r['busy'])}" if "sustained" in r else ""))
            fitted.append(batch)
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            log(f"batch {batch}: out of memory, larger batches skipped")
            rows.append({"batch": batch, "oom": True})
            break
    out = {"rows": rows, "sections": bench_sections(s, device, log)}
    if device.type == "cuda":
        out["cpu"] = cpu_reference(s, data)
        log(f"CPU reference ({out['cpu']['threads']} threads): "
            f"{out['cpu']['patches_s']:.1f} patches/s")
        if s.compile and fitted:  # in the faster precision at the largest batch that fit
            at = [r for r in rows if r.get("batch") == fitted[-1] and r["pipeline"] == "device"]
            bf16 = max(at, key=lambda r: r.get("sustained", 0.0))["bf16"]
            r = bench_compiled(s, data, fitted[-1], bf16, mem)
            out["compiled"] = [r]
            log(f"compiled batch {r['batch']}{' bf16' if bf16 else ''}: first step "
                f"{r['first_step_s']:.0f} s, sustained {r['sustained']:.2f} steps/s")
    return out


def bench_sections(s: Settings, device: torch.device, log: Callable[[str], None]) -> dict:
    """Store ``pipeline_sections`` simulated sections in both samplers; time batch draws."""
    from diffst.data.device_patches import DevicePatchSampler
    from diffst.data.normalize import GeneScaler
    from diffst.data.patches import PatchSampler, prepare_training_sample

    cfg = s.model_config()
    sections = [simulate_tissue(seed=s.seed + i, size_um=s.pipeline_section_um, cell_um=8.0,
                                n_genes=s.n_genes) for i in range(s.pipeline_sections)]
    scaler = GeneScaler.fit([x.expr for x in sections], [x.mask for x in sections])
    k = 8  # 8 µm cells at 1 µm/px, as the benchmark's trainer
    prepared = [prepare_training_sample(x, s.factor, scaler, k) for x in sections]
    out: dict = {"n": len(sections), "um": s.pipeline_section_um,
                 "image_mib": sum(p.image.nbytes for p in prepared) / 2**20}
    batch = max(s.pipeline_batches[:2])
    args = (batch, cfg.tissue_px_per_cell, cfg.tile_px, cfg.n_tiles)
    for name in PIPELINES:
        if name == "numpy":
            sampler, build_s = timed(lambda: PatchSampler(prepared, s.patch, seed=s.seed),
                                     torch.device("cpu"))
        else:
            sampler, build_s = timed(lambda: DevicePatchSampler(
                prepared, s.patch, seed=s.seed, device=device,
                image_products=(cfg.tissue_px_per_cell, cfg.tile_px)), device)
            out["device_mib"] = sampler.device_bytes / 2**20
        out[name + "_held"] = sampler_mib(sampler)
        timed(lambda sampler=sampler: sampler.draw(*args), device)
        draws = [timed(lambda sampler=sampler: sampler.draw(*args), device)[1]
                 for _ in range(3)]
        out[name] = {"build_s": build_s, "draw_s": float(np.median(draws)),
                     "held_mib": sampler_mib(sampler)}
        log(f"{len(sections)} sections, {name}: built in {build_s:.1f} s, batch {batch} "
            f"drawn in {out[name]['draw_s']:.3f} s")
    out["batch"] = batch
    return out


def regression_class() -> type[Trainer] | None:
    """The histology regression baseline, when this installation has it."""
    try:
        from diffst.baselines.regression import HistologyRegression
    except ImportError:
        return None
    return HistologyRegression


def bench_training(s: Settings, data: Data, mem: PeakMemory, log: Callable[[str], None]) -> dict:
    """Seconds per training step in every mode of :data:`MODES`, interleaved over rounds."""
    trainer = new_trainer(s, data, max(s.train_steps, 1))
    dev = trainer.device
    draws = [timed(trainer.draw_batch, dev)[1] for _ in range(3)]
    times: dict[str, list[float]] = {m: [] for m in MODES}
    peaks: dict[str, str] = {}
    for rnd in range(s.speed_rounds):
        for name in MODES:
            with mode(trainer, name):
                if rnd == 0:
                    mem.reset()
                    timed(trainer.train_step, dev)  # warm-up (kernel selection, allocations)
                for _ in range(s.speed_steps):
                    times[name].append(timed(trainer.train_step, dev)[1])
                if rnd == 0:
                    peaks[name] = mem.peak_mib()
            log(f"train {name}: {np.median(times[name]):.2f} s/step")
    ref = None
    cls = regression_class()
    if cls is not None:
        reg = new_trainer(s, data, max(s.train_steps, 1), cls)
        timed(reg.train_step, dev)
        ref = float(np.median([timed(reg.train_step, dev)[1]
                               for _ in range(s.speed_rounds * s.speed_steps)]))
        log(f"train regression baseline: {ref:.2f} s/step")
    return {"times": times, "peaks": peaks, "draw_s": float(np.median(draws)), "ref_s": ref}


def train_for_accuracy(s: Settings, data: Data, bf16: bool,
                       log: Callable[[str], None]) -> tuple[Trainer, float]:
    """Train the model used for the accuracy tables; returns it and the training time."""
    trainer = new_trainer(s, data, s.train_steps)
    trainer.tc.bf16 = bf16
    _, seconds = timed(lambda: trainer.fit(progress=False), trainer.device)
    log(f"trained {s.train_steps} steps ({'bf16' if bf16 else 'fp32'}) in {seconds:.0f} s, "
        f"last loss {np.mean(trainer.history[-10:]):.4f}")
    return trainer, seconds


def bench_references(s: Settings, data: Data, trainer: Trainer | None, mem: PeakMemory,
                     log: Callable[[str], None]) -> list[dict]:
    """Bicubic, iStar-like and the regression baseline on the held-out strip."""
    hr_shape = data.hr_mask.shape
    rows = []
    mem.reset()
    pred, sec = timed(lambda: bicubic(data.lr, s.factor, hr_shape), torch.device("cpu"))
    rows.append({"method": "bicubic", "steps": "", "s": sec, **scores(data.test, pred),
                 "peak": mem.peak_mib()})
    mem.reset()
    istar = IStarLike(seed=s.seed, steps=30 if s.quick else 300)
    pred, sec = timed(lambda: istar.fit(data.lr, s.factor, hr_shape).predict(),
                      torch.device("cpu"))
    rows.append({"method": "iStar-like (fit + predict)", "steps": "", "s": sec,
                 **scores(data.test, pred), "peak": mem.peak_mib()})
    cls = regression_class()
    if cls is not None and trainer is not None:
        reg = new_trainer(s, data, s.train_steps, cls)
        reg.model.load_state_dict(trainer.model.state_dict())  # timing only (not its weights)
        reg.ema.load_state_dict(trainer.ema.state_dict())
        mem.reset()
        pred, sec = timed(lambda: reg.predict(data.lr, hr_mask=data.hr_mask,
                                              batch_size=s.batch_size), reg.device)
        rows.append({"method": "regression baseline (predict)", "steps": "", "s": sec,
                     "peak": mem.peak_mib(), "note": "speed only"})
    for row in rows:
        log(f"{row['method']}: {row['s']:.2f} s")
    return rows


def run_sampler(lm: DiffSTPipeline, s: Settings, data: Data, sampler: str, steps: int,
                autocast: bool = False, channels_last: bool = False) -> tuple[np.ndarray, float]:
    """Super-resolve the held-out strip once (1 sample per tile); returns mean map and time."""
    res, sec = timed(lambda: super_resolve(
        lm, data.lr, steps=steps, sampler=sampler, n_samples=1, patch=s.patch,
        batch_size=s.batch_size, hr_mask=data.hr_mask, seed=s.seed, progress=False,
        autocast=autocast, channels_last=channels_last), lm.device)
    return res.mean, sec


def bench_sampling(s: Settings, data: Data, lm: DiffSTPipeline, mem: PeakMemory,
                   log: Callable[[str], None]) -> list[dict]:
    """DDIM and DPM-Solver++ at each step count: time, throughput and accuracy."""
    rows = []
    run_sampler(lm, s, data, s.samplers[0], 1)  # warm-up
    for sampler in s.samplers:
        for steps in s.sampler_steps:
            mem.reset()
            pred, sec = run_sampler(lm, s, data, sampler, steps)
            rows.append({"method": f"Diff-ST {sampler}", "steps": steps, "s": sec,
                         **scores(data.test, pred), "peak": mem.peak_mib()})
            log(f"{sampler} {steps} steps: {sec:.2f} s, PCC {rows[-1]['pcc']:.3f}")
    return rows


def bench_precision(s: Settings, data: Data, lm: DiffSTPipeline,
                    log: Callable[[str], None]) -> list[dict]:
    """One sampler setting in every mode; output change relative to float32."""
    rows, ref = [], None
    for name, (ac, cl) in MODES.items():
        run_sampler(lm, s, data, s.precision_sampler, 1, ac, cl)  # warm-up of this mode
        pred, sec = run_sampler(lm, s, data, s.precision_sampler, s.precision_steps, ac, cl)
        inside = data.hr_mask[None].repeat(pred.shape[0], 0)
        if ref is None:
            ref = pred
        diff = np.abs(pred - ref)[inside].max() / max(np.abs(ref)[inside].max(), 1e-12)
        rows.append({"mode": name, "s": sec, "max_rel_change": float(diff),
                     **scores(data.test, pred)})
        log(f"sampling {name}: {sec:.2f} s, max change {diff:.2e}")
    return rows


def bench_slide(s: Settings, mem: PeakMemory, log: Callable[[str], None]) -> dict:
    """Whole-slide sampling time at factor 10 with 8 samples per tile (measured or extrapolated).

    The model is untrained (sampling cost does not depend on the weights).
    """
    f = s.slide_factor
    image_um = float(max(1, -(-int(s.slide_um) // 4096)))  # the simulator's 4096 px limit
    tissue = simulate_tissue(seed=s.seed, size_um=s.slide_um, cell_um=8.0, n_genes=s.slide_genes,
                             image_um_per_px=image_um)
    log(f"slide: simulated {s.slide_um / 1000:g} mm tissue ({tissue.mask.shape[0]} x "
        f"{tissue.mask.shape[1]} HR cells, {s.slide_genes} genes, {image_um:g} µm/px image)")
    patch = 8 * f if not s.quick else 4 * f
    tc = TrainConfig(steps=1, batch_size=1, patch=patch, seed=s.seed, device=s.device)
    trainer = Trainer([tissue], tissue.genes, f, s.model_config(), tc)
    lm = trainer.pipeline()
    lr, hr_mask = simulate_lr(tissue, f), padded_mask(tissue.mask, f)
    overlap = (patch // 4 // f) * f
    total_tiles = count_tiles(hr_mask, patch, overlap, f)
    if s.slide_tiles > 0:  # a row of tiles in the middle of the slide
        n = min(s.slide_tiles, total_tiles)
        width = (patch + (n - 1) * (patch - overlap)) // f
        r0 = max(0, (lr.shape[0] - patch // f) // 2)
        c0 = max(0, (lr.shape[1] - width) // 2)
        part = lr.crop(r0, c0, min(patch // f, lr.shape[0]), min(width, lr.shape[1]))
        part_mask = hr_mask[r0 * f : r0 * f + part.shape[0] * f,
                            c0 * f : c0 * f + part.shape[1] * f]
    else:
        part, part_mask = lr, hr_mask
    tiles = count_tiles(part_mask, patch, overlap, f)
    out = {"hr_shape": tuple(hr_mask.shape), "lr_shape": lr.shape, "patch": patch,
           "overlap": overlap, "total_tiles": total_tiles, "timed_tiles": tiles, "runs": []}
    prep_s = timed(lambda: pad_prepared(prepare_inference_sample(lr, f, lm.scaler, lm.k,
                                                                 hr_mask=hr_mask), patch),
                   torch.device("cpu"))[1]
    out["prepare_s"] = prep_s
    super_resolve(lm, part, steps=1, n_samples=1, patch=patch, batch_size=min(8, tiles),
                  hr_mask=part_mask, progress=False)  # warm-up
    for name in s.slide_modes:
        ac, cl = MODES[name]
        mem.reset()
        res, sec = timed(lambda ac=ac, cl=cl: super_resolve(
            lm, part, steps=s.slide_steps, sampler="ddim", n_samples=s.slide_samples,
            patch=patch, batch_size=min(8, tiles), hr_mask=part_mask, seed=s.seed,
            progress=False, autocast=ac, channels_last=cl), lm.device)
        tiles_run = int(res.meta.get("n_tiles", tiles))
        whole = sec / tiles_run * total_tiles if s.slide_tiles > 0 else sec
        out["runs"].append({"mode": name, "s": sec, "tiles": tiles_run, "whole_s": whole,
                            "peak": mem.peak_mib()})
        log(f"slide {name}: {sec:.1f} s for {tiles_run} tiles -> whole slide {whole / 60:.1f} min")
    return out


# ---------------------------------------------------------------------------- report
def _ratio(x: float) -> str:
    """A ratio with sensible digits: 1,234x, 12.3x or 0.012x."""
    if x >= 100:
        return f"{x:,.0f}x"
    return f"{x:.1f}x" if x >= 1 else f"{x:.2g}x"


def _fmt(x: float, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def shown_path(value: str | Path) -> str:
    """``value`` relative to the repository (its name alone when outside), so that no machine
    path appears in the results."""
    root = Path(__file__).resolve().parents[1]
    path = Path(value).resolve()
    return str(path.relative_to(root) if path.is_relative_to(root) else Path(path.name))


def shown_argv(argv: list[str]) -> list[str]:
    """``argv`` with the ``--out`` file shown by :func:`shown_path`."""
    shown, after_out = [], False
    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("--out=") else arg if after_out else None
        if value is not None:
            rel = shown_path(value)
            arg = f"--out={rel}" if arg.startswith("--out=") else rel
        after_out = arg == "--out"
        shown.append(arg)
    return shown


def render(s: Settings, info: dict, results: dict, argv: list[str], wall: float) -> str:
    """The results as Markdown (tables produced from the measurements only)."""
    lines = ["# Speed benchmark results", "",
             f"Produced by `python benchmarks/speed.py {' '.join(shown_argv(argv))}`".rstrip()
             + " on "
             f"{time.strftime('%Y-%m-%d %H:%M')}; total run time {wall / 60:.1f} min. "
             "Do not edit by hand: rerun the script.", ""]
    if s.quick:
        lines += ["**QUICK smoke-test run with a tiny model: not representative.**", ""]
    lines += ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += [f"| load average at end | {' '.join(f'{x:.2f}' for x in os.getloadavg())} |", "",
              "Other processes sharing the CPU slow every figure down; the ratios to references "
              "measured in the same run are the more portable numbers.", ""]
    if "train" in results:
        lines += _render_training(s, results["train"])
    if "pipeline" in results:
        lines += _render_pipeline(s, results["pipeline"])
    if "sample" in results:
        lines += _render_sampling(s, results)
    if "precision" in results:
        lines += _render_precision(s, results["precision"])
    if "slide" in results:
        lines += _render_slide(s, results["slide"])
    return "\n".join(lines) + "\n"


def _render_pipeline(s: Settings, r: dict) -> list[str]:
    rows = [x for x in r["rows"] if not x.get("oom")]
    ref = {(x["batch"], x["bf16"]): x for x in rows if x["pipeline"] == "numpy"}
    lines = ["## Training data pipeline", "",
             f"Diff-ST {'tiny' if s.quick else 'default'} model, patch {s.patch}, factor "
             f"{s.factor}, {s.n_genes} genes, one training section; every batch size trained "
             "with the training step as it was before the device-resident pipeline (`before`: "
             "the per-item NumPy patch sampler and NCHW weights, `TrainConfig(data_pipeline="
             "\"numpy\", channels_last=False)`) and with today's default (`today`: the "
             "device-resident sampler, and channels-last weights on the CPU in float32, "
             "`TrainConfig.channels_last`). `data s` is `Trainer.draw_batch` (median "
             "of 3 or more), `step s` a whole training step including it (median of `steps`, "
             "after one warm-up step); data share = data s / step s. The two steps "
             "alternate, and ratios are to the step before at the same batch "
             "size and precision in this run. `sampler MiB`: section data the sampler holds "
             "(on the training device for the device-resident one); `peak memory`: process "
             "peak while building and warming up that trainer (the NumPy one is built first "
             "and stays alive, so the second figure includes it).", ""]
    cpu = r.get("cpu")
    if cpu:
        lines += [f"GPU columns: `sustained` is steps/s over {s.sustain_s:g} s of back-to-back "
                  "steps (after the timed ones); `GPU busy` the mean NVML utilisation (share of "
                  "time a kernel was running) over that window; `vs CPU` its patches/s as a "
                  f"ratio to the same pipeline on this machine's CPU with {cpu['threads']} "
                  f"threads (batch {cpu['batch']}, fp32, measured in this run: "
                  f"{cpu['patches_s']:.1f} patches/s).", ""]
    extra = " sustained steps/s | sustained patches/s | GPU busy | vs CPU |" if cpu else ""
    lines += ["| batch | training step | precision | steps | data s | step s | data share | "
              "steps/s | patches/s | steps/s vs before | data time vs before | sampler MiB | "
              "peak memory |"
              + extra,
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * extra.count("|")]
    for x in rows:
        base = ref.get((x["batch"], x["bf16"]))
        vs_step = f"{base['step_s'] / x['step_s']:.2f}x" if base else ""
        vs_data = f"{x['draw_s'] / base['draw_s']:.2f}x" if base else ""
        layout = "channels-last" if x.get("channels_last") else "NCHW"
        line = (f"| {x['batch']} | {STEPS[x['pipeline']]}, {layout} weights | "
                f"{'bf16 autocast' if x['bf16'] else 'fp32'} | {x['steps']} | {x['draw_s']:.3f} | "
                f"{x['step_s']:.3f} | {x['draw_s'] / x['step_s']:.1%} | {1 / x['step_s']:.2f} | "
                f"{x['batch'] / x['step_s']:.1f} | {vs_step} | {vs_data} | {x['held_mib']:.0f} | "
                f"{x['peak']} |")
        if cpu:
            line += _gpu_cells(x, cpu)
        lines.append(line)
    lines += _pipeline_bound(rows, ref)
    if r.get("compiled"):
        lines += ["", "With `TrainConfig(compile=True)` (`torch.compile` of the denoising step; "
                  "device-resident pipeline; the first step includes compilation):", "",
                  "| batch | precision | first step s | sustained steps/s | sustained patches/s "
                  "| GPU busy | vs CPU | peak memory |", "|---|---|---|---|---|---|---|---|"]
        for x in r["compiled"]:
            lines.append(f"| {x['batch']} | {'bf16 autocast' if x['bf16'] else 'fp32'} | "
                         f"{x['first_step_s']:.1f} |" + _gpu_cells(x, cpu) + f" {x['peak']} |")
    oom = [x["batch"] for x in r["rows"] if x.get("oom")]
    if oom:
        lines += ["", f"Batch {oom[0]} ran out of memory; larger batches were not tried."]
    sec = r["sections"]
    lines += ["", f"Many sections: {sec['n']} simulated {sec['um'] / 1000:g} mm sections "
              f"({sec['image_mib']:.0f} MiB of aligned H&E in all). The device-resident "
              f"sampler stores {sec['device_mib']:.0f} MiB on the device (maps, uint8 image, "
              "block-averaged image, tile entropy keys). Batch of "
              f"{sec['batch']} patches without the model:", "",
              "| pipeline | build s | draw s | draw time vs NumPy | sampler MiB |",
              "|---|---|---|---|---|"]
    for name in PIPELINES:
        x = sec[name]
        lines.append(f"| {PIPELINES[name]} | {x['build_s']:.1f} | {x['draw_s']:.3f} | "
                     f"{x['draw_s'] / sec['numpy']['draw_s']:.2f}x | {x['held_mib']:.0f} |")
    return lines + [""]


def _pipeline_bound(rows: list[dict], ref: dict) -> list[str]:
    """Generated lines: the measured steps/s ratio next to the most that a data pipeline alone
    could give (removing all of the data time of the step before)."""
    lines = []
    for x in rows:
        base = ref.get((x["batch"], x["bf16"]))
        if x["pipeline"] != "device" or base is None:
            continue
        share = base["draw_s"] / base["step_s"]
        lines.append(f"- batch {x['batch']}: the data share of the step before is {share:.1%}; "
                     f"removing all of its data time would give {1 / (1 - share):.2f}x steps/s, "
                     f"today's step gave {base['step_s'] / x['step_s']:.2f}x.")
    if not lines:
        return []
    return ["", "What a data pipeline alone can gain, from the rows above (the rest of a step "
            "is the model's forward and backward pass and the optimiser, which no data "
            "pipeline shortens; today's step also differs in the weight layout):", ""] + lines


def _busy(percent: float | None) -> str:
    return "n/a" if percent is None else f"{percent:.0f} %"


def _gpu_cells(x: dict, cpu: dict) -> str:
    """Sustained steps/s, patches/s, GPU busy and the ratio to the CPU reference."""
    if "sustained" not in x:
        return " | | | |"
    rate = x["sustained"] * x["batch"]
    return (f" {x['sustained']:.2f} | {rate:.1f} | {_busy(x['busy'])} | "
            f"{_ratio(rate / cpu['patches_s'])} |")


def _render_training(s: Settings, r: dict) -> list[str]:
    base = float(np.median(r["times"]["fp32"]))
    ref = r["ref_s"]
    lines = ["## Training throughput", "",
             f"Diff-ST {'tiny' if s.quick else 'default'} model, patch {s.patch}, "
             f"batch {s.batch_size}, factor {s.factor}, "
             f"{s.n_genes} genes; median of {s.speed_rounds * s.speed_steps} steps per mode "
             "(modes interleaved, after one warm-up step each). Patch extraction takes "
             f"{r['draw_s']:.2f} s of each step. Reference: the histology regression baseline "
             "(same networks, one forward pass, no diffusion), "
             + (f"{1 / ref:.2f} steps/s." if ref else "not available."), "",
             "| mode | s/step | steps/s | speed vs fp32 | steps/s vs regression | peak RSS |",
             "|---|---|---|---|---|---|"]
    for name, times in r["times"].items():
        t = float(np.median(times))
        vs_ref = _fmt(ref / t, 2) if ref else ""
        lines.append(f"| {name} | {t:.2f} | {1 / t:.2f} | {base / t:.2f}x | {vs_ref} | "
                     f"{r['peaks'].get(name, '')} |")
    fastest = min(r["times"], key=lambda m: np.median(r["times"][m]))
    lines += ["", f"Fastest here: **{fastest}** "
              f"({base / np.median(r['times'][fastest]):.2f}x fp32). bf16 autocast is "
              "`TrainConfig(bf16=True)` (`diffst train --bf16`); channels-last weights are "
              "`TrainConfig(channels_last=True)`, the default on the CPU in float32; with "
              "bf16 autocast the CPU default is NCHW (`fp32` here is the NCHW layout).", ""]
    return lines


def _render_sampling(s: Settings, results: dict) -> list[str]:
    rows = results["references"] + results["sample"]
    n_cells = int(results["n_cells"])
    g = s.n_genes
    bic = rows[0]["s"]
    reg = next((r["s"] for r in rows if r["method"].startswith("regression")), None)
    acc = results["accuracy_training"]
    lines = ["## Sampling speed and accuracy against steps", "",
             f"Held-out strip of the simulated {s.size_um / 1000:g} mm tissue (the right "
             f"{s.holdout:.0%}; {n_cells} HR tissue cells x {g} genes), factor {s.factor}, patch "
             f"{s.patch}, 1 sample per tile, batches of {s.batch_size} tiles. Diff-ST was trained "
             f"in this run for {acc['steps']} steps (batch {s.batch_size}, {acc['mode']}, "
             f"{acc['s'] / 60:.1f} min): a short training, so compare rows with each other "
             "rather than with the paper. Metrics: truth min-max protocol, mean over genes "
             "(`diffst.metrics`). The regression row times prediction only (it runs with the "
             "diffusion model's weights, so its accuracy is not shown).",
             "", "| method | steps | seconds | HR cells x genes / s | time vs bicubic | "
             "time vs regression | RMSE | SSIM | PCC | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = n_cells * g / r["s"]
        vs_reg = _ratio(r["s"] / reg) if reg else ""
        lines.append(f"| {r['method']} | {r['steps']} | {r['s']:.2f} | {rate:,.0f} | "
                     f"{_ratio(r['s'] / bic)} | {vs_reg} | {_fmt(r.get('rmse'))} | "
                     f"{_fmt(r.get('ssim'))} | {_fmt(r.get('pcc'))} | {r['peak']} |")
    lines += [""]
    return lines


def _render_precision(s: Settings, rows: list[dict]) -> list[str]:
    base = rows[0]["s"]
    lines = ["## Sampling precision and memory layout", "",
             f"{s.precision_sampler} with {s.precision_steps} steps on the held-out strip, same "
             "seed. `max change` is the largest absolute change of the mean map in tissue "
             "relative to the largest float32 value. Options: "
             "`super_resolve(..., autocast=True, channels_last=True)`.", "",
             "| mode | seconds | speed vs fp32 | max change | RMSE | SSIM | PCC |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['s']:.2f} | {base / r['s']:.2f}x | "
                     f"{r['max_rel_change']:.1e} | {_fmt(r['rmse'])} | {_fmt(r['ssim'])} | "
                     f"{_fmt(r['pcc'])} |")
    return lines + [""]


def _render_slide(s: Settings, r: dict) -> list[str]:
    h, w = r["hr_shape"]
    extrapolated = s.slide_tiles > 0
    lines = ["## Whole-slide sampling", "",
             f"Simulated {s.slide_um / 1000:g} mm tissue, 8 µm HR cells ({h} x {w} HR raster, "
             f"{r['lr_shape'][0]} x {r['lr_shape'][1]} LR at factor {s.slide_factor}), "
             f"{s.slide_genes} genes, {s.slide_samples} samples per tile, {s.slide_steps} DDIM "
             f"steps, patch {r['patch']} with overlap {r['overlap']}: {r['total_tiles']} tiles "
             f"touch tissue. Preparing the slide (image resampling) took {r['prepare_s']:.1f} s.",
             ""]
    if extrapolated:
        lines += [f"**Extrapolated**: {r['timed_tiles']} tile(s) in the middle of the slide were "
                  "sampled and timed; the whole-slide time is that time per tile times "
                  f"{r['total_tiles']} tiles (run with `--slide-tiles 0` to sample all).", ""]
    lines += ["| mode | tiles sampled | seconds | whole slide (min) | peak RSS |",
              "|---|---|---|---|---|"]
    for run in r["runs"]:
        label = " (extrapolated)" if extrapolated else ""
        lines.append(f"| {run['mode']} | {run['tiles']} | {run['s']:.1f} | "
                     f"{run['whole_s'] / 60:.1f}{label} | {run['peak']} |")
    return lines + [""]


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="Tiny model, seconds (smoke test).")
    p.add_argument("--out", default=None,
                   help="Markdown results file (default benchmarks/results/speed.md; "
                        "none with --quick).")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"Comma-separated subset of {','.join(SECTIONS)}.")
    p.add_argument("--train-steps", type=int, default=None,
                   help="Training steps of the accuracy model (default 100).")
    p.add_argument("--train-precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="Precision of that training; auto = the faster of the two measured.")
    p.add_argument("--slide-tiles", type=int, default=None,
                   help="Tiles timed for the whole-slide estimate (0 = the whole slide).")
    p.add_argument("--slide-um", type=float, default=None,
                   help="Side of the simulated whole slide in µm (default 2000; 6480 is a "
                        "Visium HD-sized 810 x 810 raster of 8 µm cells).")
    p.add_argument("--slide-genes", type=int, default=None, help="Genes of that slide (20).")
    p.add_argument("--slide-samples", type=int, default=None, help="Samples per tile (8).")
    p.add_argument("--sustain", type=float, default=None,
                   help="CUDA: seconds of back-to-back steps per pipeline row (default 5).")
    p.add_argument("--compile", action="store_true",
                   help="CUDA: also time torch.compile at the largest batch that fits.")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: DIFFST_THREADS, else usable cores - 1).")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections, print progress and the Markdown, write the results file."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    apply_threads(args.threads)
    s = quick_settings() if args.quick else Settings()
    s = dataclasses.replace(s, seed=args.seed, device=args.device)
    if args.train_steps is not None:
        s.train_steps = args.train_steps
    for name in ("slide_tiles", "slide_um", "slide_genes", "slide_samples"):
        if getattr(args, name) is not None:
            setattr(s, name, getattr(args, name))
    if args.sustain is not None:
        s.sustain_s = args.sustain
    s.compile = args.compile
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    device = resolve_device(args.device)
    mem = PeakMemory(device)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    info = machine_info(device)
    torch.manual_seed(s.seed)
    results: dict = {}
    out = args.out or (None if args.quick else str(Path(__file__).parent / "results" / "speed.md"))

    def save() -> None:  # after every section, so a run stopped early keeps what it measured
        if out:
            text = render(s, info, results, argv, time.perf_counter() - start)
            with atomic_path(Path(out)) as tmp:
                tmp.write_text(text, encoding="utf-8")

    data = make_data(s) if {"train", "pipeline", "sample", "precision"} & set(sections) \
        else None
    if "train" in sections:
        results["train"] = bench_training(s, data, mem, log)
        save()
    if "pipeline" in sections:
        results["pipeline"] = bench_pipeline(s, data, mem, log)
        save()
    if {"sample", "precision"} & set(sections):
        bf16 = args.train_precision == "bf16"
        if args.train_precision == "auto" and "train" in results:
            t = results["train"]["times"]
            bf16 = bool(np.median(t["bf16 autocast"]) < np.median(t["fp32"]))
        trainer, train_s = train_for_accuracy(s, data, bf16, log)
        lm = trainer.pipeline()
        if "sample" in sections:
            results["n_cells"] = int(data.test.mask.sum())
            results["accuracy_training"] = {"steps": s.train_steps, "s": train_s,
                                            "mode": "bf16 autocast" if bf16 else "fp32"}
            results["references"] = bench_references(s, data, trainer, mem, log)
            results["sample"] = bench_sampling(s, data, lm, mem, log)
        save()
        if "precision" in sections:
            results["precision"] = bench_precision(s, data, lm, log)
            save()
    if "slide" in sections:
        results["slide"] = bench_slide(s, mem, log)
    print(render(s, info, results, argv, time.perf_counter() - start))
    save()
    if out:
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

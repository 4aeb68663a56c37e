"""Data-parallel training on several GPUs (or CPU processes) with DistributedDataParallel.

Launch one process per GPU with ``torchrun``; every process loads the same samples::

    torchrun --standalone --nproc_per_node=4 -m diffst.distributed \\
        slide1.npz slide2.npz --factor 5 --out model.pt --steps 2000 --checkpoint ck.pt --bf16

Each process (rank) trains the same model on its own random patches (the patch sampler of rank
``r`` is seeded with ``seed + r``), gradients are averaged across ranks after every backward
pass, so all ranks hold identical weights after every step. ``--batch-size`` is per rank: the
effective batch is ``batch_size * world_size``. Only rank 0 writes the checkpoint and the model
file; a checkpoint stores every rank's random state, so a run resumed with the same number of
processes continues exactly (with another number, ranks above 0 are reseeded). The loss
history in the checkpoint is rank 0's.

The backend is NCCL when the model trains on CUDA and gloo on CPU (``--backend`` overrides).
``--threads`` sets PyTorch's CPU threads per process; the default is that of the ``diffst`` verbs
(:mod:`diffst.threads`) with the usable cores shared among the processes on this machine.
Started without ``torchrun`` the module trains in a single process (world size 1).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from diffst.config import PATCH_PER_FACTOR, TOP_GENES, TrainConfig, default
from diffst.data.sample import STSample
from diffst.model.config import PREDICTIONS, DiffSTConfig, SchedulerConfig
from diffst.pipeline import resolve_device
from diffst.train import DenoisingStep, Trainer


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int
    world_size: int
    local_rank: int


def launch_info() -> DistInfo:
    """Rank, world size and local rank from the variables ``torchrun`` sets (default 0, 1, 0)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for single-machine process groups)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_process_group(backend: str | None = None, device: str = "auto") -> DistInfo:
    """Join the process group described by the ``torchrun`` environment.

    ``backend`` defaults to ``nccl`` when ``device`` resolves to CUDA, else ``gloo``. Without
    ``torchrun`` variables a one-process group on 127.0.0.1 is created. Returns this process's
    :class:`DistInfo`; does nothing but return it when a group already exists.
    """
    info = launch_info()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)
    on_cuda = resolve_device(device).type == "cuda"
    backend = backend or ("nccl" if on_cuda else "gloo")
    if on_cuda:
        torch.cuda.set_device(info.local_rank)
    if "MASTER_ADDR" not in os.environ:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    return info


def all_parts_used(config: DiffSTConfig) -> bool:
    """True when no Diff-ST part is switched off, i.e. every parameter gets a gradient."""
    return (config.use_disentangle and config.use_modulation and config.use_dynamic_attention
            and config.use_gene_graph)


class DistributedTrainer(Trainer):
    """A :class:`~diffst.train.Trainer` whose steps run in a DistributedDataParallel group.

    Construct it in every process after :func:`init_process_group`, with the same arguments.
    ``rank``/``world_size`` default to the current process group's.
    """

    def __init__(self, samples: list[STSample], genes: list[str], factor: int,
                 model_config: DiffSTConfig | None = None,
                 train_config: TrainConfig | None = None, spots_only: bool = False,
                 scheduler_config: SchedulerConfig | None = None, *,
                 local_rank: int = 0) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DistributedTrainer needs a process group: call "
                               "diffst.distributed.init_process_group() first (or use torchrun)")
        tc = replace(train_config or TrainConfig())
        if resolve_device(tc.device).type == "cuda":
            tc.device = f"cuda:{local_rank}"
        super().__init__(samples, genes, factor, model_config, tc, spots_only, scheduler_config)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._reseed(self.tc.seed + self.rank)
        kwargs: dict = {"find_unused_parameters": not all_parts_used(self.model_config)}
        if self.device.type == "cuda":
            kwargs["device_ids"] = [self.device.index or 0]
        self.train_module = DistributedDataParallel(DenoisingStep(self.model), **kwargs)

    def _reseed(self, seed: int | list[int]) -> None:
        """Give this rank its own patch stream and noise stream (rank 0 keeps the plain seed)."""
        if self.rank == 0 and seed == self.tc.seed:
            return
        self.sampler.rng = np.random.default_rng(seed)
        torch.manual_seed(int(np.random.default_rng(seed).integers(2**62)))

    def _rng_state(self) -> dict:
        return {"sampler_rng": self.sampler.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state()}

    def fit(self, steps: int | None = None, checkpoint: str | Path | None = None,
            progress: bool = True, callback=None) -> list[float]:
        """As :meth:`Trainer.fit` in every rank (progress bar and ``callback`` on rank 0 only);
        ends in a barrier."""
        history = super().fit(steps, checkpoint, progress and self.rank == 0,
                              callback if self.rank == 0 else None)
        dist.barrier()
        return history

    def save_checkpoint(self, path: str | Path) -> Path:
        """Collect every rank's random state; rank 0 writes the checkpoint (all ranks call it)."""
        states: list = [None] * self.world_size
        dist.all_gather_object(states, self._rng_state())
        self._rank_states = states
        if self.rank == 0:
            super().save_checkpoint(path)
        dist.barrier()
        return Path(path)

    def checkpoint_extras(self) -> dict:
        """The per-rank random states gathered by :meth:`save_checkpoint`."""
        return {"rank_rng": getattr(self, "_rank_states", []), "world_size": self.world_size}

    def load_checkpoint(self, path: str | Path) -> dict:
        """Restore a checkpoint in every rank, with this rank's own random state when stored."""
        state = super().load_checkpoint(path)
        ranks = state.get("rank_rng") or []
        if len(ranks) == self.world_size:
            own = ranks[self.rank]
            self.sampler.rng.bit_generator.state = own["sampler_rng"]
            torch.set_rng_state(own["torch_rng"])
        elif self.rank > 0:
            self._reseed([self.tc.seed, self.rank, self.step])
        return state

    def export_model(self, path: str | Path) -> Path:
        """Rank 0 writes the model file; every rank waits for it."""
        if self.rank == 0:
            super().export_model(path)
        dist.barrier()
        return Path(path)


def train_ddp(
    samples: list[STSample],
    factor: int,
    out: str | Path,
    *,
    genes: list[str] | None = None,
    top_genes: int = TOP_GENES,
    steps: int = default(TrainConfig, "steps"),
    batch_size: int = default(TrainConfig, "batch_size"),
    lr: float = default(TrainConfig, "lr"),
    patch: int | None = None,
    work_um_per_px: float | None = None,
    checkpoint: str | Path | None = None,
    spots_only: bool = False,
    ablate: list[str] | None = None,
    seed: int = default(TrainConfig, "seed"),
    model_config: DiffSTConfig | None = None,
    bf16: bool = default(TrainConfig, "bf16"),
    device: str = default(TrainConfig, "device"),
    log1p: bool = default(TrainConfig, "log1p"),
    disentangle_weight: float = default(TrainConfig, "disentangle_weight"),
    prediction: str | None = None,
    backend: str | None = None,
    progress: bool = True,
) -> Path:
    """Data-parallel :func:`diffst.api.train_model`: call it in every ``torchrun`` process.

    Arguments are those of :func:`diffst.api.train_model` (``batch_size`` per rank) plus
    ``bf16`` (bfloat16 autocast), ``device`` and ``backend`` (default nccl on CUDA, gloo on
    CPU). Joins (and afterwards leaves) the process group unless one exists already. Rank 0
    writes ``out`` (and ``checkpoint``); returns the path of ``out`` in every rank.
    """
    from diffst.api import train_model

    owns_group = not dist.is_initialized()
    info = init_process_group(backend, device)
    try:
        return train_model(
            samples, factor, out, genes=genes, top_genes=top_genes, steps=steps,
            batch_size=batch_size, lr=lr, patch=patch, work_um_per_px=work_um_per_px,
            checkpoint=checkpoint, spots_only=spots_only, ablate=ablate, seed=seed,
            model_config=model_config, bf16=bf16, device=device, log1p=log1p,
            disentangle_weight=disentangle_weight,
            prediction=prediction, progress=progress,
            trainer_cls=DistributedTrainer, trainer_kwargs={"local_rank": info.local_rank},
        )
    finally:
        if owns_group:
            dist.destroy_process_group()


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m diffst.distributed`` (those of ``diffst train``)."""
    p = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=N -m diffst.distributed",
        description="Train Diff-ST with DistributedDataParallel (one process per GPU).",
    )
    p.add_argument("data", nargs="+", help="Training samples (any format diffst reads).")
    p.add_argument("--factor", type=int, required=True, help="Integer scale factor.")
    p.add_argument("--out", required=True, help="Model file to write (.pt).")
    p.add_argument("--genes", default=None, help="Comma-separated genes (default: top expressed).")
    p.add_argument("--top-genes", type=int, default=TOP_GENES)
    p.add_argument("--steps", type=int, default=default(TrainConfig, "steps"))
    p.add_argument("--batch-size", type=int, default=default(TrainConfig, "batch_size"),
                   help="Patches per step and rank.")
    p.add_argument("--lr", type=float, default=default(TrainConfig, "lr"))
    p.add_argument("--patch", type=int, default=None,
                   help=f"HR patch side (default {PATCH_PER_FACTOR} x factor).")
    p.add_argument("--work-um-per-px", type=float, default=None)
    p.add_argument("--checkpoint", default=None, help="Resumable checkpoint (rank 0 writes).")
    p.add_argument("--spots-only", action="store_true")
    p.add_argument("--ablate", action="append", default=[],
                   choices=["disentangle", "modulation", "attention", "graph"])
    p.add_argument("--prediction", default=default(SchedulerConfig, "prediction"),
                   choices=list(PREDICTIONS), help="What the denoiser predicts.")
    p.add_argument("--seed", type=int, default=default(TrainConfig, "seed"))
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast.")
    p.add_argument("--log1p", action=argparse.BooleanOptionalAction,
                   default=default(TrainConfig, "log1p"),
                   help="Learn log1p counts instead of counts.")
    p.add_argument("--disentangle-weight", type=float,
                   default=default(TrainConfig, "disentangle_weight"),
                   help="Weight of the disentangling loss.")
    p.add_argument("--device", default=default(TrainConfig, "device"),
                   help="auto (CUDA when present), cuda or cpu.")
    p.add_argument("--backend", default=None, choices=["nccl", "gloo"])
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for PyTorch in each process. Default: the DIFFST_THREADS "
                        "environment variable, else (usable cores - 1) divided by the processes "
                        "on this machine (LOCAL_WORLD_SIZE), at least 1 and at most 8, as for "
                        "the diffst verbs (see README, 'Threads').")
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer of at least 1, got {text!r}")
    return value


def local_processes() -> int:
    """How many processes of this job run on this machine (``torchrun``'s LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    except ValueError:
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``torchrun ... -m diffst.distributed``."""
    from diffst.io import read_sample
    from diffst.threads import apply_threads

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        apply_threads(args.threads, local_processes())
    except ValueError as exc:  # a bad DIFFST_THREADS
        parser.error(str(exc))
    samples = [read_sample(path) for path in args.data]
    path = train_ddp(
        samples, args.factor, args.out, genes=args.genes.split(",") if args.genes else None,
        top_genes=args.top_genes, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        patch=args.patch, work_um_per_px=args.work_um_per_px, checkpoint=args.checkpoint,
        spots_only=args.spots_only, ablate=args.ablate, seed=args.seed, bf16=args.bf16,
        log1p=args.log1p, disentangle_weight=args.disentangle_weight, device=args.device,
        prediction=args.prediction, backend=args.backend,
    )
    if launch_info().rank == 0:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

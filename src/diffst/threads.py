"""How many CPU threads PyTorch uses: one place for the command line and the benchmark scripts.

PyTorch's default is one thread per core. On a small machine that other work shares, its
threads wait for each other at every operation and a training step can become 10x slower;
``benchmarks/threads.py`` measures this. The rule here:

1. an explicit number (``--threads N`` on the command line) wins;
2. else the ``DIFFST_THREADS`` environment variable;
3. else ``usable cores - 1`` (at least 1, at most :data:`MAX_DEFAULT_THREADS`), which leaves one
   core for the rest of the machine so the threads never wait on a busy neighbour. Several
   processes of one job on the same machine (``torchrun --nproc_per_node=N -m
   diffst.distributed``) share those cores: each gets ``(usable cores - 1) // N``, at least 1.

The command line applies the rule at start-up. The Python functions that train or sample
(:func:`diffst.api.train_model`, :func:`diffst.api.predict` and the ``ds.tl`` wrappers) apply it
once per process through :func:`use_default_threads`, unless the user has chosen a thread count
already (``OMP_NUM_THREADS`` set, or ``torch.set_num_threads`` called with a count other than
the cores).
"""

from __future__ import annotations

import os

ENV_VAR = "DIFFST_THREADS"
MAX_DEFAULT_THREADS = 8
_applied_once = False


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(cores: int | None = None, processes: int = 1) -> int:
    """The default thread count of each of ``processes`` processes sharing ``cores`` usable
    cores (default: :func:`usable_cores`)."""
    n = usable_cores() if cores is None else int(cores)
    return max(1, min((n - 1) // max(1, int(processes)), MAX_DEFAULT_THREADS))


def resolve_threads(threads: int | None = None, processes: int = 1) -> tuple[int, str]:
    """The thread count to use and where it came from (``option``, ``DIFFST_THREADS``, ``default``).

    ``processes``: how many processes of this job share the machine (only the default uses it).

    Raises:
        ValueError: ``threads`` or ``DIFFST_THREADS`` is not a positive integer.
    """
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        return int(threads), "option"
    raw = os.environ.get(ENV_VAR, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{ENV_VAR}={raw!r} is not a positive integer; set it to e.g. 1 "
                             f"or unset it (default here: {default_threads(None, processes)})")
        return value, ENV_VAR
    return default_threads(None, processes), "default"


def apply_threads(threads: int | None = None, processes: int = 1) -> int:
    """Set PyTorch's intra-op thread count by :func:`resolve_threads`; returns the count."""
    import torch

    n, _source = resolve_threads(threads, processes)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def use_default_threads() -> int | None:
    """Apply the thread rule for the Python API, once per process; returns the count set, or
    None when the user's own choice was kept or the rule was applied before.

    ``DIFFST_THREADS`` always applies (the first time). Otherwise a count is kept as the user's
    when ``OMP_NUM_THREADS`` is set or PyTorch's count is neither the usable nor the total number
    of cores (PyTorch starts with one of those).
    """
    global _applied_once
    import torch

    if _applied_once:
        return None
    _applied_once = True
    if not os.environ.get(ENV_VAR, "").strip():
        if os.environ.get("OMP_NUM_THREADS", "").strip():
            return None
        if torch.get_num_threads() not in (usable_cores(), os.cpu_count()):
            return None
    return apply_threads()


__all__ = ["ENV_VAR", "apply_threads", "default_threads", "resolve_threads", "usable_cores",
           "use_default_threads"]

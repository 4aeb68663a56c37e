"""Finished tile batches on disk, so an interrupted super-resolution run resumes where it stopped.

A store is a folder holding ``settings.json`` (a fingerprint of the model, the input and the
sampling settings) and one ``batch_<start>.npz`` per finished batch of tiles with that batch's
per-tile statistics. Every file is written atomically, so a killed run leaves either a whole
batch file or none. A store made by a run with different settings is refused with a message
naming what differs; it is never silently mixed with the new run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from diffst.io.atomic import atomic_path

STORE_FORMAT = "diffst.tiles/1"
STAT_KEYS = ("mean", "std", "q05", "q95")


def fingerprint(*arrays: np.ndarray | bytes | str) -> str:
    """A short hex digest of arrays (shape, dtype and bytes), byte strings and strings."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if isinstance(a, str):
            a = a.encode()
        if isinstance(a, bytes):
            h.update(a)
            continue
        arr = np.ascontiguousarray(a)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


class TileStore:
    """Per-batch tile statistics of one run in ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | Path, settings: dict) -> None:
        self.folder = Path(folder)
        self.settings = {"format": STORE_FORMAT, **settings}
        self._check_or_create()

    def _check_or_create(self) -> None:
        path = self.folder / "settings.json"
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path}: unreadable resume settings ({exc}); delete the "
                                 "folder to start over") from exc
            diff = sorted(k for k in set(stored) | set(self.settings)
                          if stored.get(k) != self.settings.get(k))
            if diff:
                raise ValueError(
                    f"{self.folder}: holds tiles of a different run ({', '.join(diff)} differ); "
                    "delete this folder, choose another resume folder, or run without resume"
                )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.settings, indent=1, sort_keys=True))

    def _batch_path(self, start: int) -> Path:
        return self.folder / f"batch_{start:07d}.npz"

    def has(self, start: int) -> bool:
        """Whether the batch at ``start`` has a file."""
        return self._batch_path(start).exists()

    def load(self, start: int, n_tiles: int) -> dict[str, np.ndarray] | None:
        """The stored statistics ``{key: (n, G, P, P)}`` of the batch at ``start``, or None."""
        path = self._batch_path(start)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                stats = {k: z[k] for k in STAT_KEYS}
        except (OSError, ValueError, KeyError):
            return None  # damaged file: the batch is simply sampled again
        if any(v.shape[0] != n_tiles for v in stats.values()):
            return None
        return stats

    def save(self, start: int, stats: dict[str, np.ndarray]) -> None:
        """Write the statistics of the batch at ``start`` atomically."""
        with atomic_path(self._batch_path(start)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: stats[k] for k in STAT_KEYS})

    def n_done(self) -> int:
        """Number of finished batch files."""
        return len(list(self.folder.glob("batch_*.npz")))

    def clear(self) -> None:
        """Delete this store's files (see :func:`remove_store`)."""
        remove_store(self.folder)


def resume_message(done: int, total: int, folder: str | Path) -> str:
    """``resuming: 7 of 12 tile batches done (folder)``."""
    return f"resuming: {done} of {total} tile batches done ({folder})"


class SamplingInterrupted(KeyboardInterrupt):
    """Sampling was interrupted; ``done`` of ``total`` tile batches are kept in ``folder``
    (None when the run kept nothing, i.e. without a resume folder)."""

    def __init__(self, done: int, total: int, folder: str | Path | None) -> None:
        self.done, self.total = done, total
        self.folder = None if folder is None else Path(folder)
        if self.folder is None:
            text = (f"interrupted after {done} of {total} tile batches; nothing was kept "
                    "(resume was off): a rerun starts over")
        elif done == 0:
            text = (f"interrupted before the first of {total} tile batches finished; nothing "
                    "to keep yet: a rerun starts over")
        else:
            text = (f"interrupted: {done} of {total} tile batches kept in {self.folder}; "
                    "rerun the same command to resume")
        super().__init__(text)


def remove_store(folder: str | Path) -> None:
    """Delete the files a store writes in ``folder``, and the folder when it is then empty."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.glob("batch_*.npz"):
        path.unlink()
    settings = folder / "settings.json"
    if settings.exists():
        settings.unlink()
    try:
        folder.rmdir()
    except OSError:
        pass  # the folder holds other files: leave it

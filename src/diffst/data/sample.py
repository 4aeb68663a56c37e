"""The aligned-sample container that every reader produces and every model consumes.

An :class:`STSample` holds one tissue section as a regular raster of expression values together
with its H&E image and the geometry that ties the two together.

Geometry conventions
--------------------
* Raster cell ``(row, col)`` covers ``cell_um`` x ``cell_um`` micrometres of tissue.
* ``affine`` is a 3x3 matrix that maps raster coordinates ``(col, row, 1)`` to image pixel
  coordinates ``(x, y, 1)`` (x = image column, y = image row). Raster coordinate ``(c, r)``
  is the *centre* of cell ``(r, c)``; the cell's corner is at ``(c - 0.5, r - 0.5)``.
* ``image_um_per_px`` is the physical size of one image pixel.

Expression values are counts per raster cell (float32, may be fractional after resampling).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np


class SampleError(ValueError):
    """Raised when a sample's contents are inconsistent (shapes, NaNs, alignment)."""


@dataclass
class STSample:
    """One aligned spatial-transcriptomics section.

    Attributes:
        expr: ``(G, H, W)`` float32 counts per raster cell.
        genes: ``G`` gene names, unique.
        cell_um: edge length of one raster cell in µm.
        mask: ``(H, W)`` bool, True where the cell lies under tissue and was measured.
        image: ``(Hi, Wi, 3)`` uint8 RGB H&E image, or None.
        image_um_per_px: µm per image pixel (ignored when ``image`` is None).
        affine: ``(3, 3)`` raster ``(col, row, 1)`` -> image ``(x, y, 1)`` in pixels.
        name: a label for messages and outputs.
        meta: free-form provenance (source files, reader, simulation parameters).
    """

    expr: np.ndarray
    genes: list[str]
    cell_um: float
    mask: np.ndarray
    image: np.ndarray | None = None
    image_um_per_px: float = 1.0
    affine: np.ndarray = field(default_factory=lambda: np.eye(3))
    name: str = "sample"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"sample '{self.name}'"
        if self.genes is None or isinstance(self.genes, str | bytes):
            raise SampleError(f"{where}: genes must be a list of names, got {self.genes!r}")
        try:
            self.cell_um = float(self.cell_um)
            self.image_um_per_px = float(self.image_um_per_px)
        except (TypeError, ValueError) as exc:
            raise SampleError(f"{where}: cell_um and image_um_per_px must be numbers "
                              f"(µm), got {self.cell_um!r}, {self.image_um_per_px!r}") from exc
        try:
            self.expr = np.asarray(self.expr, dtype=np.float32)
            self.mask = np.asarray(self.mask, dtype=bool)
            self.affine = np.asarray(self.affine, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise SampleError(f"{where}: expr, mask and affine must be numeric arrays ({exc})"
                              ) from exc
        self.genes = [str(g) for g in self.genes]
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check shapes, names and values; raise :class:`SampleError` naming the problem."""
        where = f"sample '{self.name}'"
        if self.expr.ndim != 3:
            raise SampleError(f"{where}: expr must be (genes, H, W), got shape {self.expr.shape}")
        g, h, w = self.expr.shape
        if len(self.genes) != g:
            raise SampleError(f"{where}: {len(self.genes)} gene names for {g} expression planes")
        if len(set(self.genes)) != g:
            dup = sorted({x for x in self.genes if self.genes.count(x) > 1})[:5]
            raise SampleError(f"{where}: duplicate gene names {dup}")
        if h == 0 or w == 0:
            raise SampleError(f"{where}: the raster {h}x{w} has no cells")
        if self.mask.shape != (h, w):
            raise SampleError(f"{where}: mask shape {self.mask.shape} != raster shape {(h, w)}")
        if not np.isfinite(self.expr).all():
            raise SampleError(f"{where}: expression contains NaN or infinite values")
        if (self.expr < 0).any():
            raise SampleError(f"{where}: expression contains negative values")
        if not 0 < self.cell_um < np.inf:
            raise SampleError(f"{where}: cell_um must be positive, got {self.cell_um}")
        if self.affine.shape != (3, 3):
            raise SampleError(f"{where}: affine must be 3x3, got {self.affine.shape}")
        if not np.isfinite(self.affine).all() or abs(np.linalg.det(self.affine[:2, :2])) < 1e-12:
            raise SampleError(f"{where}: the affine must be finite and invertible (it maps "
                              f"raster cells to image pixels), got {self.affine.tolist()}")
        if self.image is not None:
            img = np.asarray(self.image)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or not img.size:
                raise SampleError(
                    f"{where}: image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}"
                )
            if not 0 < self.image_um_per_px < np.inf:
                raise SampleError(f"{where}: image_um_per_px must be positive")

    # ------------------------------------------------------------------ basics
    @property
    def n_genes(self) -> int:
        """Number of genes G."""
        return self.expr.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Raster shape ``(H, W)`` in cells."""
        return self.expr.shape[1], self.expr.shape[2]

    @property
    def px_per_cell(self) -> float:
        """Image pixels spanned by one raster cell edge (from the affine's scale)."""
        return float(np.sqrt(abs(np.linalg.det(self.affine[:2, :2]))))

    def gene_index(self, genes: list[str]) -> list[int]:
        """Indices of ``genes`` in this sample; unknown names raise a clear error."""
        pos = {g: i for i, g in enumerate(self.genes)}
        missing = [g for g in genes if g not in pos]
        if missing:
            raise SampleError(
                f"sample '{self.name}': genes not in the data: {missing[:10]}"
                + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
            )
        return [pos[g] for g in genes]

    def select_genes(self, genes: list[str]) -> STSample:
        """A copy restricted to ``genes`` in that order."""
        idx = self.gene_index(list(genes))
        return replace(self, expr=self.expr[idx].copy(), genes=list(genes), meta=dict(self.meta))

    def top_genes(self, n: int) -> list[str]:
        """The ``n`` genes with the highest total counts inside the mask."""
        totals = self.expr[:, self.mask].sum(axis=1)
        order = np.argsort(-totals, kind="stable")[:n]
        return [self.genes[i] for i in order]

    def crop(self, row0: int, col0: int, height: int, width: int) -> STSample:
        """A raster crop; the image is kept whole and the affine shifted accordingly."""
        shift = np.array([[1.0, 0, col0], [0, 1.0, row0], [0, 0, 1.0]])
        sl = (slice(row0, row0 + height), slice(col0, col0 + width))
        return replace(
            self,
            expr=self.expr[:, sl[0], sl[1]].copy(),
            mask=self.mask[sl].copy(),
            affine=self.affine @ shift,
            meta=dict(self.meta),
        )

    def cell_centres_px(self) -> np.ndarray:
        """``(H, W, 2)`` image ``(x, y)`` pixel coordinates of every raster cell centre."""
        h, w = self.shape
        rr, cc = np.mgrid[0:h, 0:w]
        pts = np.stack([cc.ravel(), rr.ravel(), np.ones(h * w)], axis=0)
        xy = (self.affine @ pts)[:2].T
        return xy.reshape(h, w, 2)

    def check_alignment(self, tolerance_cells: float = 0.5) -> None:
        """Raise when tissue cells fall outside the image (wrong image for the positions)."""
        if self.image is None or not self.mask.any():
            return
        xy = self.cell_centres_px()[self.mask]
        hi, wi = self.image.shape[:2]
        margin = tolerance_cells * self.px_per_cell
        bad = (
            (xy[:, 0] < -margin)
            | (xy[:, 1] < -margin)
            | (xy[:, 0] > wi - 1 + margin)
            | (xy[:, 1] > hi - 1 + margin)
        )
        if bad.any():
            raise SampleError(
                f"sample '{self.name}': {int(bad.sum())} of {len(xy)} tissue cells map outside the "
                f"{wi}x{hi} px image (x range {xy[:, 0].min():.0f}..{xy[:, 0].max():.0f}, "
                f"y range {xy[:, 1].min():.0f}..{xy[:, 1].max():.0f}); is this the right image "
                "and scale factor for these positions?"
            )

    # ------------------------------------------------------------------ persistence
    def save_npz(self, path: str | Path) -> Path:
        """Write the sample as a compressed ``.npz`` (schema in :func:`load_npz`), atomically."""
        from diffst.io.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh,
                    schema=np.array("diffst.STSample/1"),
                    expr=self.expr,
                    genes=np.array(self.genes, dtype=str),
                    cell_um=np.float64(self.cell_um),
                    mask=self.mask,
                    image=self.image if self.image is not None else np.zeros((0, 0, 3), np.uint8),
                    image_um_per_px=np.float64(self.image_um_per_px),
                    affine=self.affine,
                    name=np.array(self.name),
                    meta=np.array(_json_dumps(self.meta)),
                )
        return path


def load_npz(path: str | Path) -> STSample:
    """Read a sample written by :meth:`STSample.save_npz`.

    Schema (``diffst.STSample/1``): ``expr`` (G,H,W) float32, ``genes`` (G,) str, ``cell_um``
    scalar µm, ``mask`` (H,W) bool, ``image`` (Hi,Wi,3) uint8 (empty when absent),
    ``image_um_per_px`` scalar, ``affine`` (3,3), ``name`` str, ``meta`` JSON str.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return _read_npz(path)
    except SampleError:
        raise
    except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as exc:
        raise SampleError(f"{path}: not a readable diffst sample file ({exc}); write it with "
                          "STSample.save_npz or `diffst simulate`") from exc


def _read_npz(path: Path) -> STSample:
    import json

    with np.load(path, allow_pickle=False) as z:
        if "schema" not in z or not str(z["schema"]).startswith("diffst.STSample/"):
            raise SampleError(f"{path}: not a diffst sample file (missing 'schema' entry)")
        image = z["image"]
        return STSample(
            expr=z["expr"],
            genes=[str(g) for g in z["genes"]],
            cell_um=float(z["cell_um"]),
            mask=z["mask"],
            image=image if image.size else None,
            image_um_per_px=float(z["image_um_per_px"]),
            affine=z["affine"],
            name=str(z["name"]),
            meta=json.loads(str(z["meta"])),
        )


def _json_dumps(meta: dict[str, Any]) -> str:
    import json

    return json.dumps(meta, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))

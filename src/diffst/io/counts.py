"""Checks shared by every reader of count matrices, and placing spot counts on a raster.

Every check raises :class:`~diffst.data.sample.SampleError` (a ``ValueError``) whose message
names the file, the problem and the fix. Nothing is clipped, filled or renamed silently:
duplicate gene symbols are only made unique when the caller asks for it (:func:`make_unique`).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from diffst.data.sample import SampleError

_MAX_LISTED = 10


def check_counts(
    matrix: np.ndarray | sp.spmatrix | sp.sparray,
    path: str | Path,
    what: str = "counts",
    require_integer: bool = True,
) -> None:
    """Reject NaN/infinite, negative and (by default) non-integer values in a count matrix.

    Args:
        matrix: dense array or scipy sparse matrix of any shape (e.g. spots x genes counts).
        path: the file the matrix came from (for the message).
        what: a short description of the matrix, e.g. ``"spot x gene counts"``.
        require_integer: also reject non-integer values (normalised or log-transformed data).
    """
    values = _stored_values(matrix)
    where = f"{path}: {what}"
    n_bad = int(np.count_nonzero(~np.isfinite(values)))
    if n_bad:
        raise SampleError(
            f"{where}: {n_bad} NaN or infinite value(s); a count matrix must be finite. "
            "The file is damaged or is not a raw count matrix: re-export the raw counts."
        )
    n_neg = int(np.count_nonzero(values < 0))
    if n_neg:
        raise SampleError(
            f"{where}: {n_neg} negative value(s) (min {values.min():g}); counts cannot be "
            "negative. Is this a scaled or centred matrix? Use the raw counts instead."
        )
    if require_integer and values.dtype.kind == "f":
        frac = values != np.round(values)
        n_frac = int(np.count_nonzero(frac))
        if n_frac:
            example = float(values[frac][0])
            raise SampleError(
                f"{where}: {n_frac} non-integer value(s) (e.g. {example:g}); expected raw "
                "UMI counts. These look normalised or log-transformed: pass the raw counts "
                "(for AnnData e.g. --layer counts, layer='counts' in Python), or "
                "--allow-non-integer (require_integer=False) if non-integer values are really "
                "intended."
            )


def check_unique(
    names: Sequence[str], path: str | Path, what: str, hint: str | None = None
) -> None:
    """Raise when ``names`` (barcodes, spot ids, genes) contain duplicates.

    Args:
        names: the identifiers.
        path: the file they came from.
        what: what they are, e.g. ``"barcode"`` or ``"gene symbol"``.
        hint: the fix to suggest; a generic one is used when None.
    """
    counts = Counter(str(n) for n in names)
    dups = sorted(n for n, c in counts.items() if c > 1)
    if not dups:
        return
    listed = ", ".join(repr(d) for d in dups[:_MAX_LISTED])
    more = f" (and {len(dups) - _MAX_LISTED} more)" if len(dups) > _MAX_LISTED else ""
    fix = hint or f"each {what} must appear once; remove or merge the duplicated entries"
    raise SampleError(f"{path}: {len(dups)} duplicated {what}(s): {listed}{more}. Fix: {fix}.")


def duplicated_names(names: Sequence[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted(n for n, c in Counter(names).items() if c > 1)


def make_unique(names: Sequence[str]) -> list[str]:
    """Append ``-1``, ``-2``, ... to repeated names (the first occurrence is kept as is).

    The same rule as ``AnnData.var_names_make_unique``; a generated name that already exists is
    skipped so the result is always unique.
    """
    names = [str(n) for n in names]
    taken = set(names)
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        if seen[name] == 1:
            out.append(name)
            continue
        k = seen[name] - 1
        while f"{name}-{k}" in taken:
            k += 1
        seen[name] = k + 1
        new = f"{name}-{k}"
        taken.add(new)
        out.append(new)
    return out


def select_gene_columns(
    available: Sequence[str], requested: Sequence[str], path: str | Path
) -> list[int]:
    """Indices of ``requested`` genes in ``available``; unknown or repeated requests raise.

    The error lists the missing genes and, where one exists, a near match (different case or
    spelling) so a typo is easy to fix.
    """
    requested = [str(g) for g in requested]
    check_unique(requested, "the requested gene list", "gene", "ask for each gene once")
    pos = {str(g): i for i, g in enumerate(available)}
    missing = [g for g in requested if g not in pos]
    if missing:
        raise SampleError(
            f"{path}: {len(missing)} requested gene(s) are not in the data: "
            f"{_describe_missing(missing, list(pos))}. Check the spelling, or whether the file "
            "uses gene ids rather than symbols (--gene-key id, gene_key='id' in Python)."
        )
    return [pos[g] for g in requested]


def top_gene_columns(matrix: np.ndarray | sp.spmatrix | sp.sparray, n: int) -> list[int]:
    """Indices of the ``n`` columns (genes) of a spots x genes matrix with the largest totals.

    Ties keep file order.
    """
    if n < 1:
        raise SampleError(f"the number of top genes (--top-genes, n_top_genes= in Python) "
                          f"must be at least 1, got {n}")
    totals = np.asarray(matrix.sum(axis=0)).ravel()
    order = np.argsort(-totals, kind="stable")[:n]
    return sorted(int(i) for i in order)


def check_dense_size(
    n_genes: int, shape: tuple[int, int], path: str | Path, max_gb: float
) -> None:
    """Refuse a dense ``(n_genes, H, W)`` float32 raster larger than ``max_gb`` GB."""
    size_gb = n_genes * shape[0] * shape[1] * 4 / 1e9
    if size_gb > max_gb:
        raise SampleError(
            f"{path}: {n_genes} genes on a {shape[0]}x{shape[1]} raster need {size_gb:.1f} GB "
            f"as a dense float32 array (limit {max_gb:g} GB). Raise the limit with "
            "--max-dense-gb (max_dense_gb= in Python) if the memory is there, read a coarser "
            "bin (--bin-um), or, from Python, select genes while reading (genes=[...] or "
            "n_top_genes=N)."
        )


def check_mask_not_empty(mask: np.ndarray, path: str | Path, hint: str) -> None:
    """Raise when the tissue mask is empty (no measured spot under tissue)."""
    if not np.asarray(mask).any():
        raise SampleError(f"{path}: no spot is both under tissue and measured; {hint}")


def place_counts(
    matrix: np.ndarray | sp.spmatrix | sp.sparray,
    rows: np.ndarray,
    cols: np.ndarray,
    shape: tuple[int, int],
    path: str | Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Put a spots x genes matrix on a raster without densifying the matrix first.

    Args:
        matrix: ``(N, G)`` counts (dense or sparse).
        rows, cols: ``(N,)`` raster indices of each spot, inside ``shape``.
        shape: raster ``(H, W)``.
        path: source file, for the error when two spots share a cell.

    Returns:
        ``expr`` ``(G, H, W)`` float32 and ``mask`` ``(H, W)`` bool (True where a spot sits).
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    h, w = shape
    if len(rows) and (rows.min() < 0 or cols.min() < 0 or rows.max() >= h or cols.max() >= w):
        raise SampleError(f"{path}: spot raster indices fall outside the {h}x{w} raster")
    flat = rows * w + cols
    uniq, first, n_per = np.unique(flat, return_index=True, return_counts=True)
    if (n_per > 1).any():
        cell = int(uniq[n_per > 1][0])
        raise SampleError(
            f"{path}: {int((n_per > 1).sum())} raster cell(s) receive more than one spot "
            f"(e.g. row {cell // w}, col {cell % w}); the array coordinates are duplicated or "
            "do not follow the expected grid."
        )
    n_genes = matrix.shape[1]
    expr = np.zeros((n_genes, h, w), dtype=np.float32)
    if sp.issparse(matrix):
        coo = sp.coo_matrix(matrix)
        expr[coo.col, rows[coo.row], cols[coo.row]] = coo.data
    else:
        expr[:, rows, cols] = np.asarray(matrix, dtype=np.float32).T
    mask = np.zeros((h, w), dtype=bool)
    mask[rows, cols] = True
    return expr, mask


# ---------------------------------------------------------------------------- internals
def _stored_values(matrix: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    if sp.issparse(matrix):
        values = np.asarray(matrix.data)
    else:
        values = np.asarray(matrix)
    if values.dtype.kind not in "biuf":
        raise SampleError(f"count matrix has a non-numeric type {values.dtype}")
    return values.ravel()


def _describe_missing(missing: list[str], available: list[str]) -> str:
    lower = {}
    for name in available:
        lower.setdefault(name.lower(), name)
    parts = []
    for g in missing[:_MAX_LISTED]:
        near = lower.get(g.lower()) or next(
            iter(difflib.get_close_matches(g, available, n=1, cutoff=0.8)), None
        )
        parts.append(f"{g!r} (did you mean {near!r}?)" if near else repr(g))
    more = f" (and {len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
    return ", ".join(parts) + more

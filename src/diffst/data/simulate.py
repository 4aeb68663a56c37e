"""Simulated Xenium-like demo sample with a known high-resolution (HR) truth.

Everything produced here is **simulated**: it is not a real tissue and carries no biological
meaning. It is the package's built-in demo data, so a fresh install can train, predict and
evaluate without downloads, and tests can compare predictions with an exactly known truth.

Model
-----
*Tissue layout.* Smooth Gaussian random fields (white noise low-pass filtered in Fourier space,
several length scales from ~20 to ~300 µm) are thresholded at quantiles into domains:

* tissue: ~78 % of the square, irregular outline, plus small tears (holes) without cells;
* tumour nests (~38 % of tissue), a mixture of a ~70 µm and a ~300 µm field;
* adipose lobules away from the tumour;
* lymphoid aggregates (small dense immune clusters) in stroma;
* an immune infiltrate band in the stroma within ~35 µm of tumour borders (where a further
  field is high);
* stroma everywhere else, with blood vessels (lumens lined by endothelial cells).

*Cells.* Each domain gets a jittered grid of cell centres with its own spacing (lymphoid 7 µm,
infiltrate 8.5 µm, tumour 11 µm, stroma 18 µm, adipocytes 55 µm), giving a Poisson-disk-like
pattern at ~10 µm overall. A cell's type is drawn from its domain's type mixture. Types:
``EPI`` tumour epithelium, ``FIB`` stromal fibroblast, ``IMM`` lymphocyte, ``MYE``
macrophage/myeloid, ``END`` endothelial, ``ADI`` adipocyte.

*Gene programmes* (``n_genes`` genes, names start with ``SIM_``):

* ``SIM_<TYPE><k>`` markers (~50 %): mean ``m`` (log-normal, 0.3-40 counts) in their type,
  optionally ``0.3 m`` in a second type, and 0.5-3 % leakage elsewhere. Visible in the image
  through the type's morphology.
* ``SIM_<TYPE>FLD<k>`` (~20 %): expressed in one type, modulated by a hidden field.
* ``SIM_FIELD<k>`` (~30 %): expressed in 2-4 types, modulated by a hidden field.

Four hidden fields (F0 a linear gradient, F1-F3 random fields with 250, 100 and 50 µm scales)
are drawn from their own random stream and are **not used by the rendering**: a gene modulated
by one has a mean ``mean_type * exp(a f - a^2 / 2)`` (``a`` 0.7-1.3, ``f`` unit variance), so it
is only partly predictable from the image. Counts per cell are Poisson with that mean times a
per-cell log-normal size factor (sd 0.25), giving Xenium-like levels: a few counts for markers
in their type, mostly zeros elsewhere.

*HR raster.* Cell counts are summed into ``cell_um`` µm raster cells over the square; the mask
is the tissue (raster-cell centre in tissue, or any cell inside the raster cell).

*Rendering.* A Beer-Lambert H&E model: per-pixel haematoxylin and eosin amounts are converted
to RGB with fixed stain optical-density vectors. Each pixel belongs to its nearest cell
(a Voronoi tessellation from a Euclidean distance transform). Nuclei are ellipses whose size,
elongation, orientation and darkness depend on type (large pale pleomorphic tumour nuclei, small
dense dark lymphocytes, spindle fibroblasts aligned with the collagen fibres, flat endothelium,
crescent adipocyte nuclei); cytoplasm is purple-pink in tumour, pink in macrophages; stroma is
eosin-pink fibrous collagen; adipocytes are white with thin pink membranes; vessel lumens hold
red blood cells; off-tissue and holes are white. Mild blur, stain-intensity variation and pixel
noise are added. The image covers exactly the raster:
``x = (col + 0.5) * cell_um / image_um_per_px - 0.5`` (same for ``y``/``row``).

All randomness comes from independent streams derived from ``seed``, so a seed gives bitwise
identical output and the layout does not change with ``n_genes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from diffst.data.sample import STSample

GENERATOR = "diffst.data.simulate/1"

TYPES: tuple[str, ...] = ("EPI", "FIB", "IMM", "MYE", "END", "ADI")
TYPE_LABELS: dict[str, str] = {
    "EPI": "tumour epithelium",
    "FIB": "stromal fibroblast",
    "IMM": "lymphocyte",
    "MYE": "macrophage/myeloid",
    "END": "endothelial",
    "ADI": "adipocyte",
}
EPI, FIB, IMM, MYE, END, ADI = range(len(TYPES))

# Domains and their cell spacing (µm) and type mixture (probabilities over TYPES).
TUMOUR, STROMA, INFILTRATE, LYMPHOID, ADIPOSE = range(5)
_DOMAIN_SPACING_UM = {TUMOUR: 11.0, STROMA: 18.0, INFILTRATE: 8.5, LYMPHOID: 7.0, ADIPOSE: 55.0}
_DOMAIN_MIX = {
    TUMOUR: {EPI: 0.86, IMM: 0.07, MYE: 0.05, FIB: 0.02},
    STROMA: {FIB: 0.72, IMM: 0.10, MYE: 0.10, END: 0.08},
    INFILTRATE: {IMM: 0.62, FIB: 0.18, MYE: 0.15, END: 0.05},
    LYMPHOID: {IMM: 0.93, MYE: 0.04, FIB: 0.03},
    ADIPOSE: {ADI: 1.0},
}

_FIELD_PITCH_UM = 4.0  # resolution of the layout and hidden fields
_MAX_IMAGE_PX = 4096  # per side; rendering needs ~100 bytes per pixel at its peak
_N_HIDDEN = 4

# Random streams (independent children of the seed).
_S_LAYOUT, _S_CELLS, _S_GENES, _S_HIDDEN, _S_COUNTS, _S_MORPH, _S_RENDER = range(7)

# Stain optical-density vectors (unit length) for haematoxylin and eosin, and the slide tint.
_H_OD = np.array([0.65, 0.70, 0.29], np.float32)
_E_OD = np.array([0.16, 0.88, 0.45], np.float32)
_SLIDE_OD = np.array([0.025, 0.035, 0.02], np.float32)


@dataclass
class SimulatedCells:
    """The simulated cells behind :func:`simulate_tissue` (positions in µm from the top-left).

    Attributes:
        x_um: ``(N,)`` float64 cell-centre x (column direction) in µm, in ``[0, size_um)``.
        y_um: ``(N,)`` float64 cell-centre y (row direction) in µm, in ``[0, size_um)``.
        cell_type: ``(N,)`` int8 index into :data:`TYPES`.
        counts: ``(N, G)`` int32 transcript counts per cell.
        genes: ``G`` gene names (all simulated, prefixed ``SIM_``).
        gene_kinds: per gene ``"marker:<TYPE>"``, ``"typefield:<TYPE>:F<i>"`` or
            ``"field:F<i>"``.
        size_um: edge of the simulated square in µm.
        seed: the seed used.
    """

    x_um: np.ndarray
    y_um: np.ndarray
    cell_type: np.ndarray
    counts: np.ndarray
    genes: list[str]
    gene_kinds: list[str]
    size_um: float
    seed: int

    @property
    def type_names(self) -> list[str]:
        """Type code per cell as a string from :data:`TYPES`, ``(N,)``."""
        return [TYPES[t] for t in self.cell_type]


# ---------------------------------------------------------------------------- random fields
def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def _smooth_field(rng: np.random.Generator, n: int, sigma_px: float) -> np.ndarray:
    """``(n, n)`` float32 Gaussian random field, zero mean and unit variance.

    White noise is low-pass filtered with a Gaussian of ``sigma_px`` grid cells in Fourier
    space; the grid is padded by ``3 sigma`` so opposite edges are not correlated.
    """
    pad = int(np.ceil(3 * sigma_px))
    m = n + pad
    noise = rng.standard_normal((m, m))
    fy = np.fft.fftfreq(m)[:, None]
    fx = np.fft.rfftfreq(m)[None, :]
    gain = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * gain, s=(m, m))[:n, :n]
    field -= field.mean()
    field /= field.std() + 1e-12
    return field.astype(np.float32)


def _sample_grid(grid: np.ndarray, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
    """Bilinear value of a field-grid array at positions in µm (grid node i at (i+0.5)*pitch)."""
    coords = np.stack([np.asarray(y_um) / _FIELD_PITCH_UM - 0.5,
                       np.asarray(x_um) / _FIELD_PITCH_UM - 0.5])
    return ndimage.map_coordinates(grid, coords, order=1, mode="nearest")


def _in_quantile(values: np.ndarray, q: float, where: np.ndarray | None = None) -> float:
    ref = values if where is None else values[where]
    return float(np.quantile(ref, q)) if ref.size else float("inf")


# ---------------------------------------------------------------------------- tissue layout
@dataclass
class _Layout:
    """Field-grid arrays (pitch ``_FIELD_PITCH_UM``) that define the tissue domains."""

    size_um: float
    tissue_score: np.ndarray  # tissue where > 0
    hole_score: np.ndarray  # hole where > 0
    tumour_score: np.ndarray  # tumour where > 0
    adipose_score: np.ndarray
    lymphoid_score: np.ndarray
    infiltrate_score: np.ndarray
    tumour_dist_um: np.ndarray  # distance to the nearest tumour grid node
    orientation: np.ndarray  # collagen fibre angle (radians)
    stain: np.ndarray  # smooth stain-intensity variation (unit variance)
    vessel_xy_um: np.ndarray  # (V, 2)
    vessel_r_um: np.ndarray  # (V,)

    def tissue_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """True where a position (µm) lies in tissue (not background, not a hole)."""
        return (_sample_grid(self.tissue_score, x_um, y_um) > 0) & (
            _sample_grid(self.hole_score, x_um, y_um) <= 0
        )

    def domain_at(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Domain code per position (µm); -1 outside tissue."""
        dom = np.full(np.shape(x_um), STROMA, np.int8)
        dist = _sample_grid(self.tumour_dist_um, x_um, y_um)
        infil = (dist < 35.0) & (_sample_grid(self.infiltrate_score, x_um, y_um) > 0)
        dom[infil] = INFILTRATE
        dom[_sample_grid(self.lymphoid_score, x_um, y_um) > 0] = LYMPHOID
        dom[(_sample_grid(self.adipose_score, x_um, y_um) > 0) & (dist > 60.0)] = ADIPOSE
        dom[_sample_grid(self.tumour_score, x_um, y_um) > 0] = TUMOUR
        dom[~self.tissue_at(x_um, y_um)] = -1
        return dom


def _make_layout(seed: int, size_um: float) -> _Layout:
    rng = _rng(seed, _S_LAYOUT)
    n = int(np.ceil(size_um / _FIELD_PITCH_UM))

    def field(scale_um: float) -> np.ndarray:
        return _smooth_field(rng, n, scale_um / _FIELD_PITCH_UM)

    centres = (np.arange(n) + 0.5) * _FIELD_PITCH_UM
    edge = np.minimum(np.minimum(centres, size_um - centres)[:, None],
                      np.minimum(centres, size_um - centres)[None, :]) / size_um
    tissue = 4.0 * edge + 0.7 * field(220.0) + 0.25 * field(40.0)
    tissue -= _in_quantile(tissue, 0.22)
    hole = field(20.0)
    hole -= _in_quantile(hole, 0.992)
    in_tissue = (tissue > 0) & (hole <= 0)

    tumour = field(70.0) + 0.8 * field(300.0)
    tumour -= _in_quantile(tumour, 0.62, in_tissue)
    is_tumour = tumour > 0
    tumour_dist = ndimage.distance_transform_edt(~is_tumour) * _FIELD_PITCH_UM
    if not is_tumour.any():
        tumour_dist = np.full_like(tumour, np.inf)

    adipose = field(140.0) + 0.3 * field(40.0)
    adipose -= _in_quantile(adipose, 0.8, in_tissue & (tumour_dist > 60.0))
    lymphoid = field(22.0)
    lymphoid -= _in_quantile(lymphoid, 0.97, in_tissue & ~is_tumour)
    infiltrate = field(60.0) + 0.3
    orientation = (np.pi * field(250.0)).astype(np.float32)
    stain = field(300.0)

    layout = _Layout(
        size_um=size_um, tissue_score=tissue.astype(np.float32),
        hole_score=hole.astype(np.float32), tumour_score=tumour.astype(np.float32),
        adipose_score=adipose.astype(np.float32), lymphoid_score=lymphoid.astype(np.float32),
        infiltrate_score=infiltrate.astype(np.float32),
        tumour_dist_um=tumour_dist.astype(np.float32), orientation=orientation, stain=stain,
        vessel_xy_um=np.zeros((0, 2)), vessel_r_um=np.zeros(0),
    )
    _add_vessels(rng, layout)
    return layout


def _jittered_grid(rng: np.random.Generator, size_um: float, spacing_um: float) -> np.ndarray:
    """``(N, 2)`` points (x, y) in µm: a square grid with uniform jitter of +-0.45 spacing."""
    k = int(np.ceil(size_um / spacing_um))
    gy, gx = np.mgrid[0:k, 0:k]
    pts = (np.stack([gx.ravel(), gy.ravel()], axis=1) + 0.5) * spacing_um
    pts = pts + rng.uniform(-0.45, 0.45, pts.shape) * spacing_um
    keep = (pts >= 0).all(axis=1) & (pts < size_um).all(axis=1)
    return pts[keep]


def _add_vessels(rng: np.random.Generator, layout: _Layout) -> None:
    """Place vessel lumens (centre, radius in µm) in stroma, infiltrate and adipose tissue."""
    pts = _jittered_grid(rng, layout.size_um, 110.0)
    r = np.exp(rng.uniform(np.log(4.0), np.log(16.0), len(pts)))
    keep = rng.uniform(size=len(pts)) < 0.7
    dom = layout.domain_at(pts[:, 0], pts[:, 1])
    keep &= np.isin(dom, [STROMA, INFILTRATE, ADIPOSE])
    layout.vessel_xy_um, layout.vessel_r_um = pts[keep], r[keep]


# ---------------------------------------------------------------------------- cells
def _place_cells(seed: int, layout: _Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell centres x, y (µm) and type codes, domain by domain, plus vessel endothelium."""
    rng = _rng(seed, _S_CELLS)
    xs, ys, ts = [], [], []
    for dom, spacing in _DOMAIN_SPACING_UM.items():
        pts = _jittered_grid(rng, layout.size_um, spacing)
        pts = pts[layout.domain_at(pts[:, 0], pts[:, 1]) == dom]
        mix = _DOMAIN_MIX[dom]
        types = rng.choice(np.array(list(mix), np.int8), size=len(pts), p=list(mix.values()))
        xs.append(pts[:, 0])
        ys.append(pts[:, 1])
        ts.append(types)
    x, y, t = np.concatenate(xs), np.concatenate(ys), np.concatenate(ts).astype(np.int8)

    # Vessels: clear the lumen and line it with endothelial cells.
    vxy, vr = layout.vessel_xy_um, layout.vessel_r_um
    if len(vr):
        from scipy.spatial import cKDTree

        tree = cKDTree(np.stack([x, y], axis=1))
        drop = np.zeros(len(x), bool)
        for centre, radius in zip(vxy, vr, strict=True):
            drop[tree.query_ball_point(centre, radius + 4.0)] = True
        ex, ey = _vessel_lining(rng, vxy, vr)
        inside = (ex >= 0) & (ex < layout.size_um) & (ey >= 0) & (ey < layout.size_um)
        ex, ey = ex[inside], ey[inside]
        ok = layout.tissue_at(ex, ey)
        x = np.concatenate([x[~drop], ex[ok]])
        y = np.concatenate([y[~drop], ey[ok]])
        t = np.concatenate([t[~drop], np.full(int(ok.sum()), END, np.int8)])
    return x, y, t


def _vessel_lining(
    rng: np.random.Generator, vxy: np.ndarray, vr: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Endothelial cell centres (µm) on a ring 1.8 µm outside each lumen, ~11 µm apart."""
    xs, ys = [], []
    for (cx, cy), r in zip(vxy, vr, strict=True):
        ring = r + 1.8
        k = max(3, int(round(2 * np.pi * ring / 11.0)))
        ang = rng.uniform(0, 2 * np.pi) + np.arange(k) * 2 * np.pi / k
        xs.append(cx + ring * np.cos(ang))
        ys.append(cy + ring * np.sin(ang))
    return np.concatenate(xs), np.concatenate(ys)


# ---------------------------------------------------------------------------- genes
@dataclass
class _Programmes:
    genes: list[str]
    kinds: list[str]
    type_mean: np.ndarray  # (G, T) mean counts per cell of each type
    field_index: np.ndarray  # (G,) hidden field used, -1 for none
    amplitude: np.ndarray  # (G,) log-scale modulation amplitude


def _gene_programmes(seed: int, n_genes: int) -> _Programmes:
    """Gene names, kinds and per-type means (counts per cell)."""
    rng = _rng(seed, _S_GENES)
    n_field = int(round(0.3 * n_genes))
    n_typed = int(round(0.2 * n_genes))
    if n_genes >= 2:
        n_field = max(1, n_field)
    n_marker = n_genes - n_field - n_typed
    n_types = len(TYPES)
    marker_order = (EPI, IMM, FIB, END, MYE, ADI)
    typed_order = (EPI, FIB, IMM, MYE)

    genes: list[str] = []
    kinds: list[str] = []
    means = np.zeros((n_genes, n_types))
    field_index = np.full(n_genes, -1)
    amplitude = np.zeros(n_genes)
    counter: dict[str, int] = {}

    def name(prefix: str) -> str:
        counter[prefix] = counter.get(prefix, 0) + 1
        return f"SIM_{prefix}{counter[prefix]}"

    def level(median: float, sd: float) -> float:
        return float(np.clip(np.exp(rng.normal(np.log(median), sd)), 0.3, 40.0))

    g = 0
    for i in range(n_marker):
        t = marker_order[i % n_types]
        m = level(3.0, 0.9)
        means[g] = m * rng.uniform(0.005, 0.03, n_types)
        means[g, t] = m
        if rng.uniform() < 0.3:
            other = rng.choice([u for u in range(n_types) if u != t])
            means[g, other] = 0.3 * m
        genes.append(name(TYPES[t]))
        kinds.append(f"marker:{TYPES[t]}")
        g += 1
    for i in range(n_typed):
        t = typed_order[i % len(typed_order)]
        f = (i + 1) % _N_HIDDEN
        means[g] = level(2.5, 0.7) * rng.uniform(0.005, 0.03, n_types)
        means[g, t] = level(2.5, 0.7)
        field_index[g], amplitude[g] = f, rng.uniform(0.7, 1.3)
        genes.append(name(f"{TYPES[t]}FLD"))
        kinds.append(f"typefield:{TYPES[t]}:F{f}")
        g += 1
    for i in range(n_field):
        f = i % _N_HIDDEN
        expressed = rng.choice(n_types, size=int(rng.integers(2, 5)), replace=False)
        means[g, expressed] = [level(1.5, 0.8) for _ in expressed]
        means[g] += 0.01
        field_index[g], amplitude[g] = f, rng.uniform(0.7, 1.3)
        genes.append(name("FIELD"))
        kinds.append(f"field:F{f}")
        g += 1
    return _Programmes(genes, kinds, means, field_index, amplitude)


def _hidden_fields(seed: int, size_um: float) -> list[np.ndarray]:
    """Unit-variance field-grid arrays F0..F3: a linear gradient and three random fields."""
    rng = _rng(seed, _S_HIDDEN)
    n = int(np.ceil(size_um / _FIELD_PITCH_UM))
    angle = rng.uniform(0, 2 * np.pi)
    c = np.arange(n) - (n - 1) / 2
    grad = np.cos(angle) * c[None, :] + np.sin(angle) * c[:, None]
    grad = (grad / grad.std()).astype(np.float32)
    scales_um = (250.0, 100.0, 50.0)
    return [grad] + [_smooth_field(rng, n, s / _FIELD_PITCH_UM) for s in scales_um]


def _sample_counts(
    seed: int, x: np.ndarray, y: np.ndarray, types: np.ndarray, prog: _Programmes,
    hidden: list[np.ndarray],
) -> np.ndarray:
    """``(N, G)`` int32 Poisson counts with per-type means, hidden-field modulation, size."""
    rng = _rng(seed, _S_COUNTS)
    mu = prog.type_mean[:, types].T.copy()  # (N, G)
    values = [_sample_grid(f, x, y) for f in hidden]
    for g in np.flatnonzero(prog.field_index >= 0):
        a = prog.amplitude[g]
        mu[:, g] *= np.exp(a * values[prog.field_index[g]] - 0.5 * a * a)
    size = np.exp(rng.normal(0.0, 0.25, len(x)))
    return rng.poisson(mu * size[:, None]).astype(np.int32)


# ---------------------------------------------------------------------------- public API
def _check_basic(size_um: float, n_genes: int) -> None:
    if not np.isfinite(size_um) or size_um < 100.0:
        raise ValueError(f"simulate: a tissue side of {size_um} µm (--size-um, size_um= in "
                         "Python) is too small; use at least 100 µm")
    if int(n_genes) != n_genes or n_genes < 1:
        raise ValueError(f"simulate: the number of genes (--genes, n_genes= in Python) must "
                         f"be a whole number >= 1, got {n_genes}")


def _check_params(size_um: float, cell_um: float, n_genes: int, image_um_per_px: float) -> None:
    _check_basic(size_um, n_genes)
    for label, value in (("cell_um", cell_um), ("image_um_per_px", image_um_per_px)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"simulate: {label} must be a positive number of µm, got {value}")
    for label, step in (("cell_um", cell_um), ("image_um_per_px", image_um_per_px)):
        ratio = size_um / step
        if abs(ratio - round(ratio)) > 1e-6 * max(1.0, ratio):
            raise ValueError(
                f"simulate: the tissue side {size_um:g} µm is not a whole multiple of "
                f"{label}={step:g}; choose e.g. --size-um {round(ratio) * step:g} "
                f"(size_um= in Python)"
            )
    if size_um / cell_um < 2:
        raise ValueError(f"simulate: cells of {cell_um} µm (--cell-um, cell_um= in Python) "
                         "leave fewer than 2 raster cells per side")
    n_px = round(size_um / image_um_per_px)
    if n_px > _MAX_IMAGE_PX:
        raise ValueError(
            f"simulate: the image would be {n_px} px per side (limit {_MAX_IMAGE_PX}); "
            "choose a smaller --size-um (size_um=), or from Python a larger image_um_per_px"
        )


def _simulate(
    seed: int, size_um: float, n_genes: int
) -> tuple[_Layout, SimulatedCells]:
    layout = _make_layout(seed, size_um)
    x, y, types = _place_cells(seed, layout)
    prog = _gene_programmes(seed, n_genes)
    counts = _sample_counts(seed, x, y, types, prog, _hidden_fields(seed, size_um))
    cells = SimulatedCells(
        x_um=x, y_um=y, cell_type=types, counts=counts, genes=prog.genes,
        gene_kinds=prog.kinds, size_um=float(size_um), seed=int(seed),
    )
    return layout, cells


def simulate_cells(seed: int = 0, size_um: float = 1600.0, n_genes: int = 30) -> SimulatedCells:
    """The simulated cell table used by :func:`simulate_tissue` for the same arguments.

    Args:
        seed: random seed; equal seeds give identical cells.
        size_um: edge of the simulated square in µm (>= 100).
        n_genes: number of simulated genes G.

    Returns:
        :class:`SimulatedCells` with positions in µm, type codes and ``(N, G)`` counts.
    """
    _check_basic(size_um, n_genes)
    return _simulate(seed, size_um, n_genes)[1]


def simulate_tissue(
    seed: int = 0,
    size_um: float = 1600.0,
    cell_um: float = 8.0,
    n_genes: int = 30,
    image_um_per_px: float = 1.0,
    *,
    name: str | None = None,
    render_image: bool = True,
) -> STSample:
    """A simulated Xenium-like sample with its H&E image and a known HR expression truth.

    Args:
        seed: random seed; equal arguments give bitwise identical samples.
        size_um: edge of the square region in µm; a whole multiple of ``cell_um`` and of
            ``image_um_per_px``.
        cell_um: HR raster cell edge in µm; the raster is ``H = W = size_um / cell_um``.
        n_genes: number of simulated genes G (see the module docstring for the programmes).
        image_um_per_px: µm per image pixel; the image is ``size_um / image_um_per_px`` pixels
            per side and covers exactly the raster.
        name: sample name; default ``"simulated_seed<seed>"``.
        render_image: False skips the H&E rendering (``image`` is None), for speed.

    Returns:
        :class:`STSample` with ``expr`` ``(G, H, W)`` integer-valued float32 counts per raster
        cell, ``mask`` the tissue, ``image`` ``(Hi, Wi, 3)`` uint8 RGB and ``meta`` recording
        ``simulated: True``, the seed, the parameters and each gene's kind.
    """
    _check_params(size_um, cell_um, n_genes, image_um_per_px)
    layout, cells = _simulate(seed, size_um, n_genes)
    n = int(round(size_um / cell_um))
    expr, occupied = _bin_counts(cells, n, cell_um)
    centres = (np.arange(n) + 0.5) * cell_um
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    mask = layout.tissue_at(cx.ravel(), cy.ravel()).reshape(n, n) | occupied

    image = None
    if render_image:
        image = _render_he(seed, layout, cells, image_um_per_px)
    scale = cell_um / image_um_per_px
    affine = np.array([[scale, 0.0, 0.5 * scale - 0.5], [0.0, scale, 0.5 * scale - 0.5],
                       [0.0, 0.0, 1.0]])
    meta = {
        "simulated": True,
        "generator": GENERATOR,
        "seed": int(seed),
        "size_um": float(size_um),
        "cell_um": float(cell_um),
        "n_genes": int(n_genes),
        "image_um_per_px": float(image_um_per_px),
        "n_cells": int(len(cells.x_um)),
        "cell_types": dict(TYPE_LABELS),
        "gene_kinds": dict(zip(cells.genes, cells.gene_kinds, strict=True)),
        "note": "Simulated demo data (diffst.data.simulate); not a real tissue.",
    }
    return STSample(
        expr=expr, genes=list(cells.genes), cell_um=float(cell_um), mask=mask, image=image,
        image_um_per_px=float(image_um_per_px), affine=affine,
        name=name if name is not None else f"simulated_seed{seed}", meta=meta,
    )


def _bin_counts(cells: SimulatedCells, n: int, cell_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-cell counts into an ``(G, n, n)`` raster of ``cell_um`` µm cells.

    Returns the float32 raster and an ``(n, n)`` bool map of raster cells holding any cell.
    """
    row = np.minimum((cells.y_um / cell_um).astype(np.int64), n - 1)
    col = np.minimum((cells.x_um / cell_um).astype(np.int64), n - 1)
    flat = row * n + col
    g = cells.counts.shape[1]
    index = (np.arange(g)[None, :] * (n * n) + flat[:, None]).ravel()
    summed = np.bincount(index, weights=cells.counts.ravel(), minlength=g * n * n)
    occupied = np.bincount(flat, minlength=n * n) > 0
    return summed.reshape(g, n, n).astype(np.float32), occupied.reshape(n, n)


# ---------------------------------------------------------------------------- rendering
@dataclass
class _Morphology:
    """Per-cell nucleus and cytoplasm parameters (µm and stain amounts)."""

    semi_a: np.ndarray  # nucleus semi-axis along its orientation (µm)
    semi_b: np.ndarray  # nucleus semi-axis across (µm)
    angle: np.ndarray  # orientation (radians)
    offset_x: np.ndarray  # nucleus centre offset from the cell centre (µm)
    offset_y: np.ndarray
    nuc_h: np.ndarray  # haematoxylin amount of the nucleus


# Cytoplasm radius (µm), eosin and haematoxylin amounts per type (ADI: lipid vacuole).
_BODY_UM = np.array([9.0, 0.0, 3.8, 7.5, 0.0, 32.0], np.float32)
_BODY_E = np.array([0.32, 0.0, 0.30, 0.55, 0.0, 0.02], np.float32)
_BODY_H = np.array([0.20, 0.0, 0.25, 0.10, 0.0, 0.0], np.float32)
_CHROMATIN = np.array([0.35, 0.15, 0.10, 0.25, 0.15, 0.15], np.float32)


def _morphology(
    rng: np.random.Generator, layout: _Layout, x: np.ndarray, y: np.ndarray, t: np.ndarray
) -> _Morphology:
    n = len(t)
    u = rng.uniform(size=(6, n))
    a = np.zeros(n)
    b = np.zeros(n)
    h = np.zeros(n)
    angle = u[0] * np.pi
    ox = np.zeros(n)
    oy = np.zeros(n)

    def put(kind: int, a_rng, b_ratio_or_rng, h_rng, b_is_ratio: bool = True) -> None:
        sel = t == kind
        a[sel] = a_rng[0] + u[1, sel] * (a_rng[1] - a_rng[0])
        lo, hi = b_ratio_or_rng
        bb = lo + u[2, sel] * (hi - lo)
        b[sel] = a[sel] * bb if b_is_ratio else bb
        h[sel] = h_rng[0] + u[3, sel] * (h_rng[1] - h_rng[0])

    put(EPI, (3.4, 5.0), (0.7, 0.95), (0.9, 1.4))
    put(FIB, (5.0, 7.5), (1.2, 1.9), (1.2, 1.6), b_is_ratio=False)
    put(IMM, (2.6, 3.3), (0.85, 1.0), (1.9, 2.4))
    put(MYE, (3.5, 4.8), (0.6, 0.85), (0.8, 1.1))
    put(END, (4.5, 6.5), (1.0, 1.5), (1.2, 1.5), b_is_ratio=False)
    put(ADI, (3.0, 5.0), (0.8, 1.3), (1.1, 1.4), b_is_ratio=False)

    fibre = _sample_grid(layout.orientation, x, y)
    spindle = (t == FIB) | (t == END)
    angle[spindle] = fibre[spindle] + rng.normal(0, 0.25, int(spindle.sum()))
    # Endothelium lining a lumen lies tangential to it.
    for (cx, cy), r in zip(layout.vessel_xy_um, layout.vessel_r_um, strict=True):
        near = (t == END) & (np.hypot(x - cx, y - cy) < r + 3.0)
        angle[near] = np.arctan2(y[near] - cy, x[near] - cx) + np.pi / 2
    # Adipocytes: a flat crescent nucleus at the rim in about a third of the cells.
    adi = np.flatnonzero(t == ADI)
    show = u[4, adi] < 0.35
    a[adi[~show]] = 0.0
    theta = u[5, adi] * 2 * np.pi
    rim = rng.uniform(14.0, 22.0, len(adi))
    ox[adi], oy[adi] = rim * np.cos(theta), rim * np.sin(theta)
    angle[adi] = theta + np.pi / 2
    return _Morphology(a, b, angle, ox, oy, h)


def _pixel_noise(rng: np.random.Generator, n: int, sigma_um, um_per_px: float) -> np.ndarray:
    """``(n, n)`` float32 smoothed noise, unit variance; ``sigma_um`` scalar or (sy, sx) µm."""
    sigma = np.broadcast_to(np.asarray(sigma_um, float), (2,)) / um_per_px
    out = ndimage.gaussian_filter(rng.standard_normal((n, n), dtype=np.float32), sigma)
    out /= out.std() + 1e-12
    return out


def _collagen(rng: np.random.Generator, angle: np.ndarray, um_per_px: float) -> np.ndarray:
    """``(n, n)`` float32 unit-variance fibrous texture following a per-pixel ``angle`` field.

    White noise is smoothed in Fourier space by anisotropic Gaussians (6 µm along the fibre,
    0.8 µm across) at four orientations, and the four textures are blended by angle.
    """
    n = angle.shape[0]
    spec = np.fft.rfft2(rng.standard_normal((n, n), dtype=np.float32))
    fy = np.fft.fftfreq(n)[:, None].astype(np.float32)
    fx = np.fft.rfftfreq(n)[None, :].astype(np.float32)
    s_long, s_short = 6.0 / um_per_px, 0.8 / um_per_px
    total = np.zeros((n, n), np.float32)
    weight_sq = np.zeros((n, n), np.float32)
    for phi in np.arange(4) * np.pi / 4:
        k_par = fx * np.cos(phi) + fy * np.sin(phi)
        k_perp = fy * np.cos(phi) - fx * np.sin(phi)
        gain = np.exp(-2 * np.pi**2 * (s_long**2 * k_par**2 + s_short**2 * k_perp**2))
        tex = np.fft.irfft2(spec * gain, s=(n, n)).astype(np.float32)
        tex /= tex.std() + 1e-12
        w = np.maximum(np.cos(2 * (angle - phi)), 0.0) ** 2
        total += w * tex
        weight_sq += w * w
    return total / np.sqrt(np.maximum(weight_sq, 1e-6))


def _render_he(seed: int, layout: _Layout, cells: SimulatedCells, um_per_px: float) -> np.ndarray:
    """``(n, n, 3)`` uint8 H&E-like RGB image, ``n = size_um / um_per_px``."""
    rng = _rng(seed, _S_RENDER)
    morph = _morphology(_rng(seed, _S_MORPH), layout, cells.x_um, cells.y_um, cells.cell_type)
    n = int(round(layout.size_um / um_per_px))
    pix_um = ((np.arange(n) + 0.5) * um_per_px).astype(np.float32)
    py, px = np.meshgrid(pix_um, pix_um, indexing="ij")
    tissue = layout.tissue_at(px.ravel(), py.ravel()).reshape(n, n)

    owner = _nearest_cell(cells, n, um_per_px)  # (n, n) cell index, -1 if no cells
    has = owner >= 0
    own = np.where(has, owner, 0)
    t = np.where(has, cells.cell_type[own], FIB).astype(np.int8)
    dx = px - cells.x_um[own].astype(np.float32) if len(cells.x_um) else px * 0
    dy = py - cells.y_um[own].astype(np.float32) if len(cells.x_um) else py * 0

    # Background: cytoplasm where within the cell body, else collagen stroma.
    fibre_angle = _sample_grid(layout.orientation, px.ravel(), py.ravel()).reshape(n, n)
    fibres = _collagen(rng, fibre_angle, um_per_px)
    bundles = _pixel_noise(rng, n, 5.0, um_per_px)
    eos = np.clip((0.42 + 0.14 * fibres) * (1 + 0.2 * bundles), 0.04, None)
    hae = np.full((n, n), 0.04, np.float32)
    body = has & (np.hypot(dx, dy) < _BODY_UM[t])
    foam = _pixel_noise(rng, n, 0.7, um_per_px)
    eos = np.where(body, _BODY_E[t] * (1 + 0.15 * foam), eos)
    hae = np.where(body, _BODY_H[t], hae)

    # Cell membranes on Voronoi edges: pink around adipocytes, faint between tumour cells.
    edge = np.zeros((n, n), bool)
    edge[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    edge[:-1, :] |= owner[:-1, :] != owner[1:, :]
    adi_edge = edge & (t == ADI)
    adi_edge = ndimage.binary_dilation(adi_edge) if um_per_px < 0.75 else adi_edge
    eos = np.where(adi_edge, 0.75, eos)
    eos = np.where(edge & (t == EPI), eos + 0.12, eos)

    # Vessel lumens with red blood cells.
    lumen = _disks(layout.vessel_xy_um, layout.vessel_r_um, n, um_per_px)
    rbc = np.clip((_pixel_noise(rng, n, 1.2, um_per_px) - 0.2) * 2.0, 0, 1)
    eos = np.where(lumen, 1.1 * rbc + 0.02, eos)
    hae = np.where(lumen, 0.0, hae)

    # Nuclei.
    nuc, nuc_h = _nuclei(morph, own, dx, dy, t)
    chrom = _pixel_noise(rng, n, 0.45, um_per_px)
    nuc_h = nuc_h * (1 + _CHROMATIN[t] * chrom)
    nuc = np.where(has, nuc, 0.0)
    hae = hae * (1 - nuc) + nuc_h * nuc
    eos = eos * (1 - nuc) + 0.08 * nuc

    # Off tissue and holes: empty slide.
    hae = np.where(tissue, hae, 0.0)
    eos = np.where(tissue, eos, 0.0)

    stain = _sample_grid(layout.stain, px.ravel(), py.ravel()).reshape(n, n)
    blur = 0.45 / um_per_px
    hae = ndimage.gaussian_filter(hae.astype(np.float32), blur) * (1 + 0.08 * stain)
    eos = ndimage.gaussian_filter(eos.astype(np.float32), blur) * (1 - 0.08 * stain)
    od = hae[..., None] * _H_OD + eos[..., None] * _E_OD + _SLIDE_OD
    rgb = 255.0 * np.exp(-od) + 2.5 * rng.standard_normal(od.shape, dtype=np.float32)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _nearest_cell(cells: SimulatedCells, n: int, um_per_px: float) -> np.ndarray:
    """``(n, n)`` int32 index of the nearest cell centre for every pixel (-1: no cells).

    Cells whose centres fall in the same pixel keep only the last one (they are then drawn as
    one cell); this happens only for images much coarser than the cell spacing.
    """
    if len(cells.x_um) == 0:
        return np.full((n, n), -1, np.int32)
    col = np.minimum((cells.x_um / um_per_px).astype(np.int64), n - 1)
    row = np.minimum((cells.y_um / um_per_px).astype(np.int64), n - 1)
    seeds = np.zeros((n, n), np.int32)
    seeds[row, col] = np.arange(1, len(col) + 1, dtype=np.int32)
    idx = ndimage.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    return seeds[idx[0], idx[1]] - 1


def _nuclei(
    morph: _Morphology, own: np.ndarray, dx: np.ndarray, dy: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Soft nucleus coverage in [0, 1] and the nucleus haematoxylin amount per pixel."""
    ux = dx - morph.offset_x[own].astype(np.float32)
    uy = dy - morph.offset_y[own].astype(np.float32)
    cos = np.cos(morph.angle).astype(np.float32)[own]
    sin = np.sin(morph.angle).astype(np.float32)[own]
    a = morph.semi_a.astype(np.float32)[own]
    b = morph.semi_b.astype(np.float32)[own]
    u = ux * cos + uy * sin
    v = uy * cos - ux * sin
    with np.errstate(divide="ignore", invalid="ignore"):
        rr = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    rr = np.where(a > 0, rr, np.inf)
    cover = np.clip((1.0 - rr) * b / 0.6 + 0.5, 0.0, 1.0)
    h = morph.nuc_h.astype(np.float32)[own]
    # Vesicular tumour nuclei: darker rim, paler centre.
    h = np.where(t == EPI, h * (0.65 + 0.5 * np.minimum(rr, 1.0) ** 2), h)
    return cover.astype(np.float32), h.astype(np.float32)


def _disks(xy_um: np.ndarray, r_um: np.ndarray, n: int, um_per_px: float) -> np.ndarray:
    """``(n, n)`` bool union of disks (centres and radii in µm) on the pixel grid."""
    out = np.zeros((n, n), bool)
    for (cx, cy), r in zip(xy_um, r_um, strict=True):
        r0 = max(0, int((cy - r) / um_per_px))
        r1 = min(n, int(np.ceil((cy + r) / um_per_px)) + 1)
        c0 = max(0, int((cx - r) / um_per_px))
        c1 = min(n, int(np.ceil((cx + r) / um_per_px)) + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        yy = (np.arange(r0, r1) + 0.5) * um_per_px
        xx = (np.arange(c0, c1) + 0.5) * um_per_px
        out[r0:r1, c0:c1] |= (yy[:, None] - cy) ** 2 + (xx[None, :] - cx) ** 2 < r * r
    return out

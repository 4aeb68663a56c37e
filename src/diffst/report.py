"""Pictures and a small HTML report of a super-resolution result (Pillow only).

:func:`gene_gallery` writes one PNG per gene with four panels over the H&E: the image alone, the
measured LR map (counts per LR cell spread evenly over its HR cells), the super-resolved mean
and its standard deviation. Measured and mean share one colour scale per gene (0 to the 99th
percentile of the mean inside tissue); the standard deviation has its own. :func:`write_report`
adds an overview picture and a self-contained ``report.html`` (images embedded) with the run's
settings, timings and a per-gene table. Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffst.data.image import aligned_image
from diffst.data.lr import upsample_nearest
from diffst.data.sample import STSample
from diffst.infer import SRResult
from diffst.io.atomic import atomic_path
from diffst.plot import overlay

PANELS = ("H&E", "measured", "mean", "std")


def hr_background(result: SRResult, lr: STSample, side_px: int = 240) -> np.ndarray:
    """The H&E on the result's HR raster, ``(H*k, W*k, 3)`` uint8 with ``k`` so the longer side
    is about ``side_px`` pixels (at least 1 pixel per cell)."""
    h, w = result.mask.shape
    k = int(min(16, max(1, round(side_px / max(h, w)))))
    return aligned_image(result.as_sample(lr), k)


def measured_per_hr_cell(result: SRResult, lr: STSample) -> np.ndarray:
    """``(G, H, W)`` LR counts of the result's genes divided evenly over the HR cells."""
    f = int(result.meta.get("factor", round(lr.cell_um / result.cell_um)))
    expr = lr.select_genes(result.genes).expr
    h, w = result.mask.shape
    return upsample_nearest(expr, f)[:, :h, :w] / float(f * f)


def _top(values: np.ndarray, mask: np.ndarray) -> float:
    top = float(np.quantile(values[mask], 0.99)) if mask.any() else 0.0
    return top if top > 0 else 1.0


def _panel(background: np.ndarray, values: np.ndarray | None, mask: np.ndarray,
           size: tuple[int, int]) -> Image.Image:
    rgb = background if values is None else overlay(background, values, mask)
    return Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)


def gene_figure(gene_index: int, result: SRResult, measured: np.ndarray,
                background: np.ndarray, tile_px: int = 240) -> Image.Image:
    """One gene's row of panels (:data:`PANELS`) with labels and colour-scale maxima."""
    mask = result.mask
    h, w = mask.shape
    scale = max(tile_px / max(h, w), 120 / w)  # narrow strips still get room for the labels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    mean, std = result.mean[gene_index], result.std[gene_index]
    top_mean, top_std = _top(mean, mask), _top(std, mask)
    panels = [
        ("H&E", None, 0.0),
        ("measured", measured[gene_index] / top_mean, top_mean),
        ("mean", mean / top_mean, top_mean),
        ("std", std / top_std, top_std),
    ]
    head = 46
    canvas = Image.new("RGB", (size[0] * len(panels), size[1] + head), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), result.genes[gene_index], fill="black")
    for j, (label, values, top) in enumerate(panels):
        canvas.paste(_panel(background, values, mask, size), (j * size[0], head))
        draw.text((j * size[0] + 4, 17), label, fill="black")
        if values is not None:
            draw.text((j * size[0] + 4, 30), f"0 - {top:.3g}", fill="dimgray")
    return canvas


def safe_name(gene: str) -> str:
    """A file-name-safe form of a gene name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", gene) or "gene"


def gene_gallery(result: SRResult, lr: STSample, folder: str | Path,
                 genes: list[str] | None = None, tile_px: int = 240) -> list[Path]:
    """Write ``folder/<nn>_<gene>.png`` for each gene (default: all of the result's genes).

    Args:
        result: the super-resolution result (counts per HR cell).
        lr: the measured LR sample it came from (for the H&E and the measured map).
        folder: output folder (created).
        genes: genes to draw, in order.
        tile_px: longer side of one panel in pixels.

    Returns:
        The PNG paths, in gene order.
    """
    folder = Path(folder)
    show = list(genes) if genes else list(result.genes)
    unknown = [g for g in show if g not in result.genes]
    if unknown:
        raise ValueError(f"genes not in the result: {unknown[:10]}")
    background = hr_background(result, lr, tile_px)
    measured = measured_per_hr_cell(result, lr)
    paths = []
    for n, gene in enumerate(show):
        fig = gene_figure(result.genes.index(gene), result, measured, background, tile_px)
        path = folder / f"{n:03d}_{safe_name(gene)}.png"
        _save_png(fig, path)
        paths.append(path)
    return paths


def overview(paths: list[Path], out: str | Path, n: int = 4) -> Path:
    """Stack the first ``n`` gallery PNGs vertically into one picture (e.g. for a README)."""
    images = [Image.open(p).convert("RGB") for p in paths[:n]]
    if not images:
        raise ValueError("no gallery images to stack")
    width = max(im.width for im in images)
    canvas = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height
    return _save_png(canvas, Path(out))


def gene_table(result: SRResult, lr: STSample) -> list[dict[str, float | str]]:
    """Per gene: measured and predicted totals in tissue, mean std, mean 90% interval width,
    and the mean coefficient of variation (std / mean where mean > 0)."""
    mask = result.mask
    measured = lr.select_genes(result.genes).expr
    rows = []
    for i, gene in enumerate(result.genes):
        mean, std = result.mean[i][mask], result.std[i][mask]
        pos = mean > 0
        rows.append({
            "gene": gene,
            "measured_total": float(measured[i][lr.mask].sum()),
            "predicted_total": float(mean.sum()),
            "mean_std": float(std.mean()) if std.size else 0.0,
            "mean_interval_90": float((result.q95[i] - result.q05[i])[mask].mean())
            if mask.any() else 0.0,
            "mean_cv": float((std[pos] / mean[pos]).mean()) if pos.any() else 0.0,
        })
    return rows


def write_report(result: SRResult, lr: STSample, folder: str | Path, *,
                 settings: dict | None = None, timings: dict | None = None,
                 genes: list[str] | None = None, max_genes: int = 24,
                 tile_px: int = 240) -> Path:
    """Write the gallery, ``overview.png`` and ``report.html`` into ``folder``; return the HTML.

    ``genes`` defaults to the ``max_genes`` genes with the highest predicted total.
    ``settings`` and ``timings`` (seconds) are shown as tables next to ``result.meta``.
    """
    folder = Path(folder)
    if genes is None:
        totals = result.mean[:, result.mask].sum(1)
        genes = [result.genes[i] for i in np.argsort(-totals, kind="stable")[:max_genes]]
    paths = gene_gallery(result, lr, folder / "gallery", genes, tile_px)
    overview(paths, folder / "overview.png")
    page = _html(result, lr, paths, dict(settings or {}), dict(timings or {}))
    out = folder / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def _save_png(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def _kv_table(d: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in d.items())
    return f"<table>{rows}</table>"


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _html(result: SRResult, lr: STSample, paths: list[Path], settings: dict,
          timings: dict) -> str:
    h, w = result.mask.shape
    facts = {
        "input": lr.name, "LR raster": f"{lr.shape[0]} x {lr.shape[1]} cells of {lr.cell_um:g} µm",
        "HR raster": f"{h} x {w} cells of {result.cell_um:g} µm",
        "tissue HR cells": int(result.mask.sum()), "genes": len(result.genes),
    }
    run = {**settings, **{k: v for k, v in result.meta.items() if not isinstance(v, dict)}}
    head = ("<tr>" + "".join(f"<th>{c}</th>" for c in (
        "gene", "measured total", "predicted total", "mean std", "mean 90% width", "mean CV"))
        + "</tr>")
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r[k]))}</td>" for k in (
            "gene", "measured_total", "predicted_total", "mean_std", "mean_interval_90",
            "mean_cv")) + "</tr>" for r in gene_table(result, lr))
    figures = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.stem)}'
        "</figcaption></figure>" for p in paths)
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}"
             "table{border-collapse:collapse;margin:1em 0}"
             "th,td{border:1px solid #ccc;padding:2px 8px;text-align:left}"
             "img{max-width:100%}figure{margin:1em 0}")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>diffst: {html.escape(lr.name)}</title><style>{style}</style></head><body>"
        f"<h1>Super-resolution of {html.escape(lr.name)}</h1>"
        "<p>Panels per gene: H&amp;E, measured map (LR counts spread over their HR cells), "
        "super-resolved mean and standard deviation over the diffusion samples, in counts per "
        "HR cell. Measured and mean share a colour scale; std has its own.</p>"
        f"<h2>Data</h2>{_kv_table(facts)}<h2>Settings</h2>{_kv_table(run)}"
        f"<h2>Timings (s)</h2>{_kv_table(timings)}"
        f"<h2>Genes</h2><table>{head}{body}</table><h2>Gallery</h2>{figures}</body></html>"
    )

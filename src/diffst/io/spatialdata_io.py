"""SpatialData in and out (optional extra: ``pip install 'diffst[spatialdata]'``).

Reading (:func:`spatialdata_to_sample`, :func:`read_spatialdata`) takes from a SpatialData
object

* a **table** (AnnData of counts, one row per spot or bin) that annotates
* a **shapes** element (circles or polygons, e.g. Visium spots or Visium HD squares) or a
  **points** element: the spot/bin positions, and
* an **image** element with the H&E (RGB, ``c`` = 3 or 4 channels, uint8 or floats in [0, 1]),
  single- or multiscale (``scale``: which level; default the finest).

The positions are mapped into the image's pixels through a coordinate system both elements have
(``coordinate_system``; default ``"global"`` when shared, else the only shared one):
``image px = inverse(T_image) @ T_element @ position``. SpatialData puts pixel ``(i, j)`` over
``[j, j+1) x [i, i+1)`` (centre ``j + 0.5``) while diffst, like scanpy, puts pixel centres at
integers, so half a pixel is subtracted. The result is an AnnData in scanpy's Visium convention
(``obsm["spatial"]``, the image in ``uns["spatial"]``) handed to
:func:`diffst.io.anndata_io.anndata_to_sample`, which lays the spots out on diffst's raster
(hexagonal or square grid, from ``obs["array_row"]``/``["array_col"]`` or inferred). Spot
pitch: 100 µm on a hexagonal (Visium) grid; on a square grid ``pitch_um=``, ``um_per_unit=``
(µm per unit of the coordinate system), or the bin size in a region named like Visium HD's
``square_008um``.

Writing (:func:`add_to_spatialdata`, :func:`sample_to_spatialdata`) adds, for ``key``:

* images ``{key}_mean`` (and ``{key}_std``, ``{key}_q05``, ``{key}_q95`` when given): float32
  ``(c, y, x)`` with one channel per gene (channel names = genes), one pixel per HR cell, 0
  outside the tissue mask;
* labels ``{key}_cells``: ``(y, x)`` uint32 HR cell ids (``row * W + col + 1`` in tissue, 0
  outside);
* table ``{key}``: one row per HR cell in tissue annotating ``{key}_cells`` (``obs["region"]``,
  ``obs["cell_id"]``), ``X`` the mean and the other maps as layers, as
  :func:`diffst.io.anndata_io.sample_to_anndata` lays them out (without its copy of the image).

Images and labels carry a transformation into every coordinate system of the H&E element: HR
cell ``(row, col)`` covers exactly the H&E pixels its raster cell covers (a scale and a
translation, or an affine when the raster is rotated against the image). ``sdata.write(path)``
then writes it all to ``.zarr``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from diffst.data.sample import SampleError, STSample
from diffst.io.anndata_io import anndata_to_sample, image_to_rgb_uint8, sample_to_anndata

INSTALL_HINT = "install the optional extra: pip install 'diffst[spatialdata]'"
LAYER_NAMES = ("mean", "std", "q05", "q95")
XY = ("x", "y")
_HD_BIN = re.compile(r"square_(\d+)um$")


class SpatialDataError(SampleError):
    """A SpatialData object lacks what diffst needs (image, table, positions, transformation)."""


def require_spatialdata() -> Any:
    """The ``spatialdata`` module; an ImportError naming the extra when it is not installed."""
    try:
        import spatialdata
    except ImportError as exc:
        raise ImportError(f"SpatialData support needs the 'spatialdata' package; "
                          f"{INSTALL_HINT}") from exc
    return spatialdata


def is_spatialdata(obj: Any) -> bool:
    """True when ``obj`` is a ``spatialdata.SpatialData`` (never imports spatialdata itself)."""
    module = sys.modules.get("spatialdata")
    return module is not None and isinstance(obj, module.SpatialData)


# ---------------------------------------------------------------------------- reading
def anndata_options() -> tuple[str, ...]:
    """Options of :func:`spatialdata_to_sample` passed on to ``anndata_to_sample``."""
    import inspect

    skip = {"adata", "image", "library_id", "source"}
    return tuple(p for p in inspect.signature(anndata_to_sample).parameters if p not in skip)


def read_spatialdata(path: str | Path, **kw: Any) -> STSample:
    """Read a SpatialData ``.zarr`` store as an :class:`STSample` (options as
    :func:`spatialdata_to_sample`)."""
    sd = require_spatialdata()
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such SpatialData .zarr folder")
    try:
        sdata = sd.read_zarr(path)
    except Exception as exc:  # zarr and ome-zarr raise many kinds of errors
        raise SpatialDataError(f"{path}: cannot read as a SpatialData store ({exc})") from exc
    kw.setdefault("source", str(path))
    return spatialdata_to_sample(sdata, **kw)


def spatialdata_to_sample(
    sdata: Any,
    *,
    table_key: str | None = None,
    region: str | None = None,
    image_key: str | None = None,
    coordinate_system: str | None = None,
    scale: str | None = None,
    um_per_unit: float | None = None,
    source: str = "SpatialData object",
    **anndata_kw: Any,
) -> STSample:
    """Convert a SpatialData object (image + table of spots/bins) to an :class:`STSample`.

    Args:
        sdata: the SpatialData object.
        table_key: the counts table; default the only table (or the only one annotating
            shapes/points).
        region: the shapes/points element the counts belong to, when the table annotates
            several; its rows for other elements are left out.
        image_key: the H&E image element; default the only image sharing a coordinate system
            with the spots.
        coordinate_system: through which coordinate system positions reach the image.
        scale: level of a multiscale image (``"scale0"`` finest, the default).
        um_per_unit: µm per unit of ``coordinate_system`` (e.g. 1 when it is in µm): gives the
            pitch of square grids.
        source: names the data in messages.
        anndata_kw: options of :func:`diffst.io.anndata_io.anndata_to_sample` (``layer``,
            ``genes``, ``n_top_genes``, ``gene_key``, ``pitch_um``, ``require_integer``,
            ``fix``, ``name``...).

    Returns:
        The sample on the image's pixels; ``meta["spatialdata"]`` records the elements used.

    Raises:
        SpatialDataError: no table, no image, a table that annotates nothing usable, no shared
            coordinate system, or table rows without a position.
    """
    require_spatialdata()
    for bad in ("image", "library_id"):
        if bad in anndata_kw:
            raise TypeError(f"{bad}= does not apply to SpatialData input; choose the image "
                            "element with image_key= (and scale=)")
    spots, link = spots_anndata(sdata, table_key=table_key, region=region, image_key=image_key,
                                coordinate_system=coordinate_system, scale=scale,
                                um_per_unit=um_per_unit, source=source)
    kw = dict(anndata_kw)
    bin_um = _HD_BIN.search(link["region"])
    if bin_um and "pitch_um" not in kw and "microns_per_pixel" not in \
            spots.uns["spatial"][link["region"]]["scalefactors"]:
        kw["pitch_um"] = float(bin_um.group(1))
        link["pitch_um_from_name"] = kw["pitch_um"]
    kw.setdefault("name", link["region"])
    try:
        sample = anndata_to_sample(spots, source=source, **kw)
    except SampleError as exc:
        if "nothing states its pitch" not in str(exc):
            raise
        raise SpatialDataError(
            f"{source}: the spots of {link['region']!r} lie on a square grid and nothing states "
            f"its pitch; pass --pitch-um (pitch_um= in Python; µm between neighbouring spot "
            f"centres) or um_per_unit= "
            f"(µm per unit of coordinate system {link['coordinate_system']!r})") from exc
    sample.meta["reader"] = "diffst.io.spatialdata_io.spatialdata_to_sample"
    sample.meta["spatialdata"] = link
    return sample


def spots_anndata(
    sdata: Any,
    *,
    table_key: str | None = None,
    region: str | None = None,
    image_key: str | None = None,
    coordinate_system: str | None = None,
    scale: str | None = None,
    um_per_unit: float | None = None,
    source: str = "SpatialData object",
) -> tuple[ad.AnnData, dict[str, Any]]:
    """The spots of ``sdata`` as an AnnData in scanpy's Visium convention, and the link record.

    ``obsm["spatial"]`` holds the spot centres in pixels of the chosen image level (centres at
    integers), ``uns["spatial"][region]`` that image as ``"hires"`` with scale factor 1, the
    spot diameter (circles) and ``microns_per_pixel`` (with ``um_per_unit``). Arguments as
    :func:`spatialdata_to_sample`.
    """
    table_name, table = _pick_table(sdata, table_key, source)
    region, region_key, instance_key = _table_region(sdata, table_name, table, region, source)
    element = sdata[region]
    el_tr = _transformations(element)
    image_key = _pick_image(sdata, image_key, region, el_tr, source)
    img_el = sdata.images[image_key]
    img_tr = _transformations(img_el)
    cs = _shared_system(el_tr, img_tr, coordinate_system, region, image_key, source)
    image, level = _image_level(img_el, scale, image_key, source)
    where = f"{source}: images[{image_key!r}]" + (f"[{scale!r}]" if scale else "")
    rgb = image_to_rgb_uint8(image, where)

    rows = np.flatnonzero(np.asarray(table.obs[region_key].astype(str) == region))
    if len(rows) == 0:
        raise SpatialDataError(f"{source}: table {table_name!r} has no row for {region!r} "
                               f"in obs[{region_key!r}]")
    ids = table.obs[instance_key].to_numpy()[rows]
    xy, radius = _positions(element, ids, region, table_name, instance_key, source)
    image_to_cs = _affine(img_tr[cs]) @ level  # image pixels -> coordinate-system units
    to_px = np.linalg.inv(image_to_cs) @ _affine(el_tr[cs])
    px = (np.column_stack([xy, np.ones(len(xy))]) @ to_px.T)[:, :2] - 0.5
    units_per_px = float(np.sqrt(abs(np.linalg.det(np.linalg.inv(to_px)[:2, :2]))))
    sf: dict[str, float] = {"tissue_hires_scalef": 1.0}
    if radius is not None:
        sf["spot_diameter_fullres"] = 2.0 * float(np.median(radius)) / units_per_px
    if um_per_unit is not None:
        if not 0 < float(um_per_unit) < np.inf:
            raise ValueError(f"um_per_unit must be a positive number, got {um_per_unit!r}")
        img_units = float(np.sqrt(abs(np.linalg.det(image_to_cs[:2, :2]))))
        sf["microns_per_pixel"] = float(um_per_unit) * img_units

    obs = pd.DataFrame(index=pd.Index(table.obs_names[rows].astype(str), dtype=str))
    for col in ("array_row", "array_col", "in_tissue"):
        if col in table.obs:
            obs[col] = table.obs[col].to_numpy()[rows]
    spots = ad.AnnData(X=_take_rows(table.X, rows), obs=obs, var=table.var.copy())
    for name, layer in table.layers.items():
        spots.layers[name] = _take_rows(layer, rows)
    if table.raw is not None:
        spots.raw = ad.AnnData(X=_take_rows(table.raw.X, rows), obs=obs.copy(),
                               var=table.raw.var.copy())
    spots.obsm["spatial"] = px
    spots.uns["spatial"] = {region: {"images": {"hires": rgb}, "scalefactors": sf,
                                     "metadata": {"source": f"SpatialData {image_key!r}"}}}
    link = {"table": table_name, "region": region, "region_key": region_key,
            "instance_key": instance_key, "image": image_key, "scale": scale or "scale0",
            "coordinate_system": cs, "element_to_image_px": to_px.tolist()}
    return spots, link


def _pick_table(sdata: Any, table_key: str | None, source: str) -> tuple[str, ad.AnnData]:
    tables = dict(sdata.tables)
    if not tables:
        raise SpatialDataError(f"{source} has no table: diffst needs the spot/bin counts as a "
                               "table (AnnData) annotating a shapes or points element")
    if table_key is not None:
        if table_key not in tables:
            raise SpatialDataError(f"{source}: no table {table_key!r} (tables: "
                                   f"{sorted(tables)})")
        return table_key, tables[table_key]
    if len(tables) == 1:
        return next(iter(tables.items()))
    usable = [k for k, t in tables.items() if _annotated(sdata, t)]
    if len(usable) == 1:
        return usable[0], tables[usable[0]]
    raise SpatialDataError(f"{source} has several tables ({', '.join(sorted(tables))}); "
                           "pass table_key= with the one holding the spot/bin counts")


def _annotated(sdata: Any, table: ad.AnnData) -> list[str]:
    attrs = table.uns.get("spatialdata_attrs") or {}
    regions = attrs.get("region") or []
    regions = [regions] if isinstance(regions, str) else list(regions)
    return [r for r in regions if r in sdata.shapes or r in sdata.points]


def _table_region(sdata: Any, name: str, table: ad.AnnData, region: str | None,
                  source: str) -> tuple[str, str, str]:
    attrs = table.uns.get("spatialdata_attrs")
    if not isinstance(attrs, Mapping) or not all(k in attrs for k in ("region", "region_key",
                                                                      "instance_key")):
        raise SpatialDataError(
            f"{source}: table {name!r} does not annotate any element (no region, region_key "
            "and instance_key in uns['spatialdata_attrs']); link it to the spots with "
            "spatialdata.models.TableModel.parse(table, region=..., region_key=..., "
            "instance_key=...)")
    regions = attrs["region"]
    regions = [regions] if isinstance(regions, str) else [str(r) for r in regions]
    if region is None:
        if len(regions) != 1:
            raise SpatialDataError(f"{source}: table {name!r} annotates several elements "
                                   f"({', '.join(regions)}); pass region= with the spots")
        region = regions[0]
    elif region not in regions:
        raise SpatialDataError(f"{source}: table {name!r} does not annotate {region!r} (it "
                               f"annotates {', '.join(regions)})")
    if region in sdata.labels:
        raise SpatialDataError(f"{source}: {region!r} is a labels element; diffst needs the "
                               "spots/bins as shapes (circles, squares) or points")
    if region not in sdata.shapes and region not in sdata.points:
        raise SpatialDataError(f"{source}: table {name!r} annotates {region!r}, which is not "
                               "a shapes or points element of this SpatialData object")
    key_col, inst_col = str(attrs["region_key"]), str(attrs["instance_key"])
    for col in (key_col, inst_col):
        if col not in table.obs:
            raise SpatialDataError(f"{source}: table {name!r} has no obs[{col!r}] although "
                                   "uns['spatialdata_attrs'] names it")
    return region, key_col, inst_col


def _pick_image(sdata: Any, image_key: str | None, region: str, el_tr: Mapping,
                source: str) -> str:
    images = list(sdata.images.keys())
    if not images:
        raise SpatialDataError(f"{source} has no image element: diffst needs the H&E image "
                               "(an RGB image element) of the section")
    if image_key is not None:
        if image_key not in images:
            raise SpatialDataError(f"{source}: no image {image_key!r} (images: "
                                   f"{', '.join(images)})")
        return image_key
    near = [k for k in images if set(_transformations(sdata.images[k])) & set(el_tr)]
    if len(near) == 1:
        return near[0]
    if not near:
        raise SpatialDataError(
            f"{source}: no image shares a coordinate system with {region!r} (its coordinate "
            f"systems: {', '.join(sorted(el_tr))}), so the spots cannot be placed on an image; "
            "add the transformation with spatialdata.transformations.set_transformation")
    raise SpatialDataError(f"{source} has several images ({', '.join(near)}); pass "
                           "image_key= with the H&E")


def _transformations(element: Any) -> dict[str, Any]:
    from spatialdata.transformations import get_transformation

    return dict(get_transformation(element, get_all=True))


def _shared_system(el_tr: Mapping, img_tr: Mapping, wanted: str | None, region: str,
                   image_key: str, source: str) -> str:
    shared = sorted(set(el_tr) & set(img_tr))
    if wanted is not None:
        if wanted not in shared:
            raise SpatialDataError(
                f"{source}: coordinate system {wanted!r} is not shared by {region!r} "
                f"({', '.join(sorted(el_tr))}) and {image_key!r} ({', '.join(sorted(img_tr))})")
        return wanted
    if not shared:
        raise SpatialDataError(
            f"{source}: {region!r} (coordinate systems {', '.join(sorted(el_tr))}) and image "
            f"{image_key!r} ({', '.join(sorted(img_tr))}) share no coordinate system, so there "
            "is no transformation from the spots into the image's pixels")
    return "global" if "global" in shared else shared[0]


def _affine(transformation: Any) -> np.ndarray:
    """A spatialdata transformation as a 3x3 matrix on ``(x, y, 1)``."""
    return np.asarray(transformation.to_affine_matrix(input_axes=XY, output_axes=XY),
                      dtype=np.float64)


def _image_level(element: Any, scale: str | None, key: str, source: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, C)`` array of the chosen level and the 3x3 map from its pixels to scale0's."""
    from xarray import DataArray

    if isinstance(element, DataArray):
        if scale not in (None, "scale0"):
            raise SpatialDataError(f"{source}: image {key!r} has one scale; scale={scale!r} "
                                   "does not apply")
        arr, level = element, np.eye(3)
    else:
        levels = list(element.keys())
        name = scale or "scale0"
        if name not in levels:
            raise SpatialDataError(f"{source}: image {key!r} has no level {name!r} (levels: "
                                   f"{', '.join(levels)})")
        arr = next(iter(element[name].ds.data_vars.values()))
        full = next(iter(element["scale0"].ds.data_vars.values()))
        level = np.diag([full.sizes["x"] / arr.sizes["x"], full.sizes["y"] / arr.sizes["y"], 1])
    if set(arr.dims) != {"c", "y", "x"}:
        raise SpatialDataError(f"{source}: image {key!r} has axes {arr.dims}; diffst needs a "
                               "2D (c, y, x) image")
    return np.asarray(arr.transpose("y", "x", "c").values), level


def _positions(element: Any, ids: np.ndarray, region: str, table: str, instance_key: str,
               source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(N, 2)`` centres of the instances ``ids`` in the element's own coordinates, and the
    circle radii (None for polygons and points)."""
    import geopandas as gpd

    radius = None
    if isinstance(element, gpd.GeoDataFrame):
        index = element.index
        kinds = set(element.geometry.geom_type.unique())
        if kinds == {"Point"}:
            xy = np.column_stack([element.geometry.x, element.geometry.y])
            if "radius" in element:
                radius = element["radius"].to_numpy(dtype=np.float64)
        else:
            centre = element.geometry.centroid
            xy = np.column_stack([centre.x, centre.y])
    else:  # points (dask DataFrame): one instance per row
        frame = element[["x", "y"]].compute()
        index, xy = frame.index, frame.to_numpy(dtype=np.float64)
    where = _locate(index, ids)
    if (where < 0).any():
        missing = [str(v) for v in ids[where < 0][:5]]
        raise SpatialDataError(f"{source}: {int((where < 0).sum())} row(s) of table {table!r} "
                               f"name {instance_key} values not in {region!r} (e.g. "
                               f"{', '.join(missing)})")
    xy = np.asarray(xy, dtype=np.float64)[where]
    if not np.isfinite(xy).all():
        raise SpatialDataError(f"{source}: {region!r} has positions that are not finite")
    return xy, (radius[where] if radius is not None else None)


def _locate(index: pd.Index, ids: np.ndarray) -> np.ndarray:
    where = pd.Index(index).get_indexer(ids)
    if (where < 0).any():  # e.g. integer instance ids against a string index
        where = pd.Index(index.astype(str)).get_indexer(pd.Index(ids).astype(str))
    return where


def _take_rows(matrix: Any, rows: np.ndarray) -> Any:
    if matrix is None:  # anndata_to_sample names the problem (e.g. counts only in a layer)
        return None
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix)[rows]
    return np.asarray(matrix)[rows]


# ---------------------------------------------------------------------------- writing
def element_names(key: str, layers: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Names of the elements :func:`add_to_spatialdata` writes for ``key`` (role -> name)."""
    names = {"table": key, "labels": f"{key}_cells"}
    for layer in layers or {"mean": None}:
        names[layer] = f"{key}_{layer}"
    return names


def check_result_key(key: str, protect: Collection[str],
                     layers: Collection[str] = LAYER_NAMES) -> None:
    """Raise ValueError when the elements named by ``key`` would replace one in ``protect``."""
    clash = sorted(set(element_names(key, dict.fromkeys(layers)).values()) & set(protect))
    if clash:
        raise ValueError(f"key {key!r} would replace the input element(s) {clash}; choose "
                         "another key")


def add_to_spatialdata(
    sdata: Any,
    hr: STSample,
    *,
    key: str = "diffst_sr",
    layers: Mapping[str, np.ndarray] | None = None,
    image_key: str | None = None,
    scale: str | None = None,
    uns: Mapping[str, Any] | None = None,
    protect: Collection[str] = (),
) -> dict[str, str]:
    """Add a super-resolved sample to ``sdata`` (layout in the module docstring).

    Args:
        sdata: the SpatialData object holding the H&E that ``hr.affine`` refers to.
        hr: the HR sample (``expr`` = mean, ``affine`` into pixels of the H&E level).
        key: names the elements (:func:`element_names`); existing ones are replaced.
        layers: ``(G, H, W)`` maps by name (default ``{"mean": hr.expr}``).
        image_key, scale: the H&E element and level (default as recorded by
            :func:`spatialdata_to_sample` in ``hr.meta["spatialdata"]``).
        uns: entries added to the table's ``uns``.
        protect: element names the result must not replace (besides the H&E), e.g. the input
            table and spots.

    Returns:
        role -> element name of what was added.
    """
    require_spatialdata()
    from spatialdata.models import Image2DModel, Labels2DModel, TableModel

    link = hr.meta.get("spatialdata", {})
    image_key = image_key or link.get("image")
    if image_key is None or image_key not in sdata.images:
        raise SpatialDataError(f"no H&E image element {image_key!r} in the SpatialData object "
                               "to place the result on; pass image_key=")
    img_el = sdata.images[image_key]
    _, level = _image_level(img_el, scale or link.get("scale"), image_key, "SpatialData object")
    maps = dict(layers) if layers is not None else {"mean": hr.expr}
    names = element_names(key, maps)
    check_result_key(key, (image_key, *protect), maps)
    transformations = hr_transformations(hr.affine, _transformations(img_el), level)
    h, w = hr.shape
    outside = ~hr.mask
    for layer, arr in maps.items():
        arr = np.array(arr, dtype=np.float32)
        if arr.shape != hr.expr.shape:
            raise ValueError(f"layer {layer!r} has shape {arr.shape}, expected "
                             f"{hr.expr.shape}")
        arr[:, outside] = 0.0
        sdata[names[layer]] = Image2DModel.parse(arr, dims=("c", "y", "x"),
                                                 c_coords=list(hr.genes),
                                                 transformations=dict(transformations))
    ids = (np.arange(h * w, dtype=np.uint32) + 1).reshape(h, w)
    ids[outside] = 0
    sdata[names["labels"]] = Labels2DModel.parse(ids, dims=("y", "x"),
                                                 transformations=dict(transformations))
    table = sample_to_anndata(hr, layers=maps, max_image_px=None)
    table.uns.pop("spatial", None)  # the image is already an element of sdata
    table.obs["region"] = pd.Categorical([names["labels"]] * table.n_obs)
    table.obs["cell_id"] = (table.obs["row"].to_numpy() * w + table.obs["col"].to_numpy() + 1
                            ).astype(np.int64)
    table.uns.update(dict(uns or {}))
    sdata[names["table"]] = TableModel.parse(table, region=names["labels"], region_key="region",
                                             instance_key="cell_id")
    return names


def hr_transformations(affine: np.ndarray, image_transformations: Mapping[str, Any],
                       level: np.ndarray | None = None) -> dict[str, Any]:
    """Transformations of an HR raster element into each coordinate system of the H&E.

    ``affine`` maps raster ``(col, row)`` centres to pixels of the H&E level (diffst's
    convention, centres at integers); in SpatialData's convention (centres at ``+0.5`` on both
    sides) the raster-to-H&E map is ``T(+0.5) @ affine @ T(-0.5)``, then ``level`` (to scale0)
    and the H&E's own transformation follow.
    """
    def shift(d: float) -> np.ndarray:
        return np.array([[1.0, 0, d], [0, 1.0, d], [0, 0, 1.0]])

    to_image = (np.eye(3) if level is None else level) @ shift(0.5) @ \
        np.asarray(affine, dtype=np.float64) @ shift(-0.5)
    return {cs: _as_transformation(_affine(t) @ to_image)
            for cs, t in image_transformations.items()}


def _as_transformation(matrix: np.ndarray) -> Any:
    """A scale then a translation when ``matrix`` is axis-aligned, else an affine."""
    from spatialdata.transformations import Affine, Scale, Sequence, Translation

    if abs(matrix[0, 1]) < 1e-12 and abs(matrix[1, 0]) < 1e-12:
        return Sequence([Scale([matrix[0, 0], matrix[1, 1]], axes=XY),
                         Translation([matrix[0, 2], matrix[1, 2]], axes=XY)])
    return Affine(matrix, input_axes=XY, output_axes=XY)


def sample_to_spatialdata(
    hr: STSample,
    *,
    key: str = "diffst_sr",
    layers: Mapping[str, np.ndarray] | None = None,
    image_key: str = "he",
    uns: Mapping[str, Any] | None = None,
) -> Any:
    """A new SpatialData with ``hr``'s H&E as image ``image_key`` (pixels = the ``"global"``
    coordinate system) and the result elements of :func:`add_to_spatialdata`."""
    sd = require_spatialdata()
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity

    if hr.image is None:
        raise SpatialDataError(f"sample '{hr.name}' has no image to place the result on")
    sdata = sd.SpatialData()
    sdata[image_key] = Image2DModel.parse(np.moveaxis(hr.image, 2, 0), dims=("c", "y", "x"),
                                          c_coords=["r", "g", "b"],
                                          transformations={"global": Identity()})
    meta = dict(hr.meta)
    meta.pop("spatialdata", None)
    add_to_spatialdata(sdata, replace(hr, meta=meta), key=key, layers=layers,
                       image_key=image_key, uns=uns)
    return sdata


__all__ = [
    "INSTALL_HINT",
    "anndata_options",
    "check_result_key",
    "SpatialDataError",
    "add_to_spatialdata",
    "element_names",
    "hr_transformations",
    "is_spatialdata",
    "read_spatialdata",
    "require_spatialdata",
    "sample_to_spatialdata",
    "spatialdata_to_sample",
    "spots_anndata",
]

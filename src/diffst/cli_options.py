"""Shared command-line pieces: reader options, up-front range checks, writable outputs.

* :func:`reader_options` adds the options every data-reading verb shares (``--image``,
  ``--make-unique``, ``--image-um-per-px``, ``--section``, ``--layer``, the position fixes
  ``--swap-xy/--flip/--rotate/--position-scale``, ``--no-alignment-check``, ``--max-image-gb``,
  ``--gene-key``, ``--bin-um``, ``--pitch-um``, ``--image-scale``, ``--allow-non-integer``,
  ``--max-dense-gb``)
  and keeps them in the click context (the command's own parameters are unchanged);
  :func:`reader_kwargs` turns them into keyword arguments of :func:`diffst.io.read_sample`.
* :func:`check_ranges` validates numeric options before any work starts.
* :func:`check_writable` refuses outputs that cannot be written, before any long work.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

_READER_OPTIONS = [
    click.option("--image", "image", default=None,
                 help="Image to use: hires, lowres or a path to the full-resolution image "
                      "(Space Ranger, Visium HD, .h5ad); the image of a cells .h5ad."),
    click.option("--make-unique", is_flag=True,
                 help="Append -1, -2 to repeated gene symbols instead of refusing them."),
    click.option("--image-um-per-px", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="µm per image pixel (legacy ST, cells .h5ad without a stored size)."),
    click.option("--section", default=None, help="Section of a folder of legacy ST sections."),
    click.option("--layer", default=None, help="AnnData layer holding the raw counts."),
    click.option("--swap-xy", is_flag=True, help="Positions have x and y swapped: swap them."),
    click.option("--flip", type=click.Choice(["x", "y", "xy"]), default=None,
                 help="The image is mirrored against the positions (x: left-right, y: "
                      "top-bottom)."),
    click.option("--rotate", type=click.Choice(["90", "180", "270"]), default=None,
                 help="The image is rotated counter-clockwise by this many degrees."),
    click.option("--position-scale", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Multiply the positions (in image pixels) by this, e.g. 10 when a scale "
                      "factor is 10x too small."),
    click.option("--no-alignment-check", is_flag=True,
                 help="Skip the check that spots land on stained tissue (and accept a blank "
                      "image)."),
    click.option("--max-image-gb", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Memory allowed for decoding one image (default 8 GB)."),
    click.option("--gene-key", default=None,
                 help="Which gene names to use: 'name' (symbols, the default) or 'id' (Ensembl "
                      "ids) for Space Ranger and Visium HD; a var column (e.g. gene_ids) for an "
                      ".h5ad."),
    click.option("--bin-um", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Visium HD: the bin size to read when there are several (e.g. 8 or 16); "
                      "Xenium: the HR cell size in µm (default 8)."),
    click.option("--pitch-um", type=click.FloatRange(min=0, min_open=True), default=None,
                 help=".h5ad on a square grid whose scale factors state no pitch: the "
                      "centre-to-centre distance of its bins in µm."),
    click.option("--image-scale", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Space Ranger, Visium HD: size of the --image file relative to the "
                      "full-resolution image Space Ranger was run with (e.g. 0.5 for one "
                      "downsampled 2x)."),
    click.option("--allow-non-integer", is_flag=True,
                 help="Accept non-integer counts (e.g. ambient-corrected) instead of refusing "
                      "them as normalised data."),
    click.option("--max-dense-gb", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Memory allowed for the genes x raster array of one sample (default 8 "
                      "GB)."),
]
_META_KEY = "diffst.reader_options"
_READER_KEYS = ("image", "make_unique", "image_um_per_px", "section", "layer", "swap_xy", "flip",
                "rotate", "position_scale", "no_alignment_check", "max_image_gb", "gene_key",
                "bin_um", "pitch_um", "image_scale", "allow_non_integer", "max_dense_gb")
_PASSED_AS_IS = ("image_um_per_px", "section", "layer", "gene_key", "bin_um", "pitch_um",
                 "image_scale", "max_dense_gb")
"""Reader options handed to the reader under their own name when set."""


def reader_options(fn: Callable) -> Callable:
    """Add the shared reader options to a click command (read them with :func:`reader_kwargs`)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opts = {k: kwargs.pop(k) for k in _READER_KEYS}
        if opts["max_image_gb"] is not None:
            os.environ["DIFFST_MAX_IMAGE_GB"] = repr(opts["max_image_gb"])
        ctx = click.get_current_context(silent=True)
        if ctx is not None:
            ctx.meta[_META_KEY] = opts
        return fn(*args, **kwargs)

    for option in reversed(_READER_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def reader_kwargs(path: str | Path, opts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`diffst.io.read_sample` for ``path``.

    ``opts`` defaults to the reader options of the running command (empty outside one). Only
    options the user set are passed, so a reader that does not take one is never handed it by
    default (and names it when the user did set it).
    """
    from diffst.io import detect_format
    from diffst.io.alignment import PositionFix

    if opts is None:
        ctx = click.get_current_context(silent=True)
        opts = ctx.meta.get(_META_KEY, {}) if ctx is not None else {}
    kw: dict[str, Any] = {}
    if opts.get("image") is not None:
        key = "image_path" if detect_format(path) == "xenium_cells_h5ad" else "image"
        kw[key] = opts["image"]
    if opts.get("make_unique"):
        kw["make_unique"] = True
    for key in _PASSED_AS_IS:
        if opts.get(key) is not None:
            kw[key] = opts[key]
    if opts.get("allow_non_integer"):
        kw["require_integer"] = False
    fix = PositionFix(swap_xy=bool(opts.get("swap_xy")), flip=opts.get("flip"),
                      rotate=int(opts.get("rotate") or 0), scale=opts.get("position_scale") or 1.0)
    if not fix.is_identity:
        kw["fix"] = fix
    if opts.get("no_alignment_check"):
        kw["alignment_check"] = False
    return kw


def check_ranges(positive: tuple[str, ...] = (), **minimum: float) -> Callable:
    """Decorator: options in ``positive`` must be > 0, each in ``minimum`` at least its value.

    Values that are None (option not given) are skipped. Violations raise
    :class:`click.BadParameter` naming the option before the command runs.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context(silent=True)
            checks = [(n, 0.0, True) for n in positive] + [(n, v, False)
                                                          for n, v in minimum.items()]
            for name, low, strict in checks:
                value = kwargs.get(name)
                if value is None or (value > low if strict else value >= low):
                    continue
                want = "positive" if strict else f"at least {low:g}"
                raise click.BadParameter(f"must be {want}, got {value}", ctx=ctx,
                                         param_hint=_hint(ctx, name))
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def check_writable(files: tuple[str, ...] = (), folders: tuple[str, ...] = ()) -> Callable:
    """Decorator: the named file and folder options must be writable before the command runs.

    A file's folder (created if missing) must accept a new file and the file itself, if present,
    must be writable; a folder must be writable or creatable. Failures raise
    :class:`click.BadParameter` naming the option and the path.
    """

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context(silent=True)
            for name in files + folders:
                if kwargs.get(name) is None:
                    continue
                path = Path(kwargs[name])
                problem = writable_problem(path.parent if name in files else path)
                if problem is None and name in files:
                    problem = _file_problem(path)
                if problem is not None:
                    raise click.BadParameter(f"{path}: {problem}", ctx=ctx,
                                             param_hint=_hint(ctx, name))
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def writable_problem(folder: Path) -> str | None:
    """Why no file can be written in ``folder`` (created when missing), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the folder {folder} ({exc.strerror or exc})"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".diffst-write-test-"):
            pass
    except OSError as exc:
        return f"cannot write in {folder} ({exc.strerror or exc}); choose another location"
    return None


def _file_problem(path: Path) -> str | None:
    if path.is_dir():
        return "is a folder; give a file name"
    if path.exists() and not os.access(path, os.W_OK):
        return "exists and is not writable; choose another file or change its permissions"
    return None


def _hint(ctx: click.Context | None, name: str) -> str:
    if ctx is not None:
        for param in ctx.command.params:
            if param.name == name and getattr(param, "opts", None):
                return "/".join(param.opts)
    return f"--{name.replace('_', '-')}"

"""The import graph follows the layers: no module imports from a higher layer (lazy imports
inside functions included), and inference imports nothing from training."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [
    {"io", "data", "tilestore", "precision", "threads", "metrics", "plot"},
    {"model", "consistency"},
    {"diffusion", "config"},
    {"pipeline", "train", "infer"},
    {"calibration", "baselines", "demo", "report"},
]
"""Layers from the bottom up; any other module (api, cli, tl, pp, pl, benchmark, distributed,
the package itself, and modules added later) is at the top."""

NOT_FROM = {"infer": {"train"}, "pipeline": {"train"}, "calibration": {"train"}}
"""Same-layer imports that are not allowed either (inference must not need training)."""


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _rank(unit: str) -> int:
    return next((i for i, layer in enumerate(LAYERS) if unit in layer), len(LAYERS))


def _imports() -> set[tuple[str, str, str]]:
    """``(importing file, importing unit, imported unit)`` for every import of diffst code."""
    out = set()
    for path in (SRC / "diffst").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        unit = _unit(".".join(parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "diffst" and _unit(name) != unit:
                    out.add((str(path.relative_to(SRC)), unit, _unit(name)))
    return out


def test_no_import_from_a_higher_layer():
    edges = _imports()
    assert edges  # the scan found the imports
    upward = sorted((f, b) for f, a, b in edges if _rank(b) > _rank(a))
    assert not upward, f"imports from a higher layer: {upward}"


def test_inference_does_not_import_training():
    bad = sorted((f, b) for f, a, b in _imports() if b in NOT_FROM.get(a, set()))
    assert not bad, bad

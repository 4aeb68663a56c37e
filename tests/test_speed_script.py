"""benchmarks/speed.py: the results name no machine path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _speed():
    script = ROOT / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("diffst_speed_script", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["diffst_speed_script"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_results_file_is_named_without_a_machine_path():
    shown = _speed().shown_argv
    assert shown(["--device", "cuda", "--out", "/elsewhere/out/speed_cuda.md", "--compile"]) == [
        "--device", "cuda", "--out", "speed_cuda.md", "--compile"]
    inside = str(ROOT / "benchmarks" / "results" / "speed.md")
    assert shown(["--out", inside]) == ["--out", "benchmarks/results/speed.md"]
    assert shown([f"--out={inside}", "--threads", "1"]) == [
        "--out=benchmarks/results/speed.md", "--threads", "1"]

"""README.md against behaviour: its commands and flags exist, its file lists and pictures match."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from diffst.cli import main
from diffst.demo import DEMO_FILES, DemoSettings, run_demo

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _shell_commands() -> list[list[str]]:
    """Every ``diffst ...`` command in the README's bash blocks, split into words."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #")[0]
            for part in re.split(r"&&|;", line):
                words = shlex.split(part, comments=True)
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words = words[1:]  # VAR=value prefixes
                if words and words[0] == "diffst":
                    commands.append(words)
    return commands


def _group_options() -> set[str]:
    return {o for p in main.params for o in p.opts} | {"--help"}


def test_readme_commands_and_flags_exist():
    commands = _shell_commands()
    assert len(commands) >= 8
    for words in commands:
        flags_before = []
        rest = words[1:]
        while rest and rest[0].startswith("--"):
            flags_before.append(rest.pop(0).split("=")[0])
            if flags_before[-1] == "--threads":
                rest.pop(0)
        assert set(flags_before) <= _group_options(), words
        if not rest:
            continue
        verb = rest[0]
        assert verb in main.commands, f"README runs `diffst {verb}`, which does not exist"
        known = {o for p in main.commands[verb].params for o in (*p.opts, *p.secondary_opts)}
        known.add("--help")
        used = {w.split("=")[0] for w in rest[1:] if w.startswith("--")}
        assert used <= known, f"`diffst {verb}`: README uses unknown {sorted(used - known)}"


def test_readme_python_scripts_and_pictures_exist():
    for script in set(re.findall(r"python (benchmarks/\w+\.py)", README)):
        assert (ROOT / script).exists(), script
    for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / picture).exists(), picture


def test_readme_demo_file_list_is_what_the_demo_writes(tmp_path):
    section = README.split("## What the demo does")[1].split("\n## ")[0]
    listed = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", section, re.M):
        listed |= set(re.findall(r"`([^`]+)`", row))
    assert listed == set(DEMO_FILES)
    settings = DemoSettings(size_um=320.0, n_genes=4, steps=2, n_samples=1, sample_steps=2)
    report = run_demo(tmp_path, settings, progress=False)
    assert {p.name for p in tmp_path.iterdir()} == set(DEMO_FILES)
    assert [Path(p).name for p in report["files"]] == list(DEMO_FILES)


@pytest.mark.parametrize("claim", ["--threads", "DIFFST_THREADS"])
def test_readme_tells_about_threads(claim):
    assert claim in README.split("## What the demo does")[0]


def test_first_hour_finds_every_timed_command_and_its_stated_time():
    """benchmarks/first_hour.py reads commands and stated times from the README: an edit that
    moves or rewords them must keep them findable (and the table current)."""
    import importlib.util
    import json
    import sys

    spec = importlib.util.spec_from_file_location("first_hour", ROOT / "benchmarks" /
                                                  "first_hour.py")
    first_hour = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("first_hour", first_hour)  # dataclasses look their module up
    spec.loader.exec_module(sys.modules["first_hour"])
    first_hour = sys.modules["first_hour"]
    for step in first_hour.STEPS:
        line, command = first_hour.find_command(README, step)
        assert line > 0 and command
        stated, _ = first_hour.stated_seconds(README, step)
        assert (stated is None) == (not step.stated)
    results = ROOT / "benchmarks" / "results"
    data = json.loads((results / "first_hour.json").read_text())
    assert (results / "first_hour.md").read_text() == first_hour.report(data, README), \
        "README lines moved: run python benchmarks/first_hour.py --render"

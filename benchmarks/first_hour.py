"""A new user's first hour, timed: the README's commands that state a time, run in a fresh clone
beside a busy process, against the time the README states for them.

The README is read, not retyped: each step's command comes from a README code block and its
stated time from a README sentence (both found by the patterns in :data:`STEPS`; the table names
the README line). Steps run one after another in a scratch folder with the default thread
settings (``DIFFST_THREADS`` and ``OMP_NUM_THREADS`` unset), while a competing process spins one
core for the whole run. A step passes when it takes at most twice its stated time; each is
stopped at three times its stated time.

Installing is not timed: the clone's ``src`` is put first on ``PYTHONPATH`` of the Python that
runs this script, whose environment already holds diffst's dependencies and its ``diffst``
command (the README's ``pip install`` would set up the same).

``--estimate`` steps (the 2000-step training) are not run to the end: the step is stopped after
``diffst train`` prints its time estimate, and the measured time is the time up to that line
plus the estimate.

    python benchmarks/first_hour.py                     # writes results/first_hour.md
    python benchmarks/first_hour.py --only quick,quickstart --merge   # rerun two steps
    python benchmarks/first_hour.py --render          # only redo the table (README lines moved)

The measurements are kept in ``results/first_hour.json``; the table is rendered against the
README of the newest run's clone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "first_hour.md"
RESULTS_JSON = RESULTS.with_suffix(".json")
SPIN = "while True:\n    pass\n"
LIMIT_RATIO = 2.0
STOP_RATIO = 3.0


@dataclass
class Step:
    """One README command: where it is and how long the README says it takes."""

    key: str
    title: str
    command: str  # a regex matching the command's line in the README (continuations joined)
    stated: str  # a regex whose match in the README holds the stated time
    group: int  # which group of ``stated`` holds this step's time
    unit: str  # "s" or "min" (of that group)
    estimate: bool = False  # stop after the printed estimate (see the module docstring)


HER2ST_TIMES = (r"these\s+took (\d+) s \(train, reading included\), (\d+) s, (\d+) s and "
                r"(\d+) s")
"""The README sentence stating the times of the four HER2ST walk-through commands."""

STEPS = [
    Step("quick", "quick demo", r"`(diffst demo --quick)` is a smoke run",
         r"about (\d+) s wall time on the 2-core machine\s+beside a busy process", 1, "s"),
    Step("her2st_train", "HER2ST: train C2-C5 (spots-only, x2)",
         r"^diffst train \$H/C2\.counts.*", HER2ST_TIMES, 1, "s"),
    Step("her2st_predict", "HER2ST: predict C6 with report",
         r"^diffst predict \$H/C6\.counts\.tsv\.gz --model \S+ --out C6_x2.*",
         HER2ST_TIMES, 2, "s"),
    Step("her2st_pool", "HER2ST: predict C6 pooled (--pool)",
         r"^diffst predict \$H/C6\.counts\.tsv\.gz .*--pool.*",
         HER2ST_TIMES, 3, "s"),
    Step("her2st_evaluate", "HER2ST: evaluate",
         r"^diffst evaluate --truth \$H/C6.*",
         HER2ST_TIMES, 4, "s"),
    Step("simulate", "HR truth: simulate (setup, no stated time)", r"^diffst simulate hr\.npz.*",
         "", 0, "s"),
    Step("hr_train", "HR truth: train (projected)", r"^diffst train hr\.npz .*",
         r"about (\d+) minutes on 2 cores\s+beside a busy process \(about", 1, "min",
         estimate=True),
    Step("quickstart", "Python quickstart block", "",
         r"a test executes it; about (a|\d+) minutes? on 2 cores", 1, "min"),
    Step("demo", "demo", r"&& (diffst demo)\s*$",
         r"the demo\s+itself takes about (\d+) minutes", 1, "min"),
]


def readme_lines(readme: str) -> list[str]:
    return readme.splitlines()


def find_command(readme: str, step: Step) -> tuple[int, str]:
    """(line number, command) of ``step`` in the README, continuation lines joined."""
    if step.key == "quickstart":
        return quickstart_block(readme)
    lines = readme_lines(readme)
    for i, line in enumerate(lines):
        full, j = line, i
        while full.endswith("\\") and j + 1 < len(lines):
            j += 1
            full = full[:-1].rstrip() + " " + lines[j].strip()
        m = re.search(step.command, full)
        if m:
            text = next((g for g in m.groups() if g), None) or m.group(0)
            return i + 1, text.split("  #")[0].split(" # ")[0].strip()
    raise SystemExit(f"README: no command for step {step.key} ({step.command!r})")


def quickstart_block(readme: str) -> tuple[int, str]:
    """The Python block after "runs as written on a fresh install"."""
    start = readme.index("runs as written on a fresh install")
    fence = readme.index("```python\n", start) + len("```python\n")
    end = readme.index("```", fence)
    return readme[:fence].count("\n") + 1, readme[fence:end]


def stated_seconds(readme: str, step: Step) -> tuple[float | None, int | None]:
    """(seconds, line number) the README states for ``step``; (None, None) if none."""
    if not step.stated:
        return None, None
    m = re.search(step.stated, readme)
    if not m:
        raise SystemExit(f"README: no stated time for step {step.key} ({step.stated!r})")
    line = readme[:m.start()].count("\n") + 1
    if step.group == 0:  # the sum of all groups
        return float(sum(float(g) for g in m.groups())), line
    raw = m.group(step.group)
    value = 1.0 if raw == "a" else float(raw)
    return value * (60.0 if step.unit == "min" else 1.0), line


def parse_duration(text: str) -> float:
    """Seconds of a duration printed by diffst ("42 s", "4.2 min", "1.5 h")."""
    value, unit = text.split()
    return float(value) * {"s": 1.0, "min": 60.0, "h": 3600.0}[unit]


def run_step(command: str, cwd: Path, env: dict, log: Path, stop_after: float,
             estimate: bool) -> tuple[float, str, int | None]:
    """Run ``command`` with bash; returns (seconds, how it ended, exit code)."""
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                elapsed = time.perf_counter() - t0
                if elapsed > stop_after:
                    _stop(proc)
                    return elapsed, f"stopped at {STOP_RATIO:g}x", None
                if estimate:
                    m = re.search(r"first steps: [\d.]+ s/step -> about ([\d.]+ (?:s|min|h)) ",
                                  log.read_text(errors="replace"))
                    if m:
                        _stop(proc)
                        return elapsed + parse_duration(m.group(1)), "projected", None
                time.sleep(0.5)
        except BaseException:
            _stop(proc)
            raise
    return time.perf_counter() - t0, "finished", proc.returncode


def _stop(proc: subprocess.Popen) -> None:
    """Stop the step (its own process group, started by this script)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def clone(dest: Path) -> str:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return subprocess.run(["git", "-C", str(dest), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--her2st", default=str(ROOT.parent / "shared" / "data" / "her2st"),
                   help="Folder of the HER2ST sections (the README's $H).")
    p.add_argument("--only", default=None, help="Comma-separated step keys to run.")
    p.add_argument("--merge", action="store_true",
                   help="Keep the other steps' measurements from results/first_hour.json (each "
                        "row names the commit it was measured at).")
    p.add_argument("--keep", action="store_true", help="Keep the clone and its outputs.")
    p.add_argument("--no-busy", action="store_true", help="Run without the spinning process.")
    p.add_argument("--no-write", action="store_true", help="Print only; do not write results.")
    p.add_argument("--render", action="store_true",
                   help="Run nothing: rewrite results/first_hour.md from first_hour.json against "
                        "this checkout's README (e.g. after an edit moved its lines).")
    args = p.parse_args(argv)
    if args.render:
        text = report(json.loads(RESULTS_JSON.read_text()),
                      (ROOT / "README.md").read_text(encoding="utf-8"))
        RESULTS.write_text(text)
        print(text)
        return 0

    wanted = set(args.only.split(",")) if args.only else None
    if wanted and wanted & {"her2st_predict", "her2st_pool", "her2st_evaluate"}:
        wanted |= {"her2st_train", "her2st_pool"}
    if wanted and "hr_train" in wanted:
        wanted.add("simulate")
    steps = [s for s in STEPS if wanted is None or s.key in wanted]
    her2st = Path(args.her2st).resolve()
    if not (her2st / "C6.counts.tsv.gz").exists():
        print(f"no HER2ST data at {her2st}: its steps are skipped", file=sys.stderr)
        steps = [s for s in steps if not s.key.startswith("her2st")]

    scratch = Path(tempfile.mkdtemp(prefix="diffst-first-hour-"))
    commit = clone(scratch / "clone")
    work = scratch / "work"
    work.mkdir()
    readme = (scratch / "clone" / "README.md").read_text(encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("DIFFST_THREADS", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(scratch / "clone" / "src")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["H"] = str(her2st)
    env["PYTHONUNBUFFERED"] = "1"

    run = {"commit": commit, "date": time.strftime("%Y-%m-%d %H:%M"),
           "load_start": [round(x, 2) for x in os.getloadavg()], "busy": not args.no_busy}
    rows = []
    spinner = None if args.no_busy else subprocess.Popen([sys.executable, "-c", SPIN])
    t_all = time.perf_counter()
    try:
        for step in steps:
            _line, command = find_command(readme, step)
            stated, _ = stated_seconds(readme, step)
            if step.key == "quickstart":
                script = work / "quickstart.py"
                script.write_text(command)
                command = f"{Path(sys.executable)} {script.name}"
            stop_after = STOP_RATIO * stated if stated else 1800.0
            log = work / f"{step.key}.log"
            print(f"[{step.key}] {command.splitlines()[0][:100]}", flush=True)
            seconds, ended, code = run_step(command, work, env, log, stop_after, step.estimate)
            if ended == "finished" and code != 0:
                tail = log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"step {step.key} failed (exit {code}):\n{tail}")
            ratio = f", {seconds / stated:.2f}x stated" if stated else ""
            print(f"    {seconds:.0f} s ({ended}){ratio}", flush=True)
            rows.append({"key": step.key, "seconds": round(seconds, 1), "ended": ended,
                         "run": run["date"]})
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    run["minutes"] = round((time.perf_counter() - t_all) / 60, 1)
    run["load_end"] = [round(x, 2) for x in os.getloadavg()]
    runs = [run]
    if args.merge and RESULTS_JSON.exists():
        old = json.loads(RESULTS_JSON.read_text())
        fresh = {r["key"] for r in rows}
        kept = [r for r in old["rows"] if r["key"] not in fresh]
        runs += [r for r in old["runs"] if any(k["run"] == r["date"] for k in kept)]
        rows = kept + rows
    rows.sort(key=lambda r: [s.key for s in STEPS].index(r["key"]))
    data = {"runs": runs, "rows": rows}
    text = report(data, readme)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_JSON.write_text(json.dumps(data, indent=1) + "\n")
        RESULTS.write_text(text)
        print(f"wrote {RESULTS} and {RESULTS_JSON.name}")
    if args.keep:
        print(f"kept {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def report(data: dict, readme: str) -> str:
    """The Markdown table of ``data`` (runs and rows) against the times ``readme`` states."""
    def secs(x: float | None) -> str:
        if x is None:
            return "-"
        return f"{x:.0f} s" if x < 90 else f"{x / 60:.1f} min"

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    runs = "; ".join(
        f"run of {r['date']} (commit {r['commit']}, {r['minutes']} min, "
        f"{'a process spinning one core beside every step, ' if r['busy'] else ''}load average "
        f"at start {' '.join(map(str, r['load_start']))}, at end "
        f"{' '.join(map(str, r['load_end']))})" for r in data["runs"])
    lines = [
        "# First hour: the README's timed commands on a fresh clone",
        "",
        "Produced by `python benchmarks/first_hour.py` (each run from a fresh clone of the commit "
        f"named; {cores} usable cores): {runs}. Do not edit by hand: rerun the script.",
        "",
        "Installation is not timed: the clone's `src` was used with an existing environment "
        "holding diffst's dependencies (what the README's `pip install` sets up). Default "
        "threads (`DIFFST_THREADS` and `OMP_NUM_THREADS` unset). Stated: the time the README "
        f"gives at the line named; a step passes at most {LIMIT_RATIO:g}x that and is stopped at "
        f"{STOP_RATIO:g}x. Projected: the training was stopped after its printed estimate; time "
        "to that line plus the estimate. Other people's jobs shared the machine too (see the "
        "load averages).",
        "",
        "| step | README line | command | stated | measured | ratio | within 2x | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_key = {s.key: s for s in STEPS}
    for r in data["rows"]:
        step = by_key[r["key"]]
        line, command = find_command(readme, step)
        stated, stated_line = stated_seconds(readme, step)
        if step.key == "quickstart":
            command = "python (the README's block)"
        cmd = command if len(command) <= 70 else command[:67] + "..."
        measured = secs(r["seconds"]) + ("" if r["ended"] == "finished" else f" ({r['ended']})")
        ratio = None if stated is None else r["seconds"] / stated
        ok = "-" if ratio is None else ("yes" if ratio <= LIMIT_RATIO else "**no**")
        where = f"{line}" + (f" (time: {stated_line})" if stated_line and stated_line != line
                             else "")
        lines.append(f"| {step.title} | {where} | `{cmd}` | {secs(stated)} | {measured} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | {ok} | {r['run']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

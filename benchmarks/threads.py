"""How the PyTorch thread count affects training speed on this machine, idle and beside a busy
process; this is the measurement behind diffst's default thread count (``diffst.threads``).

Each configuration runs in a fresh Python process that builds a small Diff-ST model on a
simulated tissue (factor 5, 8 genes, patch 40, batch 8), takes one warm-up step and times
``--steps`` training steps. "busy" configurations first start a competing process that spins
one core until the measurement ends (it is stopped afterwards). About 2-4 minutes on 2 cores.

    python benchmarks/threads.py                 # prints a table, writes results/threads.md
    python benchmarks/threads.py --steps 2 --rounds 1 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "threads.md"
SPIN = "while True:\n    pass\n"


def child(threads: int, steps: int) -> dict:
    """Time ``steps`` training steps with ``threads`` torch threads (in this process)."""
    from diffst.threads import apply_threads

    n = apply_threads(threads)
    from diffst.data.simulate import simulate_tissue
    from diffst.model.config import DiffSTConfig
    from diffst.train import TrainConfig, Trainer

    tissue = simulate_tissue(seed=0, size_um=800.0, cell_um=8.0, n_genes=8)
    trainer = Trainer([tissue], tissue.genes, 5, DiffSTConfig(),
                      TrainConfig(steps=steps + 1, batch_size=8, lr=1e-3, patch=40, seed=0))
    trainer.train_step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    return {"threads": n, "times_s": times}


def measure(threads: int, steps: int, busy: bool) -> dict:
    """Run :func:`child` in a fresh process, with a spinning neighbour when ``busy``."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        env.pop("DIFFST_THREADS", None)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(threads), "--steps", str(steps)],
            env=env, capture_output=True, text=True, check=True, timeout=600,
        )
    finally:
        if spinner is not None:
            spinner.terminate()
            spinner.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(steps: int, rounds: int) -> str:
    """All configurations; returns the Markdown report."""
    from diffst.threads import default_threads, usable_cores

    cores = usable_cores()
    counts = sorted({1, min(2, cores), cores})
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    times: dict[tuple[bool, int], list[float]] = {}
    for round_ in range(rounds):
        for busy in (False, True):
            for n in counts:
                r = measure(n, steps, busy)
                times.setdefault((busy, n), []).extend(r["times_s"])
                print(f"round {round_ + 1}: threads {n}, {'busy' if busy else 'idle'} "
                      f"neighbour: {statistics.median(r['times_s']):.2f} s/step", flush=True)
    rows = [(busy, n, statistics.median(t)) for (busy, n), t in times.items()]
    per_round = {key: [statistics.median(t[i : i + steps]) for i in range(0, len(t), steps)]
                 for key, t in times.items()}
    base = {busy: s for busy, n, s in rows if n == 1}
    lines = [
        "### Thread count and training speed",
        "",
        f"Produced by `python benchmarks/threads.py --steps {steps} --rounds {rounds}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}; {cores} usable cores, load average at start "
        f"{' '.join(f'{x:.2f}' for x in load0)}, at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, total "
        f"{time.perf_counter() - t_start:.0f} s.",
        "",
        f"Median seconds per training step (small Diff-ST, patch 40, batch 8; {rounds} "
        f"rounds of {steps} timed steps after a warm-up, configurations interleaved); "
        "spinner: this script also runs a process spinning one core; other users' work on the "
        "machine is not controlled (see the load averages).",
        "",
        "| spinner | torch threads | s/step (median) | vs 1 thread | per round |",
        "|---|---|---|---|---|",
    ]
    for busy, n, s in rows:
        rounds_text = ", ".join(f"{x:.2f}" for x in per_round[(busy, n)])
        lines.append(f"| {'yes' if busy else 'no'} | {n} | {s:.2f} | "
                     f"{s / base[busy]:.2f}x | {rounds_text} |")
    lines += ["", f"diffst's default on this machine: {default_threads(cores)} thread(s) "
              "(usable cores - 1, at most 8; `--threads N` or `DIFFST_THREADS=N` override it)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run (or be a measuring child)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4, help="timed training steps per configuration")
    p.add_argument("--rounds", type=int, default=2, help="repeats of every configuration")
    p.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.steps)))
        return 0
    report = run(args.steps, args.rounds)
    print(report)
    if not args.no_write:
        from diffst.io.atomic import atomic_path

        with atomic_path(RESULTS) as tmp:
            Path(tmp).write_text(report)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

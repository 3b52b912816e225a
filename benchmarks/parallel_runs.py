"""Several trainings on one CPU (issue 11, speed by measurement): how `imgcls sweep --workers K` workers,
seeds run side by side, and `imgcls train --nproc K` share the cores.

Real ``imgcls train`` processes (the quickstart recipe on a Fashion-MNIST subset, one epoch, no test
evaluation), in four arrangements, their order rotated over interleaved rounds so that the shared machine's
drift hits all alike:

- ``one at a time``: K runs one after another, each with torch's default threads (all cores);
- ``K at once, cores // K threads``: K runs started together with ``OMP_NUM_THREADS = cores // K`` (what
  ``runtime/cpu_threads.py`` gives sweep workers and DDP ranks);
- ``K at once, all cores each``: K runs started together with all cores each (sweep workers before);
- ``DDP, K ranks``: one run with ``imgcls train --nproc K`` (its global batch split across the ranks).

Per arrangement: each run's training images/s (``history.csv``: training phases, validation apart), the
images/s of all its runs together, and the wall-clock seconds per finished run (start-up included).

    .venv/bin/python benchmarks/parallel_runs.py [--rounds 3] [--processes 2] [--subset 12000]
    .venv/bin/python benchmarks/parallel_runs.py --quick      # a smoke run, no speed claim
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import FMNIST_RECIPES, mean_std, quiet_run_overrides, write_results

from imgcls.runtime.cpu_threads import THREADS_ENV, usable_cpus


def train_command(out: Path, name: str, subset: int, nproc: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imgcls",
        "train",
        str(FMNIST_RECIPES["quickstart"]),
        "train.epochs=1",
        f"data.train_subset={subset}",
        f"output.name={name}",
        *quiet_run_overrides(out),
        "--no-eval",
        *(["--nproc", str(nproc)] if nproc > 1 else []),
    ]


def training_speed(out: Path, name: str) -> float:
    """Training images/s of the one run under ``out/name`` (training phases only, from history.csv)."""
    (history,) = (out / name).glob("*/history.csv")
    rows = list(csv.DictReader(history.open()))
    return sum(float(r["train_images"]) for r in rows) / sum(float(r["train_time_s"]) for r in rows)


def run_together(commands: list[list[str]], env: dict[str, str]) -> float:
    """Start ``commands`` at once and wait for all; the wall-clock seconds."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands
    ]
    for p, c in zip(procs, commands, strict=True):
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(c)} failed ({p.returncode}): {err.decode()[-2000:]}")
    return time.perf_counter() - start


def arrangements(k: int, cores: int) -> dict[str, tuple[int, int | None, bool]]:
    """name → (processes at once, OMP_NUM_THREADS or None for torch's default, DDP)."""
    return {
        "one at a time": (1, None, False),
        f"{k} at once, cores // {k} threads": (k, max(1, cores // k), False),
        f"{k} at once, all cores each": (k, cores, False),
        f"DDP, {k} ranks": (1, None, True),
    }


def measure(shape: tuple[int, int | None, bool], k: int, subset: int, work: Path) -> dict:
    at_once, threads, ddp = shape
    env = {key: v for key, v in os.environ.items() if key != THREADS_ENV}
    if threads is not None:
        env[THREADS_ENV] = str(threads)
    out = Path(tempfile.mkdtemp(dir=work))
    names = [f"run{i}" for i in range(k)]
    if ddp:  # one run, its ranks get cores // k threads each from the launcher
        wall, names = run_together([train_command(out, names[0], subset, nproc=k)], env), names[:1]
    elif at_once == 1:
        wall = sum(run_together([train_command(out, n, subset)], env) for n in names)
    else:
        wall = run_together([train_command(out, n, subset) for n in names], env)
    speeds = [training_speed(out, n) for n in names]
    per_run = sum(speeds) / len(speeds)
    return {
        "img_s_per_run": per_run,
        # runs that overlap add up; runs one after another (or one DDP run) do not
        "img_s_all": sum(speeds) if at_once > 1 else per_run,
        "wall_s_per_run": wall / len(names),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--subset", type=int, default=12000, help="training images per run (one epoch)")
    ap.add_argument("--quick", action="store_true", help="one round on 512 images: a smoke run")
    ap.add_argument("--name", default="parallel_runs")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.subset = 1, 512
    k, cores = args.processes, usable_cpus()
    shapes = arrangements(k, cores)
    results: dict[str, list[dict]] = {n: [] for n in shapes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(shapes)[r % len(shapes) :] + list(shapes)[: r % len(shapes)]
            for n in order:
                results[n].append(measure(shapes[n], k, args.subset, Path(tmp)))
                print(f"round {r + 1}: {n}: {results[n][-1]}", flush=True)
    summary = {}
    for n, rows in results.items():
        summary[n] = {key: mean_std([row[key] for row in rows]) for key in rows[0]}
    base = summary["one at a time"]["img_s_all"][0]
    lines = [
        f"{k} quickstart trainings on {cores} CPU cores ({args.subset:,} Fashion-MNIST training images, one epoch "
        f"each, `imgcls train ... --no-eval` processes), arrangements in rotated order over {args.rounds} "
        "round(s), mean ± std:",
        "",
        "| arrangement | training img/s per run | training img/s in all | wall s per finished run | in all vs one at a time |",
        "|---|---|---|---|---|",
    ]
    for n, s in summary.items():
        (ps, ps_sd), (alls, alls_sd), (wall, wall_sd) = (
            s["img_s_per_run"],
            s["img_s_all"],
            s["wall_s_per_run"],
        )
        lines.append(
            f"| {n} | {ps:,.0f} ± {ps_sd:,.0f} | {alls:,.0f} ± {alls_sd:,.0f} | {wall:.1f} ± {wall_sd:.1f} | "
            f"{alls / base:.2f}× |"
        )
    write_results(
        args.name,
        {"processes": k, "cores": cores, "subset": args.subset, "rounds": results, "summary": summary},
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()

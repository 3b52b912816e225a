"""Training under a cgroup CPU quota (issue 11, speed by measurement; ``runtime/cpu_threads.py``): a container
run with ``--cpus Q`` or a Kubernetes CPU limit lets a process use Q CPUs' worth of time, while torch starts
one thread per core of the whole machine.

A child cgroup with a quota of ``--cpus`` CPUs is made (cgroup v1 ``cpu`` or v2; needs root), and real
``imgcls train`` processes (the quickstart recipe on a Fashion-MNIST subset, one epoch, no test evaluation)
run inside it, alternately with torch's thread per core (``OMP_NUM_THREADS`` = the cores, as before) and with
imgcls's default (threads = the quota's whole CPUs), over interleaved rounds; training images/s from each
run's ``history.csv``.

    sudo .venv/bin/python benchmarks/cpu_quota.py [--cpus 1] [--rounds 3] [--subset 12000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import mean_std, write_results
from parallel_runs import train_command, training_speed

from imgcls.runtime.cpu_threads import THREADS_ENV

V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")


def make_cgroup(name: str, cpus: float) -> Path:
    """A child cgroup of the root limited to ``cpus`` CPUs; its folder (holding ``cgroup.procs``)."""
    period = 100_000
    quota = int(cpus * period)
    if (V1 / "cpu.cfs_quota_us").exists():
        group = V1 / name
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
        return group
    if (V2 / "cgroup.controllers").exists():
        (V2 / "cgroup.subtree_control").write_text("+cpu")
        group = V2 / name
        group.mkdir(exist_ok=True)
        (group / "cpu.max").write_text(f"{quota} {period}")
        return group
    raise SystemExit("no cgroup cpu controller at /sys/fs/cgroup/cpu (v1) or /sys/fs/cgroup (v2)")


def run_in(group: Path, command: list[str], env: dict[str, str]) -> None:
    def join() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))

    proc = subprocess.run(command, env=env, preexec_fn=join, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpus", type=float, default=1.0, help="the quota, in CPUs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--subset", type=int, default=12000, help="training images per run (one epoch)")
    ap.add_argument("--name", default="cpu_quota")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    try:
        group = make_cgroup("imgcls_bench_quota", args.cpus)
    except OSError as exc:
        raise SystemExit(f"cannot make a cgroup with a CPU quota ({exc}); run as root on Linux") from exc
    base_env = {k: v for k, v in os.environ.items() if k != THREADS_ENV}
    arrangements = {
        f"torch's default: a thread per core ({cores})": {**base_env, THREADS_ENV: str(cores)},
        f"imgcls's default: the quota's whole CPUs ({max(1, int(args.cpus))})": base_env,
    }
    speeds: dict[str, list[float]] = {n: [] for n in arrangements}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                names = list(arrangements)
                for name in names if r % 2 == 0 else names[::-1]:
                    out = Path(tempfile.mkdtemp(dir=tmp))
                    run_in(group, train_command(out, "run", args.subset), arrangements[name])
                    speeds[name].append(training_speed(out, "run"))
                    print(f"round {r + 1}: {name}: {speeds[name][-1]:.0f} img/s", flush=True)
    finally:
        group.rmdir()  # empty again once its processes have exited
    summary = {n: mean_std(v) for n, v in speeds.items()}
    base = next(iter(summary.values()))[0]
    lines = [
        f"The quickstart training ({args.subset:,} Fashion-MNIST images, one epoch, `imgcls train ... --no-eval`) in a "
        f"cgroup limited to {args.cpus:g} CPU(s) of this {cores}-core machine, {args.rounds} interleaved round(s), "
        "mean ± std:",
        "",
        "| threads | training img/s | vs torch's default |",
        "|---|---|---|",
        *(f"| {n} | {m:,.0f} ± {s:,.0f} | {m / base:.2f}× |" for n, (m, s) in summary.items()),
    ]
    write_results(
        args.name,
        {"cpus": args.cpus, "cores": cores, "subset": args.subset, "img_s": speeds},
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()

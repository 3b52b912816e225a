"""CPU threads when several training processes share one machine (issue 11, speed by measurement).

torch gives every process as many intra-op threads as the machine has cores. Two such processes on the
same cores (``imgcls sweep --workers 2``, two seeds run side by side) oversubscribe them: measured on the
2-core machine (``python benchmarks/parallel_runs.py``, ``benchmarks/results/parallel_runs.md``), two
concurrent trainings with two threads each trained at a fifth of the images per second of two with one
thread each (0.22× against 1.12× the images per second of running them one after another). torchrun avoids
this with ``OMP_NUM_THREADS=1`` per rank, which in turn leaves all but N cores idle on a larger machine.
Here every one of N processes started together gets ``cores // N`` threads (at least one) through
``OMP_NUM_THREADS``, which torch reads at start-up, unless the user has set ``OMP_NUM_THREADS`` already;
``train.threads`` in a config still overrides both (``runtime/precision.configure_backends``).

"Cores" are what this process may use: its CPU affinity, capped by a cgroup CPU quota (a container run with
``--cpus 2`` on a 64-core host, a Kubernetes CPU limit), which torch's default of one thread per core ignores.
Measured on the 2-core machine under a 1-CPU quota (``python benchmarks/cpu_quota.py``,
``benchmarks/results/cpu_quota.md``), torch's default two threads trained slower than the one thread the quota
allows; on a large host with a small quota the default oversubscribes far more.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from imgcls.runtime.cgroups import cgroup_folders

THREADS_ENV = "OMP_NUM_THREADS"


def usable_cpus() -> int:
    """The CPUs this process may keep busy: its affinity mask (``taskset``, cgroup cpusets), capped by the
    whole CPUs of its cgroup CPU quota (at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota()
    if quota is not None:
        cpus = min(cpus, int(quota))  # whole CPUs: a thread on a fraction of one is throttled each period
    return max(1, cpus)


def cpu_quota(proc: Path = Path("/proc/self")) -> float | None:
    """The CPUs' worth of time this process's cgroups allow per period (cgroup v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us / cpu.cfs_period_us``), the tightest along the path from its cgroup to the root of each
    mounted hierarchy; None without a limit or where cgroups cannot be read."""
    limits = [
        limit
        for version, folder in cgroup_folders("cpu", proc)
        if (limit := _cgroup_limit(folder, version)) is not None
    ]
    return min(limits) if limits else None


def _cgroup_limit(folder: Path, version: str) -> float | None:
    try:
        if version == "v2":
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def threads_per_process(processes: int) -> int:
    """Intra-op threads for each of ``processes`` processes sharing this process's CPUs (at least 1)."""
    return max(1, usable_cpus() // max(1, int(processes)))


def fit_torch_threads() -> None:
    """Lower torch's intra-op threads (a thread per core of the whole machine by default) to
    :func:`usable_cpus`, unless the user chose them with ``OMP_NUM_THREADS``; never raises them."""
    import torch

    if not _threads_chosen(os.environ) and (cpus := usable_cpus()) < torch.get_num_threads():
        torch.set_num_threads(cpus)


def shared_cpu_env(processes: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) for one of ``processes`` processes started together:
    ``OMP_NUM_THREADS`` set to :func:`threads_per_process` unless it is set already (the user's choice)."""
    env = dict(os.environ if env is None else env)
    if not _threads_chosen(env):
        env[THREADS_ENV] = str(threads_per_process(processes))
    return env


def _threads_chosen(env: Mapping[str, str]) -> bool:
    """Whether ``env`` sets ``OMP_NUM_THREADS`` (a blank value does not count)."""
    return bool(env.get(THREADS_ENV, "").strip())


@contextmanager
def shared_cpu_threads(processes: int) -> Iterator[None]:
    """Within the block, processes started from this one (e.g. by torchrun) inherit the
    :func:`shared_cpu_env` of ``processes`` processes; this process's environment is restored after."""
    before = os.environ.get(THREADS_ENV)
    os.environ.update(shared_cpu_env(processes))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = before

"""CPU threads when several training processes share one machine (issue 11, speed by measurement).

torch gives every process as many intra-op threads as the machine has cores. Two such processes on the
same cores (``imgcls sweep --workers 2``, two seeds run side by side) oversubscribe them: measured on
the 2-core machine (``python benchmarks/parallel_runs.py``, ``benchmarks/results/parallel_runs.md``), two
concurrent trainings with two threads each trained at a fifth of the images per second of two with one
thread each (0.22× against 1.12× the images per second of running them one after another). torchrun avoids this with ``OMP_NUM_THREADS=1`` per rank, which in turn leaves all but N
cores idle on a larger machine. Here every one of N processes started together gets ``cores // N``
threads (at least one) through ``OMP_NUM_THREADS``, which torch reads at start-up, unless the user has
set ``OMP_NUM_THREADS`` already; ``train.threads`` in a config still overrides both
(``runtime/precision.configure_backends``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

THREADS_ENV = "OMP_NUM_THREADS"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, so ``taskset`` and cgroup cpusets count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def threads_per_process(processes: int) -> int:
    """Intra-op threads for each of ``processes`` processes sharing this process's CPUs (at least 1)."""
    return max(1, usable_cpus() // max(1, int(processes)))


def shared_cpu_env(processes: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) for one of ``processes`` processes started together:
    ``OMP_NUM_THREADS`` set to :func:`threads_per_process` unless it is set already (the user's choice)."""
    env = dict(os.environ if env is None else env)
    if not env.get(THREADS_ENV, "").strip():
        env[THREADS_ENV] = str(threads_per_process(processes))
    return env


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

"""Process-parallel work over chunks of files, with a rich progress bar.

Used by ``imgcls data cache`` (decode + resize, one chunk file each) and ``imgcls data dedup``
(perceptual hashes). Work is cut into chunks so that a process pool amortises its start-up and
pickling, the progress bar advances per chunk, and — for the cache — a finished chunk is a unit
that an interrupted run does not redo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

from imgcls.runtime.cpu_threads import usable_cpus

T = TypeVar("T")


def default_workers() -> int:
    """One worker per CPU this process may use."""
    return usable_cpus()


@contextmanager
def _progress(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def run_chunks(
    fn: Callable[..., T],
    jobs: Sequence[tuple[Any, ...]],
    *,
    sizes: Sequence[int],
    workers: int,
    label: str,
    progress: bool = True,
    initial: int = 0,
    total: int | None = None,
) -> Iterator[tuple[int, T]]:
    """Yield ``(job index, fn(*job))`` as jobs finish (in completion order).

    ``workers=0`` runs in this process (no pool: for tests and debugging). ``sizes[k]`` is the
    number of items job ``k`` covers (the progress bar counts items: ``initial`` of ``total`` are
    already done). When a job raises, or the caller stops iterating, jobs not yet started are
    cancelled and the running ones finish before the error propagates — so every job that
    finished had its side effects completed.
    """
    total = sum(sizes) + initial if total is None else total
    with _progress(label, total, progress) as advance:
        advance(initial)
        if workers <= 0:
            for k, job in enumerate(jobs):
                result = fn(*job)
                advance(sizes[k])
                yield k, result
            return
        with ProcessPoolExecutor(max_workers=min(workers, max(1, len(jobs)))) as pool:
            pending: dict[Future, int] = {}
            queue = iter(range(len(jobs)))
            try:
                # keep at most 2 jobs per worker in flight: cancelling on error leaves little half-done
                for k in queue:
                    pending[pool.submit(fn, *jobs[k])] = k
                    if len(pending) >= 2 * workers:
                        break
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        k = pending.pop(future)
                        result = future.result()
                        advance(sizes[k])
                        yield k, result
                        nxt = next(queue, None)
                        if nxt is not None:
                            pending[pool.submit(fn, *jobs[nxt])] = nxt
            finally:
                for future in pending:
                    future.cancel()

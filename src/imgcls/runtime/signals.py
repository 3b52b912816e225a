"""Graceful stop on SIGTERM / SIGINT (preemption, ``scancel``, Kubernetes, Ctrl-C).

While :func:`graceful_stop` is active, the first SIGTERM or SIGINT only records the request: the training
loop finishes its current optimiser step, writes a checkpoint to resume from and then stops with
:class:`~imgcls.errors.TrainingInterrupted` (exit code 128 + signal: 143 / 130). A second SIGINT (Ctrl-C
pressed twice) raises ``KeyboardInterrupt`` at once. Under DDP the ranks agree on the step to stop at by
reducing the flag (:func:`imgcls.runtime.distributed.all_reduce_sum`) after every step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_requested: list[int] = []  # signal numbers received while active


def stop_requested() -> int | None:
    """The signal number of a pending stop request (None: keep going)."""
    return _requested[0] if _requested else None


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask the training loop to stop as if ``signum`` had arrived (used by tests and fault injection)."""
    if not _requested:
        _requested.append(int(signum))


def _handler(signum: int, frame) -> None:
    if signum == signal.SIGINT and _requested:
        raise KeyboardInterrupt  # the second Ctrl-C: stop now
    request_stop(signum)


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Install the handlers for the duration of a ``with`` block (only possible in the main thread)."""
    _requested.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _requested.clear()

"""Graceful stop on SIGTERM / SIGINT / SIGHUP (preemption, ``scancel``, Kubernetes, Ctrl-C, a closed terminal).

While :func:`graceful_stop` is active, the first SIGTERM, SIGINT or SIGHUP only records the request: the training
loop finishes its current optimiser step, writes a checkpoint to resume from and then stops with
:class:`~imgcls.errors.TrainingInterrupted` (exit code 128 + signal: 143 / 130 / 129). A second SIGINT (Ctrl-C
pressed twice) raises ``KeyboardInterrupt`` at once. Under DDP the ranks agree on the step to stop at by
reducing the flag (:func:`imgcls.runtime.distributed.all_reduce_sum`) after every step.

After training, :func:`signals_stop_final_evaluation` makes the same signals stop the test-set evaluation at once
(there is no step to finish) with a :class:`~imgcls.errors.TrainingInterrupted` saying where the trained run is.
``imgcls.api.train`` enters it inside :func:`graceful_stop`, so there is no instant between the two without a handler.
:func:`graceful_stop` nests: a sweep worker holds it for its whole run, around each trial's ``api.train``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgcls.errors import TrainingInterrupted

_requested: list[int] = []  # signal numbers received while active

#: set in the environment of child processes whose interruption their parent reports in one line of its own
#: (``imgcls sweep --workers K``'s local workers); such a child exits with the same code but prints nothing
QUIET_INTERRUPTION_ENV = "IMGCLS_QUIET_INTERRUPTION"

#: the signals that stop a run gracefully: SIGTERM (preemption, kill), SIGINT (Ctrl-C), SIGHUP (the terminal or ssh
#: session closed); not on Windows, which has no SIGHUP
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


def active_stop_signals() -> tuple[int, ...]:
    """:data:`STOP_SIGNALS` less a SIGHUP the process was started to ignore (``nohup imgcls train …``)."""
    hup = getattr(signal, "SIGHUP", None)
    return tuple(s for s in STOP_SIGNALS if not (s == hup and signal.getsignal(s) == signal.SIG_IGN))


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


_depth = 0  # graceful_stop blocks open in the main thread (a sweep's worker holds one around api.train's)


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """Install the handlers for the duration of a ``with`` block (only possible in the main thread).

    Nestable: the outermost block starts with no request and clears it on exit; an inner one (``api.train``
    inside a sweep's worker) keeps a request that arrived before it (e.g. during a trial's data setup) and
    leaves one it received for the outer block to act on."""
    global _depth
    if _depth == 0:
        _requested.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _depth == 0
    previous = {s: signal.signal(s, _handler) for s in active_stop_signals()}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for s, h in previous.items():
            signal.signal(s, h)
        if outermost:
            _requested.clear()


class FinalEvaluationSignal(BaseException):
    """SIGTERM/SIGINT during the final evaluation (a BaseException: no ``except Exception`` may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signals_stop_final_evaluation(run_dir: Path) -> Iterator[None]:
    """SIGTERM/SIGINT after training stop the test-set evaluation at once (training is complete and saved, so
    there is no step to finish): a :class:`TrainingInterrupted` with exit code 128 + signal says so."""

    previous: dict[int, Any] = {}
    active = True

    def stop(signum: int, frame) -> None:
        nonlocal active
        if not active:  # the evaluation has just finished: nothing left to stop
            return
        active = False
        for s, handler in previous.items():  # a second signal acts as it would without this handler
            signal.signal(s, handler)
        raise FinalEvaluationSignal(signum)

    if threading.current_thread() is threading.main_thread():
        for s in active_stop_signals():
            previous[s] = signal.signal(s, stop)
    try:
        yield
    except FinalEvaluationSignal as exc:
        raise TrainingInterrupted(  # printed by the CLI as "interrupted: stopped by SIGTERM during ..."
            f"stopped by {signal.Signals(exc.signum).name} during the final evaluation; training finished and its "
            f"checkpoint is saved in {run_dir}; evaluate it with `imgcls evaluate {run_dir}`",
            128 + exc.signum,
        ) from None
    finally:
        active = False
        for s, handler in previous.items():
            signal.signal(s, handler)

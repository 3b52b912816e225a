"""One process at a time trains a run folder: an advisory ``flock`` on ``RUN_DIR/.lock``.

Two ``imgcls train --resume RUN_DIR`` started side by side would both train the rest of the run, each deleting the
other's half-written temporary checkpoint files at start-up and replacing the other's ``last.pt``. The lock makes
the second one stop at once with one line naming the first one's PID. The kernel drops a ``flock`` when its
process ends, however it ends (kill -9 included), so a crashed run never leaves a stale lock behind. Where
``fcntl`` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from imgcls.errors import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold_run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block; a :class:`CheckpointError` when another process holds it."""
    if fcntl is None:
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CheckpointError(
                f"run '{run_dir}' is being trained by another process (PID {holder}); wait for it to finish, or stop "
                "it (its state is saved) and run the command again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

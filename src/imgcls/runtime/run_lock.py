"""One process at a time trains a run folder: an advisory ``flock`` on ``RUN_DIR/.lock``.

Two ``imgcls train --resume RUN_DIR`` started side by side would both train the rest of the run, each deleting the
other's half-written temporary checkpoint files at start-up and replacing the other's ``last.pt``. The lock makes
the second one stop at once with one line naming the first one's PID. The kernel drops a ``flock`` when its
process ends, however it ends (kill -9 included), so a crashed run never leaves a stale lock behind. Where
``fcntl`` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from imgcls.errors import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".lock"

log = logging.getLogger(__name__)


@contextlib.contextmanager
def hold_run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the ``with`` block; a :class:`CheckpointError` when another process holds it."""
    if fcntl is None:
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # a read-only run folder: the run's own writes say so next, in one line
        log.debug("no run lock in %s: %s", run_dir, exc)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CheckpointError(
                f"run '{run_dir}' is being trained by another process (PID {holder}); wait for it to finish, or stop "
                "it (its state is saved) and run the command again"
            ) from None
        except OSError as exc:  # a file system without flock (some network mounts: ENOLCK, EOPNOTSUPP)
            log.warning(
                "warning: cannot lock '%s' (%s); nothing stops a second process training this run", path, exc
            )
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

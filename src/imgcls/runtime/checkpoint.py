"""Self-describing checkpoints, written atomically and read safely.

A checkpoint holds weights, the resolved config, class names, taxonomy, preprocessing, metrics,
library versions and (for ``last.pt``) everything needed to resume exactly: optimiser,
scheduler, scaler, progress counters and callback states. It is written to a temporary file
in the same folder, flushed to disk and renamed over the old one, so an interrupted write
leaves the previous checkpoint intact. Loading uses ``torch.load(weights_only=True)``:
nothing in a checkpoint can execute code. ``model.safetensors`` holds inference weights.
"""

from __future__ import annotations

import errno
import functools
import os
import pickle
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from imgcls.errors import CheckpointError

FORMAT = "imgcls-checkpoint/1"


def versions() -> dict[str, str]:
    import timm

    import imgcls

    return {
        "imgcls": imgcls.__version__,
        "torch": str(torch.__version__),
        "timm": str(timm.__version__),
        "python": platform.python_version(),
    }


#: errno values meaning "the disk (or the user's quota) is full"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@functools.cache
def _file_mode() -> int:
    """The mode ``open()`` gives new files under the process umask (mkstemp would give 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space (torch's zip writer and safetensors hide the errno in their message)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return True
    text = str(exc).lower()
    return isinstance(exc, Exception) and (
        "no space left" in text or "file write failed" in text or "quota exceeded" in text
    )


def disk_full_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"no space left on device at {path}; the previous checkpoint is intact "
        "(free some space, then resume with `imgcls train --resume RUN_DIR`)"
    )


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a temporary file + fsync + rename (a full disk: a one-line error)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _file_mode())
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete temporary files (``.<name>.*.tmp``) left behind by a checkpoint write that was killed."""
    directory = Path(directory)
    stale = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _is_refused_pickle(exc: Exception) -> bool:
    return isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower()


def check_plain_tensor_file(path: str | Path, what: str) -> None:
    """Refuse weights files that are not plain tensors (a pickle holding code) before anyone loads them."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as fh:
                fh.keys()
        except Exception as exc:
            raise CheckpointError(
                f"{what} '{path}' is not a readable safetensors file ({type(exc).__name__})"
            ) from None
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if _is_refused_pickle(exc):
            raise CheckpointError(
                f"{what} '{path}' refused as unsafe: not a plain-tensor checkpoint (its pickle holds Python objects "
                "that could run code when loaded); convert it to .safetensors where you trust it"
            ) from None
        raise CheckpointError(
            f"{what} '{path}' is unreadable ({type(exc).__name__}); it may be truncated"
        ) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or unsafe pickles all land here
        if _is_refused_pickle(exc):
            raise CheckpointError(
                f"checkpoint '{path}' refused: not a plain-tensor checkpoint (it holds Python objects that could run "
                "code when loaded); only imgcls checkpoints are loaded"
            ) from None
        raise CheckpointError(
            f"checkpoint '{path}' is unreadable ({type(exc).__name__}); it may be truncated or not an imgcls checkpoint"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not an imgcls checkpoint (format {FORMAT})")
    return ckpt


def save_safetensors(
    state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Inference weights as safetensors (shared tensors are cloned, as the format requires)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise

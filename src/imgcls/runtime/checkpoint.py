"""Self-describing checkpoints, written atomically and read safely.

A checkpoint holds weights, the resolved config, class names, taxonomy, preprocessing, metrics,
library versions and (for ``last.pt``) everything needed to resume exactly: optimiser,
scheduler, scaler, progress counters and callback states. It is written to a temporary file
in the same folder, flushed to disk and renamed over the old one, so an interrupted write
leaves the previous checkpoint intact. Loading uses ``torch.load(weights_only=True)``:
nothing in a checkpoint can execute code. ``model.safetensors`` holds inference weights.
"""

from __future__ import annotations

import os
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

    return {"imgcls": imgcls.__version__, "torch": str(torch.__version__), "timm": str(timm.__version__), "python": platform.python_version()}


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a temporary file + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or unsafe pickles all land here
        raise CheckpointError(f"checkpoint '{path}' is unreadable ({type(exc).__name__}); it may be truncated or not an imgcls checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not an imgcls checkpoint (format {FORMAT})")
    return ckpt


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Inference weights as safetensors (shared tensors are cloned, as the format requires)."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)

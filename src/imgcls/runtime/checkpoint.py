"""Self-describing checkpoints, written atomically and read safely.

A checkpoint holds weights, the resolved config, class names, taxonomy, preprocessing, metrics,
library versions and (for ``last.pt``) everything needed to resume exactly: optimiser,
scheduler, scaler, progress counters and callback states. It is written to a temporary file
in the same folder, flushed to disk and renamed over the old one, so an interrupted write
leaves the previous checkpoint intact, with the umask's normal file mode. Loading uses
``torch.load(weights_only=True)``: nothing in a checkpoint can execute code; a damaged file and one
holding Python objects are told apart, and :func:`load_checkpoint` checks in one place that the
payload holds what the loaders need (weights, a config that still validates, class names,
preprocessing; for ``--resume`` the optimiser state too), each problem one line naming the file.
``model.safetensors`` holds inference weights; :func:`check_plain_tensor_file` vets weights files
(``pretrained_file``) before timm loads them.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import pickle
import platform
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import save as safetensors_bytes

from imgcls.config import build_config
from imgcls.errors import CheckpointError, UserError

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
    """A write failed for want of space, anywhere in the exception's chain: torch's zip writer and safetensors
    hide the errno in their message, and torch's writer, closing after an ENOSPC, raises a RuntimeError of its
    own ("unexpected pos") whose ``__context__`` is the OSError."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno in DISK_FULL:
            return True
        text = str(link).lower()
        if isinstance(link, Exception) and (
            "no space left" in text or "file write failed" in text or "quota exceeded" in text
        ):
            return True
        link = link.__cause__ or link.__context__
    return False


def disk_full_error(path: Path) -> CheckpointError:
    path = Path(path)
    then = (
        f"free some space, then resume with `imgcls train --resume {path.parent.parent}`"
        if path.parent.name == "checkpoints"
        else "free some space and run the command again"
    )
    return CheckpointError(f"no space left on device at {path}; the file it replaces is intact ({then})")


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(fh)`` into a temporary file in ``path``'s folder, fsync, rename over ``path``.

    The temporary file gets the umask's normal mode (``mkstemp`` would leave 0600), so the result reads like any
    file the user writes; an interrupted write leaves the old ``path`` intact and a full disk is one line.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _file_mode())
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) written to ``path`` atomically: a kill mid-write leaves the old file, never a torn one."""
    _atomic_write(Path(path), lambda fh: fh.write(text.encode()))


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` via a temporary file + fsync + rename (a full disk: a one-line error)."""
    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete temporary files (``.<name>.*.tmp``) left behind by a checkpoint write that was killed."""
    directory = Path(directory)
    stale = sorted(directory.glob(".*.tmp")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class UnusableCheckpoint(CheckpointError):
    """A checkpoint or weights file that cannot be used; ``problem`` says why without the advice, for a caller
    that falls back to another file (``--resume`` skipping a damaged ``recovery.pt``)."""

    def __init__(self, what: str, path: Path, problem: str, advice: str) -> None:
        super().__init__(f"{what} '{path}' {problem}; {advice}")
        self.path, self.problem = path, problem


#: how torch's weights-only unpickler words "a Python object other than tensors and plain containers"
_UNSAFE_MARKERS = (
    "unsupported global",
    "can only create new object",
    "trying to call reduce",
    "can only build tensor",
)

#: advice for a damaged run checkpoint (an interrupted save never replaces one, so it was damaged afterwards)
_DAMAGED_ADVICE = (
    "copy it again from where it came from, or use the run's other checkpoint (--checkpoint best|last)"
)


def _damage(path: Path, exc: BaseException) -> str:
    """What is wrong with a file ``torch.load`` could not read, in a few words."""
    if isinstance(exc, OSError):
        return f"it cannot be read ({exc.strerror or type(exc).__name__})"
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with path.open("rb") as fh:
        head = fh.read(512)
    if zipfile.is_zipfile(path):
        return "a zip archive that is not a torch checkpoint (or one damaged inside)"
    if head.startswith(b"PK\x03\x04"):
        return f"it is truncated ({size} bytes: the zip archive torch writes is cut short)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it is a bare Python pickle (or a damaged old-format torch file), not a torch checkpoint"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "its bytes are not a torch checkpoint (random or damaged data)"
    return "it is a text file, not a torch checkpoint"


def _unsafe_objects(path: Path) -> str:
    """The non-tensor globals a pickle names (read without running it), for the refusal message."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        names = []
    more = f" +{len(names) - 3} more" if len(names) > 3 else ""
    return f" ({', '.join(names[:3])}{more})" if names else ""


def _absent(path: Path) -> str:
    return "is not a file" if path.exists() else "does not exist"


def _read(path: Path, what: str, refused: str, resave: str, damaged: str, missing: str) -> Any:
    """``torch.load(weights_only=True)``; a damaged file and a file holding Python objects get different lines."""
    if not path.is_file():
        raise UnusableCheckpoint(what, path, _absent(path), missing)
    try:
        with warnings.catch_warnings():  # torch warns about a pickle protocol before refusing a bare pickle
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and any(m in str(exc).lower() for m in _UNSAFE_MARKERS):
            problem = (
                f"{refused}: not a plain-tensor checkpoint, it contains Python objects that are not plain "
                f"tensors/containers{_unsafe_objects(path)}, unsafe to load"
            )
            raise UnusableCheckpoint(what, path, problem, resave) from None
        raise UnusableCheckpoint(
            what, path, f"is corrupt or unreadable: {_damage(path, exc)}", damaged
        ) from None


def _tensor_dicts(obj: Any) -> bool:
    """``obj`` is a state_dict, possibly nested (``{"state_dict": {...}, "epoch": 3}`` as training scripts save)."""
    return isinstance(obj, dict) and any(
        isinstance(v, torch.Tensor) or (isinstance(v, dict) and _tensor_dicts(v)) for v in obj.values()
    )


def check_plain_tensor_file(path: str | Path, what: str) -> None:
    """Refuse a weights file that is missing, damaged, holds Python objects (a pickle that could run code) or
    holds no tensors, before anyone (timm) loads it."""
    path = Path(path)
    advice = f"download or copy the weights again (.safetensors preferred), or leave {what} unset"
    if not path.is_file():
        raise UnusableCheckpoint(what, path, _absent(path), f"check the path; {advice}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as fh:
                fh.keys()
        except Exception as exc:
            detail = (
                "the file is empty (0 bytes)" if path.stat().st_size == 0 else str(exc).splitlines()[0][:120]
            )
            raise UnusableCheckpoint(
                what, path, f"is corrupt or unreadable: not a valid safetensors file ({detail})", advice
            ) from None
        return
    weights = _read(
        path,
        what,
        "refused as unsafe",
        "re-save its tensors with safetensors.torch.save_file(state_dict, 'weights.safetensors') where you "
        "trust its source",
        advice,
        f"check the path; {advice}",
    )
    if not _tensor_dicts(weights):
        kind = type(weights).__name__
        raise UnusableCheckpoint(what, path, f"holds a {kind} without tensors, not a state_dict", advice)


#: what every imgcls checkpoint holds (best.pt, last.pt, epoch_N.pt, recovery.pt), with each entry's type
REQUIRED: dict[str, type] = {"model": dict, "config": dict, "class_names": list, "preprocess": dict}
#: what a checkpoint to resume from holds besides (last.pt, recovery.pt)
RESUMABLE: dict[str, type] = {"progress": dict, "optimizer": dict, "scheduler": dict, "scaler": dict}
PREPROCESS_KEYS = ("channels", "image_size", "mean", "std")
PROGRESS_KEYS = ("stage", "epoch_in_stage", "global_epoch", "step")


def _describe_foreign(ckpt: Any) -> str | None:
    """Why a loaded object is not an imgcls checkpoint at all (None when it claims to be one)."""
    if not isinstance(ckpt, dict):
        return f"is not an imgcls checkpoint: it holds a {type(ckpt).__name__}, not the dict imgcls writes"
    if ckpt.get("format") == FORMAT:
        return None
    if "format" in ckpt:
        return f"has format {ckpt['format']!r}, this imgcls reads {FORMAT!r}"
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return (
            f"is a bare state_dict ({len(ckpt)} tensor(s)), not an imgcls checkpoint: it has no config, class "
            "names or preprocessing to rebuild the model from (bare weights belong in model.pretrained_file or "
            "distill.pretrained_file)"
        )
    keys = ", ".join(map(str, list(ckpt)[:5])) or "none"
    return f"is not an imgcls checkpoint (no format {FORMAT!r}; its keys: {keys})"


def _describe_preprocess(pre: dict[str, Any]) -> str | None:
    """What is wrong with the preprocessing a checkpoint records (None: channels and size are positive
    integers, mean/std one finite number per channel, std positive)."""
    channels, size = pre["channels"], pre["image_size"]
    for key, value in (("channels", channels), ("image_size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"has {key}={value!r}, not a positive integer"
    for key in ("mean", "std"):
        values = pre[key]
        if (
            not isinstance(values, (list, tuple))
            or len(values) != channels
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
            )
            or (key == "std" and not all(v > 0 for v in values))
        ):
            return (
                f"has {key}={values!r}, not {channels} finite number(s){' above 0' if key == 'std' else ''}"
            )
    return None


def _describe_weights(weights: dict[str, torch.Tensor]) -> str | None:
    """A model's weights are floating point (integer buffers such as BatchNorm's counter aside): a checkpoint
    whose tensors were all cast to integers would predict nonsense silently. (NaN/inf weights are refused where
    the model is built, ``evaluation.evaluate.require_finite_weights``, EMA/SWA weights included.)"""
    if not any(v.is_floating_point() for v in weights.values()):
        return "holds no floating-point weights (were they cast to integers?)"
    return None


def _describe_gap(ckpt: dict[str, Any], resumable: bool) -> str | None:
    """The first missing or mistyped part of an imgcls checkpoint (None when it has all a loader needs)."""
    wanted = {**REQUIRED, **(RESUMABLE if resumable else {})}
    missing = [k for k in wanted if k not in ckpt]
    if missing:
        return f"is incomplete: it has no {', '.join(repr(k) for k in missing)}" + (
            " (it is not a checkpoint to resume from: only last.pt and recovery.pt are)" if resumable else ""
        )
    for key, kind in wanted.items():
        if not isinstance(ckpt[key], kind):
            return f"is damaged: its {key!r} is a {type(ckpt[key]).__name__}, not a {kind.__name__}"
    if not ckpt["model"]:
        return "is damaged: its 'model' holds no tensors"
    bad = next((k for k, v in ckpt["model"].items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        return f"is damaged: its 'model' entry {bad!r} is a {type(ckpt['model'][bad]).__name__}, not a tensor"
    extra = ckpt.get("extra_weights") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
        return "is damaged: its 'extra_weights' (EMA/SWA) is not a dict of state_dicts"
    if not ckpt["class_names"] or not all(isinstance(c, str) for c in ckpt["class_names"]):
        return "is damaged: its 'class_names' is not a non-empty list of names"
    absent = [k for k in PREPROCESS_KEYS if k not in ckpt["preprocess"]]
    if absent:
        return f"is incomplete: its 'preprocess' has no {', '.join(repr(k) for k in absent)}"
    problem = _describe_preprocess(ckpt["preprocess"])
    if problem is not None:
        return f"is damaged: its 'preprocess' {problem}"
    problem = _describe_weights(ckpt["model"])
    if problem is not None:
        return f"is damaged: its 'model' {problem}"
    progress = ckpt.get("progress", {})
    if not isinstance(progress, dict):
        return f"is damaged: its 'progress' is a {type(progress).__name__}, not a dict"
    needed = PROGRESS_KEYS if resumable else ()
    absent = [k for k in needed if k not in progress]
    wrong = [k for k in PROGRESS_KEYS if k in progress and not isinstance(progress[k], int)]
    if absent or wrong:
        return f"is damaged: its 'progress' lacks or mistypes {', '.join(repr(k) for k in absent + wrong)}"
    return None


def _describe_config(ckpt: dict[str, Any]) -> str | None:
    """Why the checkpoint's own config does not validate any more (None when it does)."""
    try:
        build_config(ckpt["config"])
    except UserError as exc:
        written = ckpt.get("versions")
        version = written.get("imgcls") if isinstance(written, dict) else None
        return (
            f"holds a config that no longer validates ({exc}); it was written by imgcls "
            f"{version or 'of an unknown version'}"
        )
    return None


def load_checkpoint(path: str | Path, *, what: str = "checkpoint", resumable: bool = False) -> dict[str, Any]:
    """Read an imgcls checkpoint safely and check, in this one place, that it holds everything a loader needs
    (``resumable``: also the optimiser, scheduler, scaler and progress ``--resume`` restores). Every problem is an
    :class:`UnusableCheckpoint` naming the file, what is wrong and what to do."""
    path = Path(path)
    resave = (
        "re-save it with torch.save of tensors, dicts and lists only (as imgcls train writes checkpoints) "
        "where you trust its source"
    )
    missing = "check the path; a run has checkpoints/last.pt and best.pt once its first epoch is done"
    ckpt = _read(path, what, "refused", resave, _DAMAGED_ADVICE, missing)
    problem = _describe_foreign(ckpt)
    if problem is not None:
        raise UnusableCheckpoint(
            what, path, problem, "pass checkpoints/best.pt or last.pt of a run trained by imgcls train"
        )
    problem = _describe_gap(ckpt, resumable)
    if problem is not None:
        raise UnusableCheckpoint(what, path, problem, _DAMAGED_ADVICE)
    problem = _describe_config(ckpt)
    if problem is not None:
        raise UnusableCheckpoint(
            what, path, problem, "evaluate it with that version of imgcls, or retrain the run"
        )
    return ckpt


_SIZE_MISMATCH = re.compile(
    r"size mismatch for ([^:\s]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[[^\]]*\])\)"
)
_KEY_LIST = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: ((?:\"[^\"]*\"(?:, )?)+)")


def describe_load_error(exc: BaseException) -> str | None:
    """One line from ``load_state_dict``'s multi-line RuntimeError: the first mis-shaped key with both shapes,
    else the missing/unexpected keys; None when ``exc`` is not such an error."""
    text = str(exc)
    sizes = _SIZE_MISMATCH.findall(text)
    if sizes:
        key, file_shape, model_shape = sizes[0]
        more = f" (+{len(sizes) - 1} more)" if len(sizes) > 1 else ""
        return f"wrong shape: {key} is {file_shape} in the file, {model_shape} in the model{more}"
    parts = []
    for label, keys in _KEY_LIST.findall(text):
        names = re.findall(r"\"([^\"]*)\"", keys)
        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
        parts.append(f"{label.lower()}: {', '.join(names[:3])}{more}")
    return "; ".join(parts) or None


def save_safetensors(
    state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Inference weights as safetensors (shared tensors are cloned, as the format requires), written atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    _atomic_write(Path(path), lambda fh: fh.write(safetensors_bytes(tensors, metadata=metadata)))

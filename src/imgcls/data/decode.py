"""Decoding image files: a torch Dataset that reads, converts and resizes images, skipping unreadable ones.

Used twice: to load a whole ImageFolder tree into memory once (decoded in parallel by
DataLoader workers), and to stream trees too large for memory during training. Before either,
:func:`screen_files` reads every file's header (no pixels) so that empty, garbage and
decompression-bomb files are dropped before training, and :func:`probe_size` derives the image size
from headers only. An image whose header claims more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is
unreadable here (Pillow itself only warns below twice that limit): it is never decoded into memory.
EXIF orientation tags are not applied: pixels are used as stored, as torchvision's and timm's loaders do.
"""

from __future__ import annotations

import logging
import re
import statistics
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

_BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


#: the smallest image side a derived ``data.image_size`` may have
MIN_IMAGE_SIZE = 8
#: at most this many evenly spread files are opened to derive the image size
SIZE_SAMPLE = 256

#: Pillow modes of single-channel images deeper than 8 bits (16-bit PNG/TIFF, 32-bit integer, float)
DEEP_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def to_8bit_gray(img: Image.Image) -> Image.Image:
    """A deep grayscale image as 8-bit ``L``, scaled by its value range (Pillow's own ``convert("L")``
    clips 16-bit values at 255, which turns most 16-bit images into {0, 255}).

    16-bit modes map 0..65535 linearly onto 0..255 (÷ 257); 32-bit integer images the same when their
    values fit in 16 bits (and pass through when they fit in 8); float images in [0, 1] are × 255;
    anything else is min–max scaled."""
    array = np.asarray(img).astype(np.float64)
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        scaled = array / 257.0
    elif img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = array * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = array
    elif img.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        scaled = array / 257.0
    else:
        scaled = (array - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(array)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def check_pixel_count(img: Image.Image) -> None:
    """Refuse an image whose header claims no pixels or more than ``Image.MAX_IMAGE_PIXELS`` (a
    decompression bomb; Pillow raises only above twice the limit and merely warns below it)."""
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ValueError(f"the header claims {width}x{height} pixels")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise Image.DecompressionBombError(
            f"{width}x{height} pixels exceed Image.MAX_IMAGE_PIXELS ({limit}), a possible decompression bomb"
        )


def read_header(path: str) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding pixels; raises one of the errors of an
    unreadable image (also for a decompression bomb, see :func:`check_pixel_count`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            check_pixel_count(img)
            return img.size


def decode_image(path: str, size: int | None, channels: int) -> torch.Tensor:
    """Read one image file as a uint8 ``(channels, size, size)`` tensor (bilinear resize)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            check_pixel_count(img)
            if img.mode in DEEP_GRAY_MODES:
                img = to_8bit_gray(img)
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def describe_decode_error(exc: BaseException) -> str:
    """One line saying why a file could not be decoded (without PIL's in-memory file object repr)."""
    if isinstance(exc, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image file PIL can identify"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


class FileImages(torch.utils.data.Dataset):
    """Image files decoded on access; unreadable files yield ``None`` (filtered by :func:`collate_skip`)."""

    def __init__(self, files: list[str], labels: torch.Tensor, size: int | None, channels: int) -> None:
        self.files, self.labels, self.size, self.channels = files, labels, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | tuple[None, int, int]:
        try:
            return decode_image(self.files[i], self.size, self.channels), int(self.labels[i]), i
        except _BAD_IMAGE_ERRORS:
            return None, int(self.labels[i]), i


def collate_skip(items: list) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, list[int]]:
    """Stack decodable items; also return the indices of the unreadable ones."""
    good = [it for it in items if it[0] is not None]
    bad = [it[2] for it in items if it[0] is None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), bad
    images = torch.stack([it[0] for it in good])
    return images, torch.tensor([it[1] for it in good]), torch.tensor([it[2] for it in good]), bad


class _Headers(torch.utils.data.Dataset):
    """The reason each file's header cannot be read (None when it can); read by DataLoader workers."""

    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> str | None:
        try:
            read_header(self.files[i])
        except _BAD_IMAGE_ERRORS as exc:
            return describe_decode_error(exc)
        return None


def screen_files(files: list[str], workers: int = 0) -> dict[int, str]:
    """Open every file's header (no pixels are decoded; ``workers`` processes): the index → reason of the
    files that cannot be read (empty, not an image, a broken link, a decompression bomb)."""
    loader = torch.utils.data.DataLoader(
        _Headers(files), batch_size=512, num_workers=workers, collate_fn=list
    )
    bad, start = {}, 0
    for reasons in loader:
        bad.update((start + k, r) for k, r in enumerate(reasons) if r is not None)
        start += len(reasons)
    return bad


def unreadable_reason(path: str) -> str:
    """Why ``path`` cannot be decoded (one line), or a note that it now can."""
    try:
        decode_image(path, None, 1)
    except _BAD_IMAGE_ERRORS as exc:
        return describe_decode_error(exc)
    return "readable now"


def _spread(count: int, sample: int) -> list[int]:
    """At most ``sample`` indices evenly spread over ``range(count)`` (first and last included)."""
    n = min(sample, count)
    return sorted({round(k * (count - 1) / max(n - 1, 1)) for k in range(n)})


def probe_size(files: list[str], sample: int = SIZE_SAMPLE) -> int:
    """The median shorter side of (at most ``sample``, evenly spread) images, read from their headers only;
    below :data:`MIN_IMAGE_SIZE` pixels is an error (set ``data.image_size`` to upscale on purpose)."""
    from imgcls.errors import DataError

    picks = _spread(len(files), sample)
    sides: list[tuple[int, str]] = []
    for i in picks:
        try:
            sides.append((min(read_header(files[i])), files[i]))
        except _BAD_IMAGE_ERRORS:
            continue
    if not sides:
        raise DataError(
            f"none of the {len(picks)} sampled training images could be read (first: {files[0] if files else '-'}); "
            "check the files, or set data.image_size"
        )
    size = statistics.median_low(side for side, _ in sides)
    if size < MIN_IMAGE_SIZE:
        example = min(sides)[1]
        raise DataError(
            f"the training images are too small: their median shorter side is {size} px over {len(sides)} sampled "
            f"images (e.g. '{example}'), below the {MIN_IMAGE_SIZE} px minimum; use larger images, or set "
            f"data.image_size={MIN_IMAGE_SIZE} or more to upscale them"
        )
    return size


def probe_channels(files: list[str], sample: int = SIZE_SAMPLE) -> int:
    """3 when any of (at most ``sample``, evenly spread) images is in colour, 1 when all readable ones are grey
    (``L``, ``LA``, ``1``, 16-bit and float modes), read from their headers only; one grey file that happens to
    sort first does not make a colour data set grey. ``data.channels`` overrides it."""
    grey = colour = 0
    for i in _spread(len(files), sample):
        try:
            with Image.open(files[i]) as img:
                is_grey = img.mode in ("L", "LA", "1", *DEEP_GRAY_MODES)
        except _BAD_IMAGE_ERRORS:
            continue
        grey, colour = grey + is_grey, colour + (not is_grey)
    channels = 3 if colour or not grey else 1
    log.info(
        "data: %d channel(s): %d colour and %d grey image(s) among %d sampled headers (set data.channels to force)",
        channels,
        colour,
        grey,
        grey + colour,
    )
    return channels


def load_files_into_memory(
    files: list[str], labels: torch.Tensor, size: int, channels: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every file once into a uint8 tensor; returns (images, labels, skipped files)."""
    dataset = FileImages(files, labels, size, channels)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=256, num_workers=workers, collate_fn=collate_skip
    )
    images, kept_labels, skipped = [], [], []
    for batch_images, batch_labels, _, bad in loader:
        skipped += [files[i] for i in bad]
        if batch_images is not None:
            images.append(batch_images)
            kept_labels.append(batch_labels)
    if not images:
        from imgcls.errors import DataError

        raise DataError(
            f"none of the {len(files)} image files could be read (first: {files[0] if files else '-'})"
        )
    return torch.cat(images), torch.cat(kept_labels), skipped


#: unreadable files already named in a warning by this process (so that a run warns about each file once)
_ANNOUNCED: set[str] = set()


def warn_skipped(skipped: list[str] | set[str], where: str = "") -> None:
    """ONE warning for all ``skipped`` files not announced before: their count and an example path."""
    new = sorted(set(skipped) - _ANNOUNCED)
    if new:
        _ANNOUNCED.update(new)
        log.warning(
            "warning: skipped %d unreadable image file(s)%s, e.g. %s; a run lists them all in skipped_files.txt",
            len(new),
            where,
            new[0],
        )


def _escape_line(path: str) -> str:
    """One line per path in ``skipped_files.txt``: a backslash, newline or carriage return in a file name is
    written as ``\\``, ``\\n``, ``\\r`` (so a name with a newline stays one entry)."""
    return path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _unescape_line(line: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), line)


def record_skipped_files(run_dir: Path, skipped: set[str] | list[str]) -> list[str]:
    """Add ``skipped`` (unreadable image files) to the run's ``skipped_files.txt``, one per line, warn once
    about the new ones (not about those :func:`warn_skipped` has named already), and return the whole list."""
    path = Path(run_dir) / "skipped_files.txt"
    before = (
        {_unescape_line(line) for line in path.read_text().split("\n") if line} if path.is_file() else set()
    )
    new = sorted(set(skipped) - before)
    if new:
        path.write_text("".join(_escape_line(f) + "\n" for f in sorted(before | set(skipped))))
        unannounced = [f for f in new if f not in _ANNOUNCED]
        _ANNOUNCED.update(new)
        (log.warning if unannounced else log.info)(
            "%sskipped %d unreadable image file(s), e.g. %s; all are listed in %s",
            "warning: " if unannounced else "",
            len(unannounced or new),
            (unannounced or new)[0],
            path,
        )
    return sorted(before | set(skipped))

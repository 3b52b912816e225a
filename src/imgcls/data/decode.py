"""Decoding image files: a torch Dataset that reads, converts and resizes images, skipping unreadable ones.

Used twice: to load a whole ImageFolder tree into memory once (decoded in parallel by
DataLoader workers), and to stream trees too large for memory during training.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

_BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_image(path: str, size: int | None, channels: int) -> torch.Tensor:
    """Read one image file as a uint8 ``(channels, size, size)`` tensor (bilinear resize)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
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


def probe_channels(files: list[str]) -> int:
    """1 when the first readable image is single-channel, else 3."""
    for path in files[:20]:
        try:
            with Image.open(path) as img:
                return 1 if img.mode in ("L", "1", "I", "I;16", "F") else 3
        except _BAD_IMAGE_ERRORS:
            continue
    return 3


def load_files_into_memory(
    files: list[str], labels: torch.Tensor, size: int, channels: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every file once into a uint8 tensor; returns (images, labels, skipped files)."""
    dataset = FileImages(files, labels, size, channels)
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=workers, collate_fn=collate_skip)
    images, kept_labels, skipped = [], [], []
    for batch_images, batch_labels, _, bad in loader:
        skipped += [files[i] for i in bad]
        if batch_images is not None:
            images.append(batch_images)
            kept_labels.append(batch_labels)
    if not images:
        from imgcls.errors import DataError

        raise DataError(f"none of the {len(files)} image files could be read (first: {files[0] if files else '-'})")
    return torch.cat(images), torch.cat(kept_labels), skipped

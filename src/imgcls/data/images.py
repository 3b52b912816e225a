"""In-memory image data: uint8 tensors plus labels, and the conversions applied once at load time."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class ImageData:
    """A labelled image set.

    images: ``(N, C, H, W)`` uint8 in memory, or ``None`` for file-backed (streamed) sets.
    files: image paths for file-backed sets (and for reporting), else ``None``.
    """

    labels: torch.Tensor
    class_names: list[str]
    images: torch.Tensor | None = None
    files: list[str] | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: torch.Tensor) -> ImageData:
        idx = indices.tolist()
        return ImageData(
            labels=self.labels[indices],
            class_names=self.class_names,
            images=None if self.images is None else self.images[indices],
            files=None if self.files is None else [self.files[i] for i in idx],
            skipped=self.skipped,
        )


def convert_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Convert uint8 ``(N, C, H, W)`` images to ``channels`` (1: ITU-R 601 luma, 3: repeat gray)."""
    if channels is None or images.shape[1] == channels:
        return images
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and images.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {images.shape[1]} channels to {channels}")


def resize_uint8(images: torch.Tensor, size: int | None, chunk: int = 2048) -> torch.Tensor:
    """Resize uint8 ``(N, C, H, W)`` images to ``size × size`` (bilinear, antialiased), in chunks to bound memory."""
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = part.round().clamp(0, 255).to(torch.uint8)
    return out

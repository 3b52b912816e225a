"""The mini-batch that flows from the loaders through augmentation into heads' losses."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Batch:
    """A training or evaluation batch.

    images: ``(B, C, H, W)``; uint8 straight from a loader, float (normalised) after
        :class:`imgcls.data.preprocess.Preprocess`.
    targets: ``(B,)`` int64 class indices (for mixed batches: the dominant class).
    soft_targets: ``(B, C)`` float target distributions after MixUp/CutMix, else ``None``.
    index: ``(B,)`` int64 positions in the source data set (for samplers and debugging).
    unit_images: the same images as floats in [0, 1] before normalisation (set by the trainer after
        augmentation; teachers in distillation normalise these with their own statistics).
    """

    images: torch.Tensor
    targets: torch.Tensor
    soft_targets: torch.Tensor | None = None
    index: torch.Tensor | None = None
    unit_images: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            move(self.images),
            move(self.targets),
            move(self.soft_targets),
            move(self.index),
            move(self.unit_images),
        )

    def with_images(self, images: torch.Tensor) -> Batch:
        return replace(self, images=images)

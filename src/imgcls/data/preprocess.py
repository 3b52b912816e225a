"""Turning loader batches into model inputs: uint8 → float in [0, 1] (resized to the model's input
size when the data is stored smaller, e.g. CIFAR at 32 px for a 224-px pretrained backbone —
upsampling per batch on the device instead of keeping a 49× larger copy in memory;
augmentation works here) → normalised with the data set's mean/std (recorded in every
checkpoint for inference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Preprocess:
    def __init__(
        self, mean: list[float], std: list[float], device: torch.device, channels_last: bool = False, image_size: int | None = None
    ) -> None:
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
            x = x.clamp_(0.0, 1.0)
        return x

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.to_unit(images))

    @classmethod
    def from_meta(cls, meta: dict, device: torch.device, channels_last: bool = False) -> Preprocess:
        """From a checkpoint's ``preprocess`` record (image_size, channels, mean, std)."""
        return cls(meta["mean"], meta["std"], device, channels_last, int(meta["image_size"]))

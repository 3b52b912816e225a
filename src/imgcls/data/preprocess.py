"""Turning loader batches into model inputs: uint8 → float in [0, 1] (augmentation works here) →
normalised with the data set's mean/std (recorded in every checkpoint for inference)."""

from __future__ import annotations

import torch


class Preprocess:
    def __init__(self, mean: list[float], std: list[float], device: torch.device, channels_last: bool = False) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.channels_last = channels_last

    @staticmethod
    def to_unit(images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.to_unit(images))

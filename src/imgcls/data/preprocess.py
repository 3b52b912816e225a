"""Turning loader batches into model inputs: uint8 → float in [0, 1] (inverted per ``data.invert``;
resized to the model's input
size when the data is stored smaller, e.g. CIFAR at 32 px for a 224-px pretrained backbone —
upsampling per batch on the device instead of keeping a 49× larger copy in memory;
augmentation works here) → normalised with the data set's mean/std (recorded in every
checkpoint for inference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: ``data.invert`` modes: ``none``; ``auto`` inverts each image whose mean intensity is above 127 of 255
#: (seed 004's MNIST helper: dark digits on a white page become white digits on black, like MNIST);
#: ``always`` inverts every image.
INVERT_MODES = ("none", "auto", "always")
#: ``auto`` threshold on the mean intensity, in [0, 1] units (the seed's 127 of 255)
INVERT_THRESHOLD = 127.0 / 255.0


def invert_images(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Apply ``data.invert`` to float images in [0, 1] ``(B, C, H, W)``; ``auto`` decides per image on its
    mean over all pixels and channels."""
    if mode == "none":
        return x
    if mode == "always":
        return 1.0 - x
    if mode != "auto":
        raise ValueError(f"unknown invert mode '{mode}'; use one of {', '.join(INVERT_MODES)}")
    bright = x.mean(dim=(1, 2, 3), keepdim=True) > INVERT_THRESHOLD
    return torch.where(bright, 1.0 - x, x)


class Preprocess:
    def __init__(
        self,
        mean: list[float],
        std: list[float],
        device: torch.device,
        channels_last: bool = False,
        image_size: int | None = None,
        invert: str = "none",
    ) -> None:
        if invert not in INVERT_MODES:
            raise ValueError(f"unknown invert mode '{invert}'; use one of {', '.join(INVERT_MODES)}")
        self.invert = invert
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        x = invert_images(x, self.invert)
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            x = x.clamp_(0.0, 1.0)
        return x

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.to_unit(images))

    @classmethod
    def from_meta(cls, meta: dict, device: torch.device, channels_last: bool = False) -> Preprocess:
        """From a checkpoint's ``preprocess`` record (image_size, channels, mean, std, invert)."""
        return cls(
            meta["mean"],
            meta["std"],
            device,
            channels_last,
            int(meta["image_size"]),
            meta.get("invert", "none"),
        )

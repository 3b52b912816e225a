"""Progressive resizing: train the early epochs on downscaled images, growing to full size.

The schedule is FFCV's (Leclerc et al., 2023, ``ffcv-imagenet``'s ``get_resolution``): the resolution is
interpolated linearly in the epoch between ``start`` and ``end`` and held at ``min_size`` before and at
the full size after; fast.ai's "progressive resizing" (Howard, 2018) is the same idea in steps. Low
resolutions make the early epochs cheaper (a CNN's cost scales with the pixel count), and the last
epochs at the full size leave the weights and BatchNorm statistics fitted to the size the model is
evaluated at (Touvron et al., 2019, "FixRes", on the train/test resolution discrepancy).

``min_size`` is the shorter side's length in pixels; the other side keeps the aspect ratio. Images are
downscaled with antialiased bilinear interpolation (``torch.nn.functional.interpolate``, one call per
batch), after the other augmentations; images already at or below the epoch's size pass unchanged.
The model must accept inputs of any size (CNNs with global pooling do; ViTs with fixed position
embeddings do not): ``api.train`` checks that with one small forward pass before training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ProgressiveResize:
    """Downscale a training batch to the epoch's resolution (``epoch`` counts from 0, as ``mix_off_epoch``)."""

    def __init__(self, min_size: int | None, start: int = 0, end: int = 0) -> None:
        if min_size is not None and min_size < 1:
            raise ValueError(f"min_size must be a positive number of pixels, got {min_size}")
        if not 0 <= start <= end:
            raise ValueError(f"the resize ramp needs 0 <= start <= end, got start={start}, end={end}")
        self.min_size, self.start, self.end = min_size, start, end

    @property
    def is_identity(self) -> bool:
        return self.min_size is None

    def size_at(self, epoch: int, full_size: int) -> int:
        """The shorter side's length for ``epoch`` when the images' shorter side is ``full_size``."""
        if self.min_size is None or self.min_size >= full_size or epoch >= self.end:
            return full_size
        if epoch < self.start:
            return self.min_size
        fraction = (epoch - self.start) / (self.end - self.start)
        return round(self.min_size + fraction * (full_size - self.min_size))

    def __call__(self, images: torch.Tensor, epoch: int) -> torch.Tensor:
        height, width = images.shape[-2:]
        full = min(height, width)
        size = self.size_at(epoch, full)
        if size >= full:
            return images
        scale = size / full
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
        out = F.interpolate(images, size=target, mode="bilinear", antialias=True, align_corners=False)
        return out.clamp_(0.0, 1.0)


def check_model_accepts(
    model: torch.nn.Module, resize: ProgressiveResize, channels: int, image_size: int
) -> None:
    """Raise ``ValueError`` (saying why) when ``model`` cannot take the smallest training size.

    One forward pass of two images in eval mode (BatchNorm statistics untouched), without gradients.
    """
    size = resize.size_at(0, image_size)  # the smallest: sizes only grow with the epoch
    if size >= image_size:
        return
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, channels, size, size, device=device))
    except Exception as exc:  # any failure of the model on the smaller input
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"the model cannot take {size}x{size} inputs ({first})") from None
    finally:
        model.train(was_training)

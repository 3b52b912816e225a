"""Vectorised image-augmentation kernels: one call per batch, one parameter set per *sample*.

SPEC §2.2 (ASL transforms), §5.3/§5.5 (seed 004 recipes); DESIGN "Data path and speed".
Images are float ``(B, C, H, W)`` in [0, 1] (C = 1 or 3) on any device; parameters are
per-sample tensors. Every kernel is deterministic given its parameters, keeps shape and dtype,
returns values in [0, 1] and is the identity at its neutral parameter (factor 1, angle 0, ...).

Why our own kernels: ``torchvision.transforms.v2.functional`` applies *one* parameter set to a
whole batch, so per-sample geometry would need one ``F.affine`` call per sample (or per group of
samples sharing a magnitude). kornia vectorises per sample, but draws from torch's global RNG
(no caller-owned generator), applies one sub-policy per batch in its Auto/RandAugment, would be a
new dependency, and is no faster: 1.2–3× slower than these kernels on CPU for the single ops at
28–96 px (numbers in ``benchmarks/results/augment_speed.md`` and at the top of
:mod:`imgcls.data.augment`).
Equalize, which torchvision already computes per image on a batch, is reused from it.

Geometry convention: pixel coordinates with the pixel (row i, column j) centred at
``(x, y) = (j + 0.5, i + 0.5)``, y pointing down; a *forward* 3×3 matrix maps input pixel
coordinates to output pixel coordinates; :func:`warp` inverts it and resamples once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale

# --------------------------------------------------------------------------------------------
# Geometry: matrices (float64, CPU) and one resampling pass
# --------------------------------------------------------------------------------------------


def identity_matrices(batch_size: int) -> torch.Tensor:
    return torch.eye(3, dtype=torch.float64).repeat(batch_size, 1, 1)


def affine_matrices(
    height: int,
    width: int,
    angle: torch.Tensor,
    translate: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shear: torch.Tensor | None = None,
    center: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Forward affine maps ``T(translate) · C · R(angle) · S(scale) · SHy · SHx · C⁻¹`` as ``(B, 3, 3)``.

    torchvision's composition and shear matrices (``SHx = [[1, −tan sx], [0, 1]]``). angle: ``(B,)``
    degrees, positive = counter-clockwise on screen (as ``torchvision F.rotate``; ``F.affine`` counts
    clockwise). translate: ``(B, 2)`` pixels (x, y). scale: ``(B,)``. shear: ``(B, 2)`` degrees (x, y).
    center: the pixel point rotation, scale and shear are about (default: the image centre).
    """
    angle = angle.to(torch.float64)
    batch = angle.shape[0]
    translate = (
        torch.zeros(batch, 2, dtype=torch.float64) if translate is None else translate.to(torch.float64)
    )
    scale = torch.ones(batch, dtype=torch.float64) if scale is None else scale.to(torch.float64)
    shear = torch.zeros(batch, 2, dtype=torch.float64) if shear is None else shear.to(torch.float64)
    cx, cy = (width / 2.0, height / 2.0) if center is None else center

    theta = torch.deg2rad(angle)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotation = torch.stack([cos, sin, -sin, cos], dim=1).view(batch, 2, 2)
    shear_x = torch.eye(2, dtype=torch.float64).repeat(batch, 1, 1)
    shear_x[:, 0, 1] = -torch.tan(torch.deg2rad(shear[:, 0]))
    shear_y = torch.eye(2, dtype=torch.float64).repeat(batch, 1, 1)
    shear_y[:, 1, 0] = -torch.tan(torch.deg2rad(shear[:, 1]))
    linear = rotation @ shear_y @ shear_x * scale[:, None, None]

    matrices = identity_matrices(batch)
    matrices[:, :2, :2] = linear
    centre = torch.tensor([cx, cy], dtype=torch.float64)
    matrices[:, :2, 2] = centre - linear @ centre + translate
    return matrices


def homography_matrices(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Forward projective maps sending 4 ``source`` points to 4 ``target`` points, ``(B, 4, 2)`` each."""
    source, target = source.to(torch.float64), target.to(torch.float64)
    batch = source.shape[0]
    x, y = source[..., 0], source[..., 1]
    u, v = target[..., 0], target[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=-1)
    system = torch.cat([rows_u, rows_v], dim=1)  # (B, 8, 8)
    rhs = torch.cat([u, v], dim=1)  # (B, 8)
    coeffs = torch.linalg.solve(system, rhs)
    return torch.cat([coeffs, torch.ones(batch, 1, dtype=torch.float64)], dim=1).view(batch, 3, 3)


def resized_crop_matrices(height: int, width: int, boxes: torch.Tensor) -> torch.Tensor:
    """Forward maps that stretch the box ``(x0, y0, w, h)`` (pixels, ``(B, 4)``) to the whole image."""
    boxes = boxes.to(torch.float64)
    matrices = identity_matrices(boxes.shape[0])
    sx, sy = width / boxes[:, 2], height / boxes[:, 3]
    matrices[:, 0, 0], matrices[:, 1, 1] = sx, sy
    matrices[:, 0, 2], matrices[:, 1, 2] = -boxes[:, 0] * sx, -boxes[:, 1] * sy
    return matrices


def _pixel_to_normalised(height: int, width: int) -> torch.Tensor:
    return torch.tensor(
        [[2.0 / width, 0.0, -1.0], [0.0, 2.0 / height, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )


def sampling_grid(theta: torch.Tensor, height: int, width: int, projective: bool = True) -> torch.Tensor:
    """``grid_sample`` grid ``(B, H, W, 2)`` of the maps ``theta`` ``(B, 3, 3)`` (output → input, normalised).

    Same values as ``F.affine_grid(theta[:, :2], align_corners=False)`` for affine maps, built
    separably (a ``(B, 1, W, 2)`` plus a ``(B, H, 1, 2)`` term): 3.6× faster than ``affine_grid``
    on CPU at 96 px (9 vs 33 ms for B = 256), and it also handles projective maps (``projective``
    False skips the division when the caller knows every map is affine).
    """
    batch = theta.shape[0]
    device, dtype = theta.device, theta.dtype
    xs = ((torch.arange(width, device=device, dtype=dtype) + 0.5) * (2.0 / width) - 1.0).view(1, 1, width, 1)
    ys = ((torch.arange(height, device=device, dtype=dtype) + 0.5) * (2.0 / height) - 1.0).view(
        1, height, 1, 1
    )
    rows = theta.transpose(1, 2).reshape(batch, 1, 1, 3, 3)  # [..., k, :] = column k of theta
    grid = (xs * rows[..., 0, :2] + rows[..., 2, :2]) + ys * rows[..., 1, :2]
    if projective:
        depth = (xs * rows[..., 0, 2:] + rows[..., 2, 2:]) + ys * rows[..., 1, 2:]
        grid = grid / depth.clamp_min(1e-6)
    return grid


def warp(images: torch.Tensor, matrices: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample every image through its forward map ``(B, 3, 3)`` (one ``grid_sample`` for the batch; zero fill)."""
    _, _, height, width = images.shape
    to_norm = _pixel_to_normalised(height, width)
    inverse = to_norm @ torch.linalg.inv(matrices.to(torch.float64)) @ torch.linalg.inv(to_norm)
    inverse = inverse / inverse[:, 2:3, 2:3]  # output (normalised) -> input (normalised)
    theta = inverse.to(device=images.device, dtype=torch.float32)
    projective = bool((matrices[:, 2, :2] != 0).any())  # decided on the CPU matrices: no device sync
    grid = sampling_grid(theta, height, width, projective)
    out = F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode="zeros", align_corners=False)
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Exact integer geometry
# --------------------------------------------------------------------------------------------


def hflip(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose ``flip`` ``(B,)`` flag is set."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def crop_with_padding(images: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``padding`` and cut an ``H×W`` window at ``offsets`` ``(B, 2)`` = (top, left) in ``[0, 2p]``.

    Offset ``(p, p)`` is the identity; the content moves by ``(p − top, p − left)`` pixels.
    """
    if padding == 0:
        return images
    batch, channels, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)).flatten(2)
    offsets = offsets.to(device=images.device, dtype=torch.long)
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(width, device=images.device)  # (B, W)
    flat = (rows[:, :, None] * (width + 2 * padding) + cols[:, None, :]).view(batch, 1, height * width)
    return padded.gather(2, flat.expand(batch, channels, height * width)).view(batch, channels, height, width)


# --------------------------------------------------------------------------------------------
# Erasing
# --------------------------------------------------------------------------------------------


def box_mask(height: int, width: int, boxes: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Boolean ``(B, 1, H, W)`` union of boxes ``(B, K, 4)`` = (top, left, bottom, right), half-open."""
    boxes = boxes.to(device=device, dtype=torch.long)
    rows = torch.arange(height, device=device).view(1, 1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, 1, width)
    top, left, bottom, right = (boxes[..., i].unsqueeze(-1).unsqueeze(-1) for i in range(4))
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)  # (B, K, H, W)
    return inside.any(dim=1, keepdim=True)


def erase(images: torch.Tensor, mask: torch.Tensor, fill: float | None = None) -> torch.Tensor:
    """Replace masked pixels by ``fill``, or (``None``) by each image's own per-channel mean colour.

    The seeds erase *after* normalisation with 0, i.e. with the data set's mean colour; an image's
    own mean is the per-sample equivalent in [0, 1] space.
    """
    if fill is None:
        value = images.mean(dim=(2, 3), keepdim=True)
    else:
        value = torch.full((), float(fill), dtype=images.dtype, device=images.device)
    return torch.where(mask, value, images)


# --------------------------------------------------------------------------------------------
# Colour (per-sample factors; torchvision's formulas)
# --------------------------------------------------------------------------------------------


def _per_sample(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * images + (1.0 - factor) * other).clamp_(0.0, 1.0)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma replicated over the channels (shape kept); 1-channel images are returned unchanged."""
    if images.shape[1] == 1:
        return images
    return _luma(images).expand_as(images).contiguous()


def _luma(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, ...)`` weighted channel sum (Python-scalar weights: no host-to-device copy)."""
    r, g, b = GRAY_WEIGHTS
    return images[:, 0:1] * r + images[:, 1:2] * g + images[:, 2:3] * b


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (images * _per_sample(factor, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level (torchvision's ``adjust_contrast``)."""
    channel_means = images.mean(dim=(2, 3), keepdim=True)  # the grey image's mean, without building it
    mean = _luma(channel_means) if images.shape[1] == 3 else channel_means
    return _blend(images, mean, _per_sample(factor, images))


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image (torchvision's ``adjust_saturation``; identity on 1 channel)."""
    if images.shape[1] == 1:
        return images
    return _blend(images, to_grayscale(images), _per_sample(factor, images))


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 1] → HSV with hue in [0, 1) (torchvision's ``_rgb2hsv``; grey pixels get hue 0)."""
    r, g, b = images.unbind(dim=1)
    maxc, minc = images.amax(dim=1), images.amin(dim=1)
    chroma = maxc - minc
    grey = chroma == 0
    ones = torch.ones_like(maxc)
    saturation = chroma / torch.where(grey, ones, maxc)
    divisor = torch.where(grey, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    hue = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    return torch.stack((hue, saturation, maxc), dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel ``n`` (5, 3, 1 for R, G, B) is ``v − v·s·clamp(min(k, 4 − k), 0, 1)``
    with ``k = (n + 6h) mod 6`` — the closed form of the six-sector table torchvision's ``_hsv2rgb`` uses."""
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)
    return (v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)).clamp_(0.0, 1.0)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` ``(B,)`` turns in [−0.5, 0.5] (torchvision's ``adjust_hue``; identity on 1 channel)."""
    if images.shape[1] == 1:
        return images
    hsv = rgb_to_hsv(images)
    hue = torch.remainder(hsv[:, 0:1] + _per_sample(shift, images), 1.0)
    return hsv_to_rgb(torch.cat((hue, hsv[:, 1:]), dim=1))


def adjust_sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a 3×3 smoothed image (13-weight kernel); the 1-pixel border is kept (PIL/torchvision)."""
    height, width = images.shape[-2:]
    if height <= 2 or width <= 2:
        return images
    rows = images[..., :-2, :] + images[..., 1:-1, :] + images[..., 2:, :]
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]  # 3×3 sums of the interior pixels
    centre = images[..., 1:-1, 1:-1]
    blurred = (box + 4.0 * centre) / 13.0  # kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13
    out = images.clone()
    out[..., 1:-1, 1:-1] = _blend(centre, blurred, _per_sample(factor, images))
    return out


def posterize(images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep ``bits`` ``(B,)`` (0..8) bits per channel (torchvision's float formula)."""
    levels = _per_sample(torch.pow(2.0, bits.to(torch.float64)), images)
    return torch.minimum((images * levels).floor_(), levels - 1.0).clamp_(min=0.0).div_(levels)


def solarize(images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert pixels at or above ``threshold`` ``(B,)``."""
    return torch.where(images >= _per_sample(threshold, images), 1.0 - images, images)


def invert(images: torch.Tensor) -> torch.Tensor:
    return 1.0 - images


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to [0, 1]; constant channels are kept (torchvision's formula).

    Written out because torchvision's batched kernel masks with boolean indexing, a device sync on GPU.
    """
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    scale = torch.where(flat, torch.ones_like(high), 1.0 / (high - low).clamp_min(1e-12))
    return ((images - torch.where(flat, torch.zeros_like(low), low)) * scale).clamp_(0.0, 1.0)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram-equalise each channel of each image (torchvision's batched 8-bit kernel)."""
    return TF.equalize(images)


def degrees_from_tan(values: torch.Tensor) -> torch.Tensor:
    """Shear magnitudes of the AutoAugment family are tangents; :func:`affine_matrices` takes degrees."""
    return torch.rad2deg(torch.atan(values.to(torch.float64)))


# --------------------------------------------------------------------------------------------
# Random ops: draw per-sample parameters on the CPU generator, apply one kernel to the batch
# --------------------------------------------------------------------------------------------


def uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``U(low, high)`` float64 samples on the CPU."""
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def randint_below(
    high: torch.Tensor | int, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    """Integers uniform in ``[0, high)`` (``high`` may be a per-element tensor ≥ 1)."""
    draws = torch.rand(shape, generator=generator, dtype=torch.float64)
    high_t = torch.as_tensor(high, dtype=torch.float64)
    return torch.minimum((draws * high_t).floor(), high_t - 1).long()


def chance(shape: tuple[int, ...], probability: float, generator: torch.Generator) -> torch.Tensor:
    """Boolean CPU tensor, True with ``probability``."""
    return torch.rand(shape, generator=generator) < probability


class BatchOp(ABC):
    """A random augmentation on a batch: per-sample parameters from ``generator`` (a CPU generator)."""

    @property
    @abstractmethod
    def is_identity(self) -> bool:
        """True when the op cannot change any image (magnitude or probability 0)."""

    @abstractmethod
    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment ``images`` (float ``(B, C, H, W)`` in [0, 1]); never modifies the input in place."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images if self.is_identity else self.apply(images, generator)


class GeometricOp(BatchOp):
    """An op that is a per-sample projective map; consecutive ones are fused into one :func:`warp`."""

    @abstractmethod
    def sample_matrices(
        self, batch_size: int, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Forward maps ``(B, 3, 3)`` float64 (CPU), identity for samples left untouched."""

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        return warp(images, self.sample_matrices(batch, height, width, generator))


class GeometryChain(GeometricOp):
    """Several geometric ops applied in order with a single resampling (their maps multiplied)."""

    def __init__(self, ops: list[GeometricOp]) -> None:
        self.ops = [op for op in ops if not op.is_identity]

    @property
    def is_identity(self) -> bool:
        return not self.ops

    def sample_matrices(
        self, batch_size: int, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        total = identity_matrices(batch_size)
        for op in self.ops:
            total = op.sample_matrices(batch_size, height, width, generator) @ total
        return total


class RandomCropPad(BatchOp):
    """Random ``H×W`` crop of the image zero-padded by ``padding`` pixels (CIFAR's RandomCrop(32, 4))."""

    def __init__(self, padding: int) -> None:
        self.padding = int(padding)

    @property
    def is_identity(self) -> bool:
        return self.padding == 0

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        offsets = randint_below(2 * self.padding + 1, (images.shape[0], 2), generator)
        return crop_with_padding(images, self.padding, offsets)


class RandomHFlip(BatchOp):
    def __init__(self, probability: float) -> None:
        self.probability = float(probability)

    @property
    def is_identity(self) -> bool:
        return self.probability == 0.0

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = chance((images.shape[0],), self.probability, generator)
        return hflip(images, flip.to(images.device))


class RandomResizedCrop(GeometricOp):
    """Inception-style crop (area fraction ``scale``, aspect ``ratio``) stretched back to ``H×W``.

    torchvision's sampling (10 tries, integer boxes, centre-crop fallback), vectorised over the batch.
    """

    def __init__(
        self,
        enabled: bool = True,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.enabled, self.scale, self.ratio = bool(enabled), scale, ratio

    @property
    def is_identity(self) -> bool:
        return not self.enabled

    def sample_boxes(
        self, batch_size: int, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Boxes ``(B, 4)`` = (x0, y0, w, h) in pixels."""
        tries = 10
        area = height * width
        target = area * uniform((batch_size, tries), *self.scale, generator)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(uniform((batch_size, tries), log_lo, log_hi, generator))
        w = torch.sqrt(target * aspect).round()
        h = torch.sqrt(target / aspect).round()
        valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = valid.long().argmax(dim=1, keepdim=True)
        w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
        found = valid.any(dim=1)
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            fw, fh = float(width), float(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            fw, fh = float(round(height * max(self.ratio))), float(height)
        else:
            fw, fh = float(width), float(height)
        w = torch.where(found, w, torch.full_like(w, fw))
        h = torch.where(found, h, torch.full_like(h, fh))
        y0 = randint_below(height - h + 1, (batch_size,), generator).double()
        x0 = randint_below(width - w + 1, (batch_size,), generator).double()
        y0 = torch.where(found, y0, ((height - h) / 2).floor())
        x0 = torch.where(found, x0, ((width - w) / 2).floor())
        return torch.stack([x0, y0, w, h], dim=1)

    def sample_matrices(
        self, batch_size: int, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        return resized_crop_matrices(height, width, self.sample_boxes(batch_size, height, width, generator))


class RandomAffine(GeometricOp):
    """Rotation ``U(±degrees)``, translation ``U(±translate·size)``, scale ``U(scale)``, x-shear ``U(±shear)`` degrees.

    torchvision's ``RandomAffine`` (and ``RandomRotation`` when only ``degrees`` is set), with
    sub-pixel translations instead of rounded ones.
    """

    def __init__(
        self,
        degrees: float = 0.0,
        translate: float = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
        shear: float = 0.0,
    ) -> None:
        self.degrees, self.translate, self.scale, self.shear = (
            float(degrees),
            float(translate),
            tuple(scale),
            float(shear),
        )

    @property
    def is_identity(self) -> bool:
        return self.degrees == 0 and self.translate == 0 and self.scale == (1.0, 1.0) and self.shear == 0

    def sample_matrices(
        self, batch_size: int, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        b = batch_size
        angle = uniform((b,), -self.degrees, self.degrees, generator)
        shift = uniform((b, 2), -self.translate, self.translate, generator) * torch.tensor([width, height])
        scale = uniform((b,), self.scale[0], self.scale[1], generator)
        shear_x = uniform((b,), -self.shear, self.shear, generator)
        shear = torch.stack([shear_x, torch.zeros_like(shear_x)], dim=1)
        return affine_matrices(height, width, angle, shift, scale, shear)


class RandomPerspective(GeometricOp):
    """Move each corner inward by up to ``distortion·size/2`` with probability ``probability`` (torchvision's)."""

    def __init__(self, distortion: float, probability: float = 0.5) -> None:
        self.distortion, self.probability = float(distortion), float(probability)

    @property
    def is_identity(self) -> bool:
        return self.distortion == 0.0 or self.probability == 0.0

    def sample_matrices(
        self, batch_size: int, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        b = batch_size
        apply = chance((b,), self.probability, generator)
        corners = torch.tensor(
            [[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]], dtype=torch.float64
        )
        inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)
        reach = self.distortion * torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
        moved = corners + inward * reach * uniform((b, 4, 2), 0.0, 1.0, generator)
        matrices = homography_matrices(corners.expand(b, 4, 2), moved)
        return torch.where(apply.view(b, 1, 1), matrices, identity_matrices(b))


class ColorJitter(BatchOp):
    """torchvision's ``ColorJitter`` per sample: brightness factor ``U(1 ± brightness)``, contrast factor
    ``U(1 ± contrast)``, saturation factor ``U(1 ± saturation)`` (floored at 0) and hue shift
    ``U(−hue, hue)`` turns, each with torchvision's formula (saturation and hue leave 1-channel images alone).

    torchvision shuffles the order of the four per call; we apply them in the fixed order brightness →
    contrast → saturation → hue. Brightness and contrast commute up to clipping (contrast blends with the
    mean, which scales with brightness); saturation and hue act on chroma only and are the last two, as in
    the most common of torchvision's orders.
    """

    def __init__(
        self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0
    ) -> None:
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5] turns, got {hue}")
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.saturation, self.hue = float(saturation), float(hue)

    @property
    def is_identity(self) -> bool:
        return self.brightness == 0.0 and self.contrast == 0.0 and self.saturation == 0.0 and self.hue == 0.0

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = images.shape[0]
        if self.brightness > 0:
            images = adjust_brightness(
                images, uniform((b,), max(0.0, 1 - self.brightness), 1 + self.brightness, generator)
            )
        if self.contrast > 0:
            images = adjust_contrast(
                images, uniform((b,), max(0.0, 1 - self.contrast), 1 + self.contrast, generator)
            )
        if self.saturation > 0:
            images = adjust_saturation(
                images, uniform((b,), max(0.0, 1 - self.saturation), 1 + self.saturation, generator)
            )
        if self.hue > 0:
            images = adjust_hue(images, uniform((b,), -self.hue, self.hue, generator))
        return images


class RandomGrayscale(BatchOp):
    """Convert to grey (channels kept) with ``probability`` (1.0: always, like the ASL seed's Grayscale)."""

    def __init__(self, probability: float) -> None:
        self.probability = float(probability)

    @property
    def is_identity(self) -> bool:
        return self.probability == 0.0

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pick = chance((images.shape[0],), self.probability, generator).to(images.device)
        if images.shape[1] == 1:
            return images
        return torch.where(pick.view(-1, 1, 1, 1), to_grayscale(images), images)


class Cutout(BatchOp):
    """``holes`` squares of side ``size`` centred uniformly in the image, clipped at the border (DeVries & Taylor).

    Pixels inside are set to the image's mean colour (see :func:`erase`).
    """

    def __init__(self, holes: int, size: int, fill: float | None = None) -> None:
        self.holes, self.size, self.fill = int(holes), int(size), fill

    @property
    def is_identity(self) -> bool:
        return self.holes == 0 or self.size == 0

    def sample_boxes(
        self, batch_size: int, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Boxes ``(B, holes, 4)`` = (top, left, bottom, right)."""
        cy = randint_below(height, (batch_size, self.holes), generator)
        cx = randint_below(width, (batch_size, self.holes), generator)
        half = self.size // 2
        top, bottom = (cy - half).clamp(0, height), (cy - half + self.size).clamp(0, height)
        left, right = (cx - half).clamp(0, width), (cx - half + self.size).clamp(0, width)
        return torch.stack([top, left, bottom, right], dim=-1)

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        boxes = self.sample_boxes(batch, height, width, generator)
        return erase(images, box_mask(height, width, boxes, images.device), self.fill)


class RandomErasing(BatchOp):
    """Random Erasing (Zhong et al.; torchvision's sampling: area ``U(scale)``, log-uniform aspect, 10 tries)."""

    def __init__(
        self,
        probability: float,
        scale: tuple[float, float] = (0.02, 0.33),
        ratio: tuple[float, float] = (0.3, 3.3),
        fill: float | None = None,
    ) -> None:
        self.probability, self.scale, self.ratio, self.fill = float(probability), scale, ratio, fill

    @property
    def is_identity(self) -> bool:
        return self.probability == 0.0

    def sample_boxes(
        self, batch_size: int, height: int, width: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Boxes ``(B, 1, 4)`` = (top, left, bottom, right); empty boxes for samples left untouched."""
        tries = 10
        apply = chance((batch_size,), self.probability, generator)
        area = height * width * uniform((batch_size, tries), *self.scale, generator)
        aspect = torch.exp(
            uniform((batch_size, tries), math.log(self.ratio[0]), math.log(self.ratio[1]), generator)
        )
        h = torch.sqrt(area * aspect).round()
        w = torch.sqrt(area / aspect).round()
        valid = (h < height) & (w < width) & (h > 0) & (w > 0)
        first = valid.long().argmax(dim=1, keepdim=True)
        h, w = h.gather(1, first).squeeze(1).long(), w.gather(1, first).squeeze(1).long()
        top = randint_below((height - h + 1).clamp_min(1), (batch_size,), generator)
        left = randint_below((width - w + 1).clamp_min(1), (batch_size,), generator)
        keep = apply & valid.any(dim=1)
        h, w = h * keep, w * keep
        return torch.stack([top, left, top + h, left + w], dim=-1).unsqueeze(1)

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        boxes = self.sample_boxes(batch, height, width, generator)
        return erase(images, box_mask(height, width, boxes, images.device), self.fill)

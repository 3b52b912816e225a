"""Batched AutoAugment, RandAugment and TrivialAugment with a policy drawn per *sample*.

Papers: AutoAugment (Cubuk et al., 2019; CIFAR-10 / ImageNet / SVHN policies), RandAugment
(Cubuk et al., 2020; N ops of magnitude M out of 31 bins, the standard 14-op list) and
TrivialAugment-Wide (Müller & Hutter, 2021). Seed 004 uses AutoAugment(CIFAR10) for the CNN and
RandAugment(2, 9) for ViT/DeiT (SPEC §5.3, §5.5).

The op spaces, magnitude tables and policies are torchvision's own
(``torchvision.transforms.v2.{AutoAugment, RandAugment, TrivialAugmentWide}``), read from those
classes so they cannot drift. torchvision draws one op for the whole tensor it is given; here
each sample draws its own ops, signs and magnitudes, and each op's vectorised kernel runs once
per slot on the subset of samples that drew it (all geometric ops of a slot share one
``grid_sample``). Differences from torchvision, on purpose: bilinear instead of nearest
resampling for the geometric ops (smoother on 28–96 px images), zero fill.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import AutoAugmentPolicy

from imgcls.data.augment_ops import (
    BatchOp,
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_sharpness,
    affine_matrices,
    autocontrast,
    degrees_from_tan,
    equalize,
    invert,
    posterize,
    randint_below,
    solarize,
    warp,
)

#: Every op of the three policies, in a fixed order (an op's index is its id).
OP_NAMES: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
    "Invert",
)
OP_ID = {name: i for i, name in enumerate(OP_NAMES)}
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
# adjacent ids, so that after sorting by op id the geometric samples form one slice
GEOMETRIC_IDS = range(OP_ID[GEOMETRIC_OPS[0]], OP_ID[GEOMETRIC_OPS[-1]] + 1)
AUTOAUGMENT_POLICIES = {
    "cifar10": AutoAugmentPolicy.CIFAR10,
    "imagenet": AutoAugmentPolicy.IMAGENET,
    "svhn": AutoAugmentPolicy.SVHN,
}

# Colour kernels taking the signed magnitude of torchvision's tables, per sample.
_COLOUR_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Brightness": lambda x, m: adjust_brightness(x, 1.0 + m),
    "Color": lambda x, m: adjust_saturation(x, 1.0 + m),
    "Contrast": lambda x, m: adjust_contrast(x, 1.0 + m),
    "Sharpness": lambda x, m: adjust_sharpness(x, 1.0 + m),
    "Posterize": lambda x, m: posterize(x, m.round()),
    "Solarize": solarize,
    "AutoContrast": lambda x, m: autocontrast(x),
    "Equalize": lambda x, m: equalize(x),
    "Invert": lambda x, m: invert(x),
}


def magnitude_table(space: dict, num_bins: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(len(OP_NAMES), num_bins)`` float64 magnitudes and ``(len(OP_NAMES),)`` signed flags from a torchvision space."""
    table = torch.zeros(len(OP_NAMES), num_bins, dtype=torch.float64)
    signed = torch.zeros(len(OP_NAMES), dtype=torch.bool)
    for name, (magnitudes_fn, is_signed) in space.items():
        values = magnitudes_fn(num_bins, height, width)
        if values is not None:
            table[OP_ID[name]] = values.to(torch.float64)
        signed[OP_ID[name]] = is_signed
    return table, signed


def _geometric_matrices(
    op_ids: torch.Tensor, magnitudes: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Forward maps for samples whose op is geometric (torchvision's semantics per op)."""
    n = op_ids.shape[0]
    zeros = torch.zeros(n, dtype=torch.float64)
    shear_deg = degrees_from_tan(magnitudes)
    truncated = magnitudes.trunc()  # torchvision translates by int(magnitude) pixels
    top_left = (0.0, 0.0)  # torchvision shears about the top-left corner (center=[0, 0])
    candidates = {
        "ShearX": affine_matrices(
            height, width, zeros, shear=torch.stack([shear_deg, zeros], 1), center=top_left
        ),
        "ShearY": affine_matrices(
            height, width, zeros, shear=torch.stack([zeros, shear_deg], 1), center=top_left
        ),
        "TranslateX": affine_matrices(height, width, zeros, translate=torch.stack([truncated, zeros], 1)),
        "TranslateY": affine_matrices(height, width, zeros, translate=torch.stack([zeros, truncated], 1)),
        "Rotate": affine_matrices(height, width, magnitudes),
    }
    out = torch.empty(n, 3, 3, dtype=torch.float64)
    for name, matrices in candidates.items():
        pick = op_ids == OP_ID[name]
        out[pick] = matrices[pick]
    return out


def apply_op_program(
    images: torch.Tensor, op_ids: torch.Tensor, magnitudes: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    """Apply, slot after slot, each sample's op ``op_ids[b, k]`` with signed magnitude ``magnitudes[b, k]``.

    ``op_ids``/``magnitudes``/``active``: CPU tensors ``(B, K)``; inactive slots do nothing. Per slot
    the batch is reordered once so that samples drawing the same op are contiguous; every op then
    runs on a slice (geometric ops together, one warp), and the batch is put back in order. That
    keeps host-to-device copies at three per slot, whatever the number of ops drawn.
    """
    _, _, height, width = images.shape
    device = images.device
    num_ops = len(OP_NAMES)
    out = images
    for k in range(op_ids.shape[1]):
        ids = torch.where(active[:, k], op_ids[:, k], OP_ID["Identity"])
        if bool((ids == OP_ID["Identity"]).all()):
            continue
        order = torch.argsort(ids, stable=True)
        ids_sorted, mags_sorted = ids[order], magnitudes[order, k]
        # samples that drew op i sit at [bounds[i], bounds[i + 1]) of the sorted batch
        bounds = [0, *torch.bincount(ids, minlength=num_ops).cumsum(0).tolist()]
        order_dev = order.to(device)
        work = out.index_select(0, order_dev)
        mags_dev = mags_sorted.to(device=device, dtype=images.dtype)
        start, stop = bounds[GEOMETRIC_IDS.start], bounds[GEOMETRIC_IDS.stop]
        if stop > start:
            matrices = _geometric_matrices(ids_sorted[start:stop], mags_sorted[start:stop], height, width)
            work[start:stop] = warp(work[start:stop], matrices)
        for name, kernel in _COLOUR_KERNELS.items():
            start, stop = bounds[OP_ID[name]], bounds[OP_ID[name] + 1]
            if stop > start:
                work[start:stop] = kernel(work[start:stop], mags_dev[start:stop])
        out = torch.empty_like(work).index_copy_(0, order_dev, work)
    return out


def _signed(values: torch.Tensor, signed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    negate = (torch.rand(values.shape, generator=generator) <= 0.5) & signed
    return torch.where(negate, -values, values)


@lru_cache(maxsize=32)
def _tables(kind: str, num_bins: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    space = {
        "randaugment": v2.RandAugment._AUGMENTATION_SPACE,
        "trivialaugment": v2.TrivialAugmentWide._AUGMENTATION_SPACE,
        "autoaugment": v2.AutoAugment._AUGMENTATION_SPACE,
    }[kind]
    return magnitude_table(space, num_bins, height, width)


class RandAugment(BatchOp):
    """RandAugment(N, M): each sample applies N ops drawn uniformly from the 14-op list at bin M of 31."""

    num_bins = 31

    def __init__(self, num_ops: int, magnitude: int) -> None:
        if num_ops < 0 or not 0 <= magnitude < self.num_bins:
            raise ValueError(
                f"RandAugment needs num_ops >= 0 and 0 <= magnitude <= 30, got ({num_ops}, {magnitude})"
            )
        self.num_ops, self.magnitude = int(num_ops), int(magnitude)
        self.op_ids = torch.tensor([OP_ID[name] for name in v2.RandAugment._AUGMENTATION_SPACE])

    @property
    def is_identity(self) -> bool:
        return self.num_ops == 0

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        table, signed = _tables("randaugment", self.num_bins, height, width)
        ops = self.op_ids[randint_below(len(self.op_ids), (batch, self.num_ops), generator)]
        magnitudes = _signed(table[ops, self.magnitude], signed[ops], generator)
        return apply_op_program(images, ops, magnitudes, torch.ones_like(ops, dtype=torch.bool))


class TrivialAugment(BatchOp):
    """TrivialAugment-Wide: each sample applies one op with a magnitude bin drawn uniformly from 31."""

    num_bins = 31

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = bool(enabled)
        self.op_ids = torch.tensor([OP_ID[name] for name in v2.TrivialAugmentWide._AUGMENTATION_SPACE])

    @property
    def is_identity(self) -> bool:
        return not self.enabled

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        table, signed = _tables("trivialaugment", self.num_bins, height, width)
        ops = self.op_ids[randint_below(len(self.op_ids), (batch, 1), generator)]
        bins = randint_below(self.num_bins, (batch, 1), generator)
        magnitudes = _signed(table[ops, bins], signed[ops], generator)
        return apply_op_program(images, ops, magnitudes, torch.ones_like(ops, dtype=torch.bool))


class AutoAugment(BatchOp):
    """AutoAugment: each sample draws one of the policy's 25 sub-policies (two ops, each with its probability)."""

    num_bins = 10

    def __init__(self, policy: str | None) -> None:
        if policy is not None and policy not in AUTOAUGMENT_POLICIES:
            raise ValueError(
                f"unknown AutoAugment policy {policy!r}; valid: {', '.join(AUTOAUGMENT_POLICIES)}"
            )
        self.policy = policy
        if policy is not None:
            sub_policies = v2.AutoAugment(AUTOAUGMENT_POLICIES[policy])._policies
            self.op_ids = torch.tensor([[OP_ID[name] for name, _, _ in sp] for sp in sub_policies])
            self.probabilities = torch.tensor([[p for _, p, _ in sp] for sp in sub_policies])
            self.bins = torch.tensor([[b or 0 for _, _, b in sp] for sp in sub_policies])

    @property
    def is_identity(self) -> bool:
        return self.policy is None

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, _, height, width = images.shape
        table, signed = _tables("autoaugment", self.num_bins, height, width)
        chosen = randint_below(len(self.op_ids), (batch,), generator)
        ops, bins = self.op_ids[chosen], self.bins[chosen]
        active = torch.rand(ops.shape, generator=generator) <= self.probabilities[chosen]
        magnitudes = _signed(table[ops, bins], signed[ops], generator)
        return apply_op_program(images, ops, magnitudes, active)

"""Batched training augmentation: the seeds' recipes as presets, applied to whole batches.

SPEC §2.2 (ASL transforms), §5.3/§5.5 (seed 004 recipes), §5.9 items 9–10; DESIGN "Data path
and speed". A :class:`BatchAugment` takes a float batch in [0, 1] on any device and applies, in
this fixed order: grayscale → crop with zero padding → horizontal flip → geometry (random
resized crop, affine, perspective: one fused resampling) → colour jitter (brightness, contrast,
saturation, hue) → AutoAugment → RandAugment → TrivialAugment → Cutout → Random Erasing →
progressive resizing (:mod:`imgcls.data.progressive_resize`, by epoch) → MixUp/CutMix. Every op draws its
parameters *per sample* from the caller's CPU ``torch.Generator`` (so results are seeded and the
same on every device) and runs as one vectorised kernel; no per-sample Python loops.

Speed, measured with ``benchmarks/augment_speed.py`` (CPU, 1 thread, B = 256 RGB float images,
ms per batch, best of 7 interleaved runs on a shared 2-vCPU machine, so ±30 %; the full table
is ``benchmarks/results/augment_speed.md``)::

    ours / tv loop / kornia                  28 px                32 px                64 px                96 px
    crop pad 4 + flip           1.4 /   16 /    4    2.0 /   19 /    4   12.0 /   20 /   14   19.5 /   23 /   18
    affine rot/tr/sc/shear      2.3 /   36 /    4    3.6 /   57 /    5   20.1 /   57 /   24   43.9 /   80 /   53
    perspective 0.2 (p 0.5)     3.1 /   43 /    4    4.3 /   59 /    6   14.3 /   53 /   18   30.7 /   63 /   42
    brightness+contrast 0.2     0.4 /   20 /    1    0.6 /   22 /    2    3.6 /   24 /    8   10.2 /   28 /   21
    cutout 1x16                 1.0 /   17 /    1    1.1 /   19 /    2    3.7 /   20 /    5    9.1 /   23 /   10
    RandAugment(2, 9)          14.6 /   86 /   12    9.5 /   85 /   11   33.7 /   64 /   39   55.1 /   84 /   41
    AutoAugment(cifar10)       13.8 /   47 /   21    8.0 /   47 /    4   21.0 /   39 /   65   35.4 /   52 /   57

torchvision's v2 kernels apply one parameter set per call, so per-sample parameters need one
call per sample (``tv loop``); kornia 0.9 vectorises per sample (``kornia``; its RandAugment and
AutoAugment apply one sub-policy to the whole batch, so they do less work); ours is the
vectorised code in :mod:`imgcls.data.augment_ops` / :mod:`imgcls.data.augment_policies`.
Ours is the fastest, or within noise of it, for every single op at every size (3–50× faster than
the per-sample torchvision loop at 28–32 px, 1.2–2.7× at 96 px); kornia is only faster on its
batch-wide policies. kornia is therefore not used (it would also be a new dependency, drawing
from torch's global RNG instead of a caller-owned generator).
"""

from __future__ import annotations

import dataclasses

import torch

from imgcls.config import AugmentConfig
from imgcls.data.augment_ops import (
    BatchOp,
    ColorJitter,
    Cutout,
    GeometricOp,
    GeometryChain,
    RandomAffine,
    RandomCropPad,
    RandomErasing,
    RandomGrayscale,
    RandomHFlip,
    RandomPerspective,
    RandomResizedCrop,
)
from imgcls.data.augment_policies import AutoAugment, RandAugment, TrivialAugment
from imgcls.data.mixing import MixUpCutMix
from imgcls.data.progressive_resize import ProgressiveResize
from imgcls.errors import ConfigError
from imgcls.runtime.batch import Batch

#: The seeds' training recipes (SPEC §5.3/§5.5 for mnist and cifar, §2.2 for asl).
PRESETS: dict[str, dict[str, object]] = {
    # seed 004, mnist_improved_config (AdaptiveCNN): RandomRotation(10) → RandomAffine(0, translate 0.1)
    # → Cutout(1 hole, 8 px). ViT/DeiT configs add RandAugment(2, 9): set `randaugment: [2, 9]`.
    "mnist": {"rotation": 10.0, "translate": 0.1, "cutout_holes": 1, "cutout_size": 8},
    # seed 004, cifar_improved_config (AdaptiveCNN): RandomCrop(32, pad 4) → HFlip → AutoAugment(CIFAR10)
    # → Cutout(1, 16), CutMix α = 1 (always on, as the seed's CutMixDataset).
    "cifar": {
        "crop_padding": 4,
        "hflip": 0.5,
        "autoaugment": "cifar10",
        "cutout_holes": 1,
        "cutout_size": 16,
        "cutmix_alpha": 1.0,
    },
    # seed 001 (GFNet ASL): Grayscale → RandomRotation(15) → RandomAffine(10°, translate 0.1, scale 0.9–1.1,
    # shear 10) → RandomPerspective(0.2, p 0.5) → ColorJitter(0.2, 0.2). The seed's two successive rotations
    # (±15° then ±10°) become one ±15° rotation here; set `rotation: 25` for the seed's full range.
    "asl": {
        "grayscale": True,
        "rotation": 15.0,
        "translate": 0.1,
        "scale": (0.9, 1.1),
        "shear": 10.0,
        "perspective": 0.2,
        "brightness": 0.2,
        "contrast": 0.2,
    },
}


def resolve_augment(cfg: AugmentConfig) -> AugmentConfig:
    """Apply ``cfg.preset``; fields the user set explicitly (``cfg.model_fields_set``) win over the preset."""
    if cfg.preset is None:
        return cfg
    if cfg.preset not in PRESETS:
        raise ConfigError(
            f"unknown augment.preset '{cfg.preset}'; valid presets: {', '.join(sorted(PRESETS))} (or null for none)"
        )
    explicit = {name: getattr(cfg, name) for name in cfg.model_fields_set}
    return AugmentConfig.model_validate({**PRESETS[cfg.preset], **explicit})


def _check(cfg: AugmentConfig) -> None:
    low, high = cfg.scale
    if not 0 < low <= high:
        raise ConfigError(f"augment.scale must be (low, high) with 0 < low <= high, got {list(cfg.scale)}")
    if cfg.randaugment is not None:
        n, m = cfg.randaugment
        if n < 0 or not 0 <= m <= 30:
            raise ConfigError(
                f"augment.randaugment must be [N >= 0, M in 0..30], got {list(cfg.randaugment)}"
            )
    if (cfg.cutout_holes > 0) != (cfg.cutout_size > 0):
        raise ConfigError(
            f"augment.cutout_holes ({cfg.cutout_holes}) and augment.cutout_size ({cfg.cutout_size}) "
            "must both be > 0 to use Cutout (or both 0)"
        )


class BatchAugment:
    """The training augmentation pipeline of one experiment (see the module docstring for the order)."""

    def __init__(self, cfg: AugmentConfig, num_classes: int) -> None:
        cfg = resolve_augment(cfg)
        _check(cfg)
        self.cfg = cfg
        ops: list[BatchOp] = [
            RandomGrayscale(1.0 if cfg.grayscale else 0.0),
            RandomCropPad(cfg.crop_padding),
            RandomHFlip(cfg.hflip),
            RandomResizedCrop(cfg.random_resized_crop),
            RandomAffine(cfg.rotation, cfg.translate, cfg.scale, cfg.shear),
            RandomPerspective(cfg.perspective, 0.5),
            ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue),
            AutoAugment(cfg.autoaugment),
            RandAugment(*(cfg.randaugment or (0, 0))),
            TrivialAugment(cfg.trivialaugment),
            Cutout(cfg.cutout_holes, cfg.cutout_size),
            RandomErasing(cfg.erasing),
        ]
        self.ops = _fuse_geometry([op for op in ops if not op.is_identity])
        self.mixing = MixUpCutMix(
            num_classes,
            mixup_alpha=cfg.mixup_alpha,
            cutmix_alpha=cfg.cutmix_alpha,
            mix_prob=cfg.mix_prob,
            switch_prob=cfg.mix_switch_prob,
            off_epoch=cfg.mix_off_epoch,
        )
        self.resize = ProgressiveResize(cfg.resize_min, *cfg.resize_epochs)

    @property
    def is_identity(self) -> bool:
        """True when nothing is enabled (the trainer then skips augmentation)."""
        return not self.ops and self.mixing.is_identity and self.resize.is_identity

    def pixel_fraction(self, epoch: int, image_size: int) -> float:
        """The share of ``image_size``² pixels a training image has at ``epoch`` (progressive resizing)."""
        return (self.resize.size_at(epoch, image_size) / image_size) ** 2

    def augment_images(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The image ops only (no mixing)."""
        if not images.is_floating_point():
            raise TypeError(f"BatchAugment expects float images in [0, 1], got {images.dtype}")
        for op in self.ops:
            images = op(images, generator)
        return images

    def __call__(self, batch: Batch, generator: torch.Generator, epoch: int) -> Batch:
        images = self.resize(self.augment_images(batch.images, generator), epoch)
        out = dataclasses.replace(batch, images=images)
        return self.mixing(out, generator, epoch)

    def __repr__(self) -> str:
        names = ", ".join(type(op).__name__ for op in self.ops)
        resize = "" if self.resize.is_identity else f", resize_min={self.resize.min_size}"
        return f"BatchAugment([{names}], mixing={'off' if self.mixing.is_identity else 'on'}{resize})"


def _fuse_geometry(ops: list[BatchOp]) -> list[BatchOp]:
    """Merge runs of consecutive geometric ops into one :class:`GeometryChain` (one resampling)."""
    fused: list[BatchOp] = []
    run: list[GeometricOp] = []
    for op in [*ops, None]:
        if isinstance(op, GeometricOp):
            run.append(op)
            continue
        if run:
            fused.append(run[0] if len(run) == 1 else GeometryChain(run))
            run = []
        if op is not None:
            fused.append(op)
    return fused


def build_train_augment(cfg: AugmentConfig, num_classes: int) -> BatchAugment:
    """The trainer's entry point: resolve the preset and build the pipeline."""
    return BatchAugment(resolve_augment(cfg), num_classes)

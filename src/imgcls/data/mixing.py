"""MixUp and CutMix on whole batches, with timm's ``Mixup`` semantics and soft targets.

Papers: MixUp (Zhang et al., 2018), CutMix (Yun et al., 2019). Seed 004 mixes per sample in a
dataset wrapper with a random partner (SPEC §5.3, pitfall §5.9 item 10); here, as in timm, the
partner of sample ``b`` is sample ``B−1−b`` of the same (shuffled) batch, so an odd batch just
pairs its middle sample with itself. Label smoothing is *not* applied here: heads smooth soft
targets themselves (``imgcls.models.heads.base.cross_entropy``), so mixing never disables it
(pitfall §5.9 item 9).

Semantics follow ``timm.data.Mixup`` (``mode="batch"``: one λ and one box per batch;
``mode="elem"``: per sample, like timm's ``elem`` mode and closer to seed 004): with probability
``mix_prob`` a batch (sample) is mixed; when both alphas are positive CutMix is chosen with
probability ``switch_prob``; λ ~ Beta(α, α); the CutMix box is timm's ``rand_bbox`` (side
``√(1−λ)`` of the image, centre uniform, clipped) and λ is corrected to the pasted area.
timm's class itself is not reused: it draws from the global NumPy RNG, rejects odd batches,
mutates its input and has no turn-off epoch; its formulas are reproduced instead, drawing from
a NumPy generator seeded by the caller's ``torch.Generator`` (Beta sampling is not available on
a ``torch.Generator``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from imgcls.data.augment_ops import box_mask
from imgcls.runtime.batch import Batch


@dataclass
class MixParams:
    """Per-sample mixing parameters (CPU tensors of length B).

    mixed: whether the sample is mixed at all. cutmix: CutMix (else MixUp) for mixed samples.
    lam: weight of the sample's own image and label (CutMix: corrected to the box area; 1 when
    not mixed). boxes: CutMix boxes (top, left, bottom, right), empty for other samples.
    """

    mixed: torch.Tensor
    cutmix: torch.Tensor
    lam: torch.Tensor
    boxes: torch.Tensor


def cutmix_boxes(
    lam: np.ndarray, height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """timm's ``rand_bbox`` + ``correct_lam``: boxes ``(n, 4)`` (top, left, bottom, right) and the corrected λ."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = (height * ratio).astype(np.int64), (width * ratio).astype(np.int64)
    cy = rng.integers(0, height, size=lam.shape)
    cx = rng.integers(0, width, size=lam.shape)
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    corrected = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return np.stack([top, left, bottom, right], axis=-1), corrected


class MixUpCutMix:
    """Batch-level MixUp/CutMix producing ``Batch.soft_targets`` ``(B, num_classes)`` that sum to 1."""

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        off_epoch: int | None = None,
        mode: Literal["batch", "elem"] = "batch",
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixing alphas must be >= 0, got mixup {mixup_alpha}, cutmix {cutmix_alpha}")
        if mode not in ("batch", "elem"):
            raise ValueError(f"mixing mode must be 'batch' or 'elem', got {mode!r}")
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.mix_prob, self.switch_prob = float(mix_prob), float(switch_prob)
        self.off_epoch, self.mode = off_epoch, mode

    @property
    def is_identity(self) -> bool:
        """True when no batch can ever be mixed."""
        no_alpha = self.mixup_alpha == 0 and self.cutmix_alpha == 0
        return no_alpha or self.mix_prob == 0 or self.off_epoch == 0

    def active(self, epoch: int) -> bool:
        return not self.is_identity and (self.off_epoch is None or epoch < self.off_epoch)

    def sample(self, batch_size: int, height: int, width: int, generator: torch.Generator) -> MixParams:
        """Draw the parameters (from a NumPy generator seeded by ``generator``)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        n = 1 if self.mode == "batch" else batch_size
        mixed = rng.random(n) < self.mix_prob
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cutmix = rng.random(n) < self.switch_prob
        else:
            cutmix = np.full(n, self.cutmix_alpha > 0)
        lam_cut = rng.beta(self.cutmix_alpha, self.cutmix_alpha, n) if self.cutmix_alpha > 0 else np.ones(n)
        lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha, n) if self.mixup_alpha > 0 else np.ones(n)
        boxes, lam_box = cutmix_boxes(lam_cut, height, width, rng)
        lam = np.where(mixed, np.where(cutmix, lam_box, lam_mix), 1.0)
        boxes = np.where((mixed & cutmix)[:, None], boxes, 0)
        params = MixParams(
            mixed=torch.from_numpy(mixed),
            cutmix=torch.from_numpy(mixed & cutmix),
            lam=torch.from_numpy(lam.astype(np.float64)),
            boxes=torch.from_numpy(boxes.astype(np.int64)),
        )
        if self.mode == "batch":
            params = MixParams(*(t.expand(batch_size, *t.shape[1:]).clone() for t in vars(params).values()))
        return params

    def mix(self, batch: Batch, params: MixParams) -> Batch:
        """Mix ``batch`` with its flipped self using ``params`` (no randomness)."""
        images = batch.images
        batch_size, _, height, width = images.shape
        device = images.device
        own = (
            batch.soft_targets.float()
            if batch.soft_targets is not None
            else F.one_hot(batch.targets, self.num_classes).float()
        )
        lam_t = params.lam.to(device=device, dtype=torch.float32).view(-1, 1)
        lam = lam_t.view(-1, 1, 1, 1).to(images.dtype)
        cutmix = params.cutmix.to(device).view(-1, 1, 1, 1)
        blend = torch.where(cutmix, torch.ones_like(lam), lam)
        partner = images.flip(0)
        mixed = blend * images + (1.0 - blend) * partner
        paste = box_mask(height, width, params.boxes.view(batch_size, 1, 4), device) & cutmix
        mixed = torch.where(paste, partner, mixed)
        soft = lam_t * own + (1.0 - lam_t) * own.flip(0)
        if batch.soft_targets is None:
            targets = torch.where(lam_t.view(-1) >= 0.5, batch.targets, batch.targets.flip(0))
        else:
            targets = soft.argmax(dim=1)
        return replace(batch, images=mixed, soft_targets=soft, targets=targets)

    def __call__(self, batch: Batch, generator: torch.Generator, epoch: int) -> Batch:
        if not self.active(epoch):
            return batch
        _, _, height, width = batch.images.shape
        params = self.sample(len(batch), height, width, generator)
        if not bool(params.mixed.any()):
            return batch
        return self.mix(batch, params)

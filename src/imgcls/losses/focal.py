"""Sigmoid focal loss for multi-label targets (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017;
seed 002 names it as the alternative to BCE for its hyperspherical multi-label heads, SPEC §3.3).

With ``p = σ(z)`` and ``p_t = p`` for positives, ``1 − p`` for negatives:

    FL = α_t · (1 − p_t)^γ · BCE(z, y),    α_t = α·y + (1 − α)·(1 − y)

exactly as ``torchvision.ops.sigmoid_focal_loss`` (the implementation the seed links; its defaults
α = 0.25, γ = 2; ``alpha=None`` switches the α-balancing off). We reduce by the **mean over batch ×
labels**, like the BCE it replaces in our heads (so γ = 0 with ``alpha=None`` is plain BCE), and an
optional per-label ``weight`` multiplies each term before the mean (the HBCE level weights). ``y``
may be soft (in [0, 1]): the formula is evaluated as written, as torchvision does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imgcls.errors import ConfigError


def check_focal(gamma: float, alpha: float | None) -> None:
    if gamma < 0 or (alpha is not None and not 0.0 <= alpha <= 1.0):
        raise ConfigError(
            f"focal loss needs focal_gamma >= 0 and focal_alpha in [0, 1] or null; got {gamma}, {alpha}"
        )


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss of ``logits`` ``(B, K)`` against (multi-hot or soft) ``targets`` ``(B, K)``, mean over
    all entries; ``weight`` ``(K,)`` scales each label's term."""
    z = logits.float()
    y = targets.to(z.dtype)
    p = torch.sigmoid(z)
    ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    p_t = p * y + (1.0 - p) * (1.0 - y)
    loss = ce * (1.0 - p_t).pow(gamma) if gamma > 0 else ce
    if alpha is not None:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    if weight is not None:
        loss = loss * weight.to(loss)
    return loss.mean()

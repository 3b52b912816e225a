"""Asymmetric Loss for multi-label classification (Ridnik et al., ICCV 2021; SPEC §3.3, §6.5).

With ``p = σ(z)``, the shifted negative probability ``p_m = max(p − clip, 0)`` and
``p_neg = 1 − p_m = min(1 − p + clip, 1)``:

    L = −Σ_b Σ_j w_j [ y_bj (1 − p_bj)^{γ+} log p_bj + (1 − y_bj) p_m,bj^{γ−} log p_neg,bj ]  /  B

(logs clamped at ``eps``). The reference implementation (Alibaba-MIIL/ASL) returns the **sum**
over batch and labels; we divide by the batch size ``B`` so the value does not grow with the
batch (it still grows with the number of labels, like the reference). Defaults follow the
reference code: γ− = 4, γ+ = 1, clip = 0.05, eps = 1e-8, focusing weight computed without
gradient (``disable_torch_grad_focal_loss=True``). ``y`` may be soft (in [0, 1]).
"""

from __future__ import annotations

import torch
from torch import nn

from imgcls.errors import ConfigError


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 1.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    weight: torch.Tensor | None = None,
    detach_focal_weight: bool = True,
) -> torch.Tensor:
    """Asymmetric loss of ``logits`` ``(B, K)`` against multi-hot ``targets`` ``(B, K)``, summed over
    labels and averaged over the batch; ``weight`` ``(K,)`` scales each label's term."""
    logits = logits.float()
    y = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    p_neg = (1.0 - p + clip).clamp(max=1.0) if clip > 0 else 1.0 - p
    loss = y * torch.log(p.clamp(min=eps)) + (1.0 - y) * torch.log(p_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal_weight):
            pt = p * y + p_neg * (1.0 - y)
            focal = torch.pow(1.0 - pt, gamma_pos * y + gamma_neg * (1.0 - y))
        loss = loss * focal
    if weight is not None:
        loss = loss * weight.to(loss)
    return -loss.sum() / max(int(logits.shape[0]), 1)


class AsymmetricLoss(nn.Module):
    """Module form of :func:`asymmetric_loss` (batch-size-normalised sum)."""

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        detach_focal_weight: bool = True,
    ) -> None:
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0 or not 0 <= clip < 1:
            raise ConfigError(
                f"asymmetric loss needs gamma_neg, gamma_pos >= 0 and 0 <= clip < 1; got {gamma_neg}, {gamma_pos}, {clip}"
            )
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.detach_focal_weight = detach_focal_weight

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return asymmetric_loss(
            logits,
            targets,
            self.gamma_neg,
            self.gamma_pos,
            self.clip,
            self.eps,
            weight,
            self.detach_focal_weight,
        )

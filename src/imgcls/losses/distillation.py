"""Distillation losses of seed 004 (SPEC §5.4): logit knowledge distillation (Hinton et al., 2015;
DeiT, Touvron et al., 2021) with the seed's α schedules, and CST-style token distillation — token
representation loss ``L_tok`` and relational loss ``L_rel`` — with trainable projectors.

* :func:`hard_distillation` — ``CE(student, argmax teacher)`` (DeiT hard-label distillation).
* :func:`soft_distillation` — ``τ²·KL(softmax(t/τ) ‖ softmax(s/τ))``, batch mean, computed from two
  ``log_softmax`` (no ``log(0)``).
* :func:`alpha_at` — the weight of the distillation term in epoch ``e`` (0-based): 0 during
  ``warmup`` epochs, then with ``progress = min(1, (e − W)/(E − W))``: ``constant`` α,
  ``linear`` α_s + (α_e − α_s)·progress, ``cosine`` α_s + (α_e − α_s)·(1 − cos(π·progress))/2.
* :class:`TokenProjector` — ``Linear → LN → GELU → Linear → LN`` (seed: 192/384 → 512 → 256).
* :func:`token_cosine_loss` — ``L_tok = 1 − mean_{b,n} cos(P_s(z_s), P_t(z_t))``.
* :func:`relation_loss` — ``L_rel = KL(P_t ‖ P_s)`` between row-wise ``softmax(C/τ)`` of cosine
  similarity matrices: ``B×B`` over mean-pooled tokens (the seed's default, a batch-relational
  loss whose value depends on the batch size) or per-image ``N×N`` token correlations. Uses
  ``log_softmax`` on both sides, so identical samples or a collapsed batch stay finite (the seed
  took ``softmax(..).log()`` and produced NaN, pitfall §5.9.7).
* :func:`resize_token_grid` — bilinear resize of a square token grid ``(B, N, D)`` to another
  number of tokens (DINOv2/14 at 224 px: 16×16 → the student's 8×8, pitfall §5.9.6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ALPHA_SCHEDULES = ("constant", "linear", "cosine")


def hard_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's arg-max class (no label smoothing)."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))


def soft_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ))`` averaged over the batch."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def alpha_at(
    epoch: int,
    total_epochs: int,
    schedule: str = "constant",
    alpha: float = 0.5,
    alpha_start: float = 0.0,
    alpha_end: float = 0.5,
    warmup_epochs: int = 0,
) -> float:
    """Weight of the distillation term during (0-based) ``epoch`` of ``total_epochs`` (SPEC §5.4)."""
    if schedule not in ALPHA_SCHEDULES:
        raise ValueError(f"alpha schedule must be one of {ALPHA_SCHEDULES}, got '{schedule}'")
    if epoch < warmup_epochs:
        return 0.0
    if schedule == "constant":
        return float(alpha)
    progress = min(1.0, (epoch - warmup_epochs) / max(1, total_epochs - warmup_epochs))
    if schedule == "linear":
        return float(alpha_start + (alpha_end - alpha_start) * progress)
    return float(alpha_start + (alpha_end - alpha_start) * (1.0 - math.cos(math.pi * progress)) / 2.0)


class TokenProjector(nn.Module):
    """``Linear(in, hidden) → LN → GELU → Linear(hidden, out) → LN`` applied token-wise."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


def token_cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 − mean cos`` between matching (projected) tokens ``(B, N, D)``."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"token shapes differ: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}"
        )
    return 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1).mean()


def relation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.1, pooled: bool = True
) -> torch.Tensor:
    """KL(P_t ‖ P_s) between row-softmaxed cosine-similarity matrices.

    ``pooled``: tokens ``(B, N, D)`` (or features ``(B, D)``) are mean-pooled to one vector per
    image and compared across the batch (``B×B``); otherwise each image's ``N×N`` token
    correlation is compared (token counts must match). Widths may differ between the sides.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s, t = student.float(), teacher.float()
    if pooled:
        s = s.mean(dim=1) if s.dim() == 3 else s
        t = t.mean(dim=1) if t.dim() == 3 else t
    elif s.shape[:-1] != t.shape[:-1]:
        raise ValueError(f"token grids differ: student {tuple(s.shape)}, teacher {tuple(t.shape)}")
    s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    log_ps = F.log_softmax(s @ s.transpose(-1, -2) / temperature, dim=-1)
    log_pt = F.log_softmax(t @ t.transpose(-1, -2) / temperature, dim=-1)
    rows = log_ps.reshape(-1, log_ps.shape[-1])
    return F.kl_div(rows, log_pt.reshape_as(rows), reduction="batchmean", log_target=True)


def grid_side(num_tokens: int) -> int:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a square grid")
    return side


def resize_token_grid(tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Bilinearly resize a square token grid ``(B, N, D)`` to ``(B, num_tokens, D)`` (square too)."""
    b, n, d = tokens.shape
    if n == num_tokens:
        return tokens
    src, dst = grid_side(n), grid_side(num_tokens)
    grid = tokens.transpose(1, 2).reshape(b, d, src, src)
    grid = F.interpolate(grid.float(), size=(dst, dst), mode="bilinear", align_corners=False).to(tokens.dtype)
    return grid.reshape(b, d, dst * dst).transpose(1, 2)

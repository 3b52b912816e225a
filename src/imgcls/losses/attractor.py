"""Regularisers of DRA-Net's class attractors (seed 003, SPEC §4.2, §4.6 item 1).

All three map the attractor matrix ``A`` ``(C, H)`` to one scalar, a mean over the C(C−1)/2
unordered pairs ``i < j``:

- ``learned`` — the seed's ``regularize_attractors``: a learned MLP "distance"
  ``d(a_i, a_j) = ReLU(W₂ ReLU(W₁ [a_i ‖ a_j] + b₁) + b₂)`` (``2H → H → 1``), minimised jointly with
  everything else. **Degenerate**: the optimiser can drive it to exactly 0 by changing the MLP alone
  (e.g. a negative final pre-activation behind the last ReLU), after which it carries no gradient to the
  attractors at all. Kept for fidelity; the benchmark shows whether it collapses.
- ``diversity`` (our default) — ``mean_{i<j} cos(a_i, a_j)``. It depends on the attractors only, is
  scale-free (cannot be lowered by shrinking or growing them) and is minimised by spreading their
  directions (its minimum over C vectors is −1/(C−1), a regular simplex).
- ``compact`` — the README's literal reading ("minimizing their pairwise distances"):
  ``mean_{i<j} ‖a_i − a_j‖₂``. Minimising it pulls the attractors together — the opposite of diversity —
  and is offered only to show what the README says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REGULARIZERS = ("none", "learned", "diversity", "compact")


def pair_indices(n: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the ``n(n−1)/2`` unordered pairs ``i < j``."""
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i, j


def mean_pairwise_cosine(attractors: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``mean_{i<j} cos(a_i, a_j)`` of the rows of ``attractors`` ``(C, H)`` (the ``diversity`` term)."""
    a = attractors.float()
    unit = F.normalize(a, dim=1, eps=eps)
    i, j = pair_indices(a.shape[0], a.device)
    return (unit[i] * unit[j]).sum(dim=1).mean()


def mean_pairwise_distance(attractors: torch.Tensor) -> torch.Tensor:
    """``mean_{i<j} ‖a_i − a_j‖₂`` of the rows of ``attractors`` ``(C, H)`` (the ``compact`` term)."""
    a = attractors.float()
    i, j = pair_indices(a.shape[0], a.device)
    # sqrt with a floor: the gradient of ‖·‖ at coincident attractors would be NaN
    return ((a[i] - a[j]).pow(2).sum(dim=1) + 1e-12).sqrt().mean()


class LearnedDistance(nn.Module):
    """The seed's ``DistanceMetric``: ``[a_i ‖ a_j]`` (2H) → H → ReLU → 1 → ReLU, averaged over pairs."""

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.ReLU())

    def forward(self, attractors: torch.Tensor) -> torch.Tensor:
        a = attractors.float()
        i, j = pair_indices(a.shape[0], a.device)
        return self.net(torch.cat([a[i], a[j]], dim=1)).mean()


class AttractorRegularizer(nn.Module):
    """One of :data:`REGULARIZERS` as a module (``learned`` owns the MLP's parameters)."""

    def __init__(self, kind: str, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        if kind not in REGULARIZERS:
            from imgcls.errors import ConfigError

            raise ConfigError(
                f"attractor regularizer '{kind}' is unknown; use one of {', '.join(REGULARIZERS)}"
            )
        self.kind = kind
        self.metric = LearnedDistance(dim, hidden) if kind == "learned" else None

    def forward(self, attractors: torch.Tensor) -> torch.Tensor:
        if self.kind == "learned":
            return self.metric(attractors)
        if self.kind == "diversity":
            return mean_pairwise_cosine(attractors)
        if self.kind == "compact":
            return mean_pairwise_distance(attractors)
        return attractors.sum() * 0.0

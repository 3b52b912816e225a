"""Structure-preserving loss of FCH (seed 000, Kim et al., J.UCS 2026; SPEC §1.4, an [INFERRED] reading of the
seed, whose public code has no such term): pull the pairwise relations ``S`` of refined embeddings towards
the label relation matrix ``Y_ij = 1[y_i = y_j]`` (``⟨ỹ_i, ỹ_j⟩`` after MixUp/CutMix), over pairs i ≠ j.

The relations themselves (RBF with the median bandwidth, or cosine) are the head's choice
(:func:`imgcls.models.heads.fch.embedding_relations`); this module holds the targets and the distance.
"""

from __future__ import annotations

import torch

SP_DISTANCES = ("mse", "bce")


def relation_targets(targets: torch.Tensor, soft_targets: torch.Tensor | None = None) -> torch.Tensor:
    """Label relation matrix ``Y_ij = 1[y_i = y_j]``; after MixUp/CutMix ``Y_ij = ⟨ỹ_i, ỹ_j⟩``."""
    if soft_targets is not None:
        soft = soft_targets.float()
        return soft @ soft.T
    return (targets[:, None] == targets[None, :]).float()


def structure_loss(
    relations: torch.Tensor, targets: torch.Tensor, distance: str = "mse", eps: float = 1e-6
) -> torch.Tensor:
    """Mean over pairs i ≠ j of ``(S_ij − Y_ij)²`` (``mse``) or of the binary cross-entropy of ``S_ij``
    against ``Y_ij`` with positive weight ``#neg/#pos`` (``bce``; counters the ≈(C−1)/C share of
    different-class pairs). A batch of one sample has no pair: the loss is 0."""
    n = relations.shape[0]
    if n < 2:
        return relations.sum() * 0.0
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=relations.device)
    s, y = relations[off_diagonal], targets[off_diagonal].to(relations.dtype)
    if distance == "mse":
        return (s - y).pow(2).mean()
    if distance == "bce":
        positives, negatives = y.sum(), (1.0 - y).sum()
        pos_weight = torch.where(
            positives > 0, negatives / positives.clamp_min(eps), torch.ones_like(positives)
        )
        s = s.clamp(eps, 1.0 - eps)
        return -(pos_weight * y * s.log() + (1.0 - y) * (1.0 - s).log()).mean()
    raise ValueError(f"unknown structure-loss distance '{distance}'; use one of {SP_DISTANCES}")

"""SphereMulti and SphereMultiHier: hyperspherical multi-label heads over taxonomy nodes (seed 002;
Ke et al., ECCV 2022 "Hyperspherical Learning in Multi-Label Classification"; CIHMLC HBCE;
SPEC §3.3).

Every non-root node ``j`` of the taxonomy has a weight ``W_j``; with ``z = normalize(embedding)``,
``cos θ_j = z·normalize(W_j)``. Training logits are ``s·cos(θ_j + m·a_j)`` with ``a_j = y_j``
(``margin_on: positives``, default [INFERRED], as the ECCV paper: harder positives) or
``a_j = 1`` (``margin_on: all``, the seed); the same clamped-arccos and monotone fallback as
ArcFace. At inference (no targets) the logits are ``s·cos θ`` — **no margin** (the seed kept it,
which shifts every probability down). ``W`` is xavier-normal (seed). The target is the
multi-hot root → leaf path of the class (soft node marginals after MixUp/CutMix).

* ``sphere_multi``: BCE (mean over batch × nodes, unweighted, as the seed), Asymmetric Loss, or the
  sigmoid focal loss (``loss: focal``, :mod:`imgcls.losses.focal`; the seed's named alternative).
* ``sphere_multi_hier``: HBCE (:class:`imgcls.losses.hierarchical.HierarchicalBCELoss`):
  level-weighted BCE/ASL/focal + hierarchy penalty (``soft`` by default; ``hard`` = the seed's
  thresholded form, which has zero gradient) + distance penalty.

Prediction: ``predict_nodes`` = ``σ(logits)`` per node; ``predict`` = the class distribution
``softmax_c Σ_j log P(y_j = L_cj)`` (likelihood of each class's lineage vector, [INFERRED]).
Label smoothing does not apply to these multi-label losses and is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt
from torch import nn

from imgcls.errors import ConfigError
from imgcls.losses.asymmetric import asymmetric_loss
from imgcls.losses.focal import sigmoid_focal_loss
from imgcls.losses.hierarchical import HierarchicalBCELoss, class_log_likelihood
from imgcls.models.heads.arcface import MarginArgs, additive_angular_margin, cosine_logits, default_scale
from imgcls.models.heads.base import LOSS_LOGITS, Head, HeadOutput, loss_logits
from imgcls.models.heads.embedding import EmbeddingMLP
from imgcls.registry import HEADS
from imgcls.taxonomy.tree import Taxonomy

if TYPE_CHECKING:
    from imgcls.runtime.batch import Batch

MARGIN_ON = ("positives", "all")
ASL_KEYS = ("gamma_neg", "gamma_pos", "clip")


class SphereMultiArgs(MarginArgs):
    """``model.head_args`` of ``sphere_multi`` (``scale`` None: 16 for <= 20 nodes, else 30)."""

    margin_on: Literal["positives", "all"] = Field(
        "positives", description="nodes that get the margin: the target path (ECCV paper) or all (the seed)"
    )
    loss: Literal["bce", "asl", "focal"] = Field(
        "bce", description="base multi-label loss: BCE, Asymmetric Loss or sigmoid focal loss"
    )
    gamma_neg: float = Field(4.0, ge=0.0, description="ASL focusing exponent of negatives")
    gamma_pos: float = Field(1.0, ge=0.0, description="ASL focusing exponent of positives")
    clip: float = Field(0.05, ge=0.0, lt=1.0, description="ASL probability margin of negatives")
    focal_gamma: float = Field(2.0, ge=0.0, description="focal loss exponent γ (torchvision's default 2)")
    focal_alpha: float | None = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="focal loss positive weight α (torchvision's 0.25; null: no α-balancing)",
    )


class SphereMultiHierArgs(SphereMultiArgs):
    """``model.head_args`` of ``sphere_multi_hier``: SphereMulti's plus the HBCE loss's."""

    level_weights: Literal["inverse_level_size", "none"] = Field(
        "inverse_level_size", description="per-node base-loss weights"
    )
    penalty_mode: Literal["soft", "hard"] = Field(
        "soft", description="hierarchy penalty: soft (differentiable) or hard (the seed's, zero gradient)"
    )
    penalties: Literal["fixed", "data"] = Field(
        "fixed", description="per-edge penalties: fixed hier_penalty, or CIHMLC's from class_counts"
    )
    hier_penalty: float = Field(0.1, ge=0.0, description="fixed per-edge hierarchy penalty")
    penalty_scale: float = Field(1.0, ge=0.0, description="multiplier of the data-driven penalties")
    class_counts: list[NonNegativeInt] | None = Field(
        None, description="training images per class for penalties: data (None: uniform)"
    )
    distance_weight: float = Field(0.1, ge=0.0, description="weight of the distance penalty (0: off)")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="threshold τ of the hard penalty terms")
    soft_violation: Literal["diff", "product"] = Field(
        "diff", description="soft violation: relu(p_child - p_parent) or p_child·(1 - p_parent)"
    )


def require_taxonomy(taxonomy: Taxonomy | None, head: str, num_classes: int) -> Taxonomy:
    """The taxonomy a hierarchical head needs, checked against the number of classes."""
    if taxonomy is None:
        raise ConfigError(
            f"head '{head}' needs a taxonomy: set data.taxonomy (e.g. 'wordnet' or a parent-map file)"
        )
    if taxonomy.num_classes != num_classes:
        raise ConfigError(
            f"head '{head}': taxonomy has {taxonomy.num_classes} classes but the data has {num_classes}"
        )
    return taxonomy


@HEADS.register("sphere_multi", args=SphereMultiArgs)
class SphereMultiHead(Head):
    """Hyperspherical multi-label head over all taxonomy nodes.

    head_args: ``scale`` (None: 16 for ≤ 20 nodes, else 30), ``margin`` (0.5 rad), ``margin_on``
    (``positives`` | ``all``), ``loss`` (``bce`` | ``asl`` | ``focal``), ``gamma_neg`` / ``gamma_pos`` /
    ``clip`` (ASL: 4 / 1 / 0.05), ``focal_gamma`` / ``focal_alpha`` (focal: 2 / 0.25), ``embedding`` /
    ``dropout`` / ``embed_final_act`` (embedding MLP).

    ``output.logits`` are the margin-free ``s·cos θ`` (what ``predict`` and training accuracy use);
    a forward with targets adds the margin logits as ``output.extras["loss_logits"]`` for the loss.
    """

    output_space = "nodes"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        label_smoothing: float = 0.0,
        taxonomy: Taxonomy | None = None,
        scale: float | None = None,
        margin: float = 0.5,
        margin_on: str = "positives",
        loss: str = "bce",
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        embedding: Sequence[int] | None = None,
        dropout: float = 0.2,
        embed_final_act: str = "relu",
        focal_gamma: float = 2.0,
        focal_alpha: float | None = 0.25,
    ) -> None:
        super().__init__(in_features, num_classes, label_smoothing)
        SphereMultiArgs.from_init("sphere_multi", locals())
        self.taxonomy = require_taxonomy(taxonomy, type(self).__name__, num_classes)
        self.num_nodes = self.taxonomy.num_nodes
        self.scale = float(scale) if scale is not None else default_scale(self.num_nodes)
        self.margin, self.margin_on, self.loss_name = float(margin), margin_on, loss
        self.asl = dict(zip(ASL_KEYS, (gamma_neg, gamma_pos, clip), strict=True))
        self.focal = {
            "gamma": float(focal_gamma),
            "alpha": None if focal_alpha is None else float(focal_alpha),
        }
        self.embed = EmbeddingMLP(in_features, embedding, dropout, embed_final_act)
        self.weight = nn.Parameter(torch.empty(self.num_nodes, self.embed.out_features))
        nn.init.xavier_normal_(self.weight)
        self.register_buffer("lineage", self.taxonomy.lineage_matrix(), persistent=False)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        emb = self.embed(features)
        cos = cosine_logits(emb, self.weight)
        extras = {}
        if targets is not None:
            mask = (
                self.lineage[targets.long()].bool()
                if self.margin_on == "positives"
                else torch.ones_like(cos).bool()
            )
            extras[LOSS_LOGITS] = self.scale * additive_angular_margin(cos, mask, self.margin)
        return HeadOutput(logits=self.scale * cos, embeddings=emb, extras=extras)

    def node_targets(self, batch: Batch) -> torch.Tensor:
        """``(B, N)`` multi-hot path targets (node marginals for soft targets)."""
        if batch.soft_targets is not None:
            return batch.soft_targets.float() @ self.lineage
        return self.lineage[batch.targets.long()]

    def loss(self, output: HeadOutput, batch: Batch) -> dict[str, torch.Tensor]:
        y = self.node_targets(batch)
        logits = loss_logits(output)
        if self.loss_name == "bce":
            return {"bce": F.binary_cross_entropy_with_logits(logits.float(), y)}
        if self.loss_name == "focal":
            return {"focal": sigmoid_focal_loss(logits, y, **self.focal)}
        return {"asl": asymmetric_loss(logits, y, **self.asl)}

    def predict_nodes(self, output: HeadOutput) -> torch.Tensor:
        """``(B, N)`` node probabilities ``σ(logits)`` in taxonomy node order."""
        return torch.sigmoid(output.logits.float())

    def predict(self, output: HeadOutput) -> torch.Tensor:
        """``(B, C)`` leaf-class probabilities (softmax of the lineage log-likelihoods)."""
        return torch.softmax(class_log_likelihood(output.logits, self.lineage), dim=1)


@HEADS.register("sphere_multi_hier", args=SphereMultiHierArgs)
class SphereMultiHierHead(SphereMultiHead):
    """SphereMulti trained with HBCE (see :class:`~imgcls.losses.hierarchical.HierarchicalBCELoss`).

    head_args (besides SphereMulti's): ``level_weights`` (``inverse_level_size`` | ``none``),
    ``penalty_mode`` (``soft`` | ``hard``), ``penalties`` (``fixed`` | ``data``), ``hier_penalty``
    (0.1), ``penalty_scale`` (1.0), ``class_counts`` (for ``data``), ``distance_weight``,
    ``threshold`` (0.5, hard mode), ``soft_violation`` (``diff`` | ``product``).
    Loss terms: ``bce`` (or ``asl``, ``focal``), ``hier_penalty``, ``distance_penalty``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        label_smoothing: float = 0.0,
        taxonomy: Taxonomy | None = None,
        scale: float | None = None,
        margin: float = 0.5,
        margin_on: str = "positives",
        loss: str = "bce",
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float = 0.05,
        embedding: Sequence[int] | None = None,
        dropout: float = 0.2,
        embed_final_act: str = "relu",
        level_weights: str = "inverse_level_size",
        penalty_mode: str = "soft",
        penalties: str = "fixed",
        hier_penalty: float = 0.1,
        penalty_scale: float = 1.0,
        class_counts: list[int] | None = None,
        distance_weight: float = 0.1,
        threshold: float = 0.5,
        soft_violation: str = "diff",
        focal_gamma: float = 2.0,
        focal_alpha: float | None = 0.25,
    ) -> None:
        SphereMultiHierArgs.from_init("sphere_multi_hier", locals())
        super().__init__(
            in_features, num_classes, label_smoothing, taxonomy, scale, margin, margin_on, loss,
            gamma_neg, gamma_pos, clip, embedding, dropout, embed_final_act, focal_gamma, focal_alpha,
        )  # fmt: skip
        self.hbce = HierarchicalBCELoss(
            self.taxonomy,
            base=self.loss_name,
            level_weights=level_weights,
            penalty_mode=penalty_mode,
            penalties=penalties,
            hier_penalty=hier_penalty,
            penalty_scale=penalty_scale,
            class_counts=class_counts,
            distance_weight=distance_weight,
            threshold=threshold,
            soft_violation=soft_violation,
            **self.asl,
            focal_gamma=self.focal["gamma"],
            focal_alpha=self.focal["alpha"],
        )

    def loss(self, output: HeadOutput, batch: Batch) -> dict[str, torch.Tensor]:
        targets = batch.soft_targets if batch.soft_targets is not None else batch.targets
        return self.hbce(loss_logits(output), targets)

"""ArcFace head: additive angular margin softmax (Deng et al., CVPR 2019; seed 002; SPEC §3.3, §6.3).

``z = normalize(embedding)``, ``W_c = normalize(W)_c``, ``cos θ_c = z·W_c``. Training logits are
``s·cos(θ_y + m)`` for the target class and ``s·cos θ_j`` otherwise, then cross-entropy; at
inference (no targets) ``s·cos θ`` without margin (the seed's text says "unscaled" but its code
scales; the scale does not change the argmax, and keeps softmax probabilities sharp).

* ``θ = arccos(clamp(cos θ, −1 + ε, 1 − ε))`` (ε = 1e-7, representable in float32; the seed's
  1e-8 rounds to ±1 in float32, where arccos has an infinite derivative).
* When ``θ_y > π − m``, ``cos(θ_y + m)`` would *increase* with θ; the logit then uses
  ``cos θ_y − m·sin m`` (insightface / the seed) to stay monotone.
* Defaults: ``m = 0.5``; ``s = 16`` for ≤ 20 classes and 30 otherwise ([INFERRED]: the paper's 64
  saturates the softmax for few classes), both configurable. ``W`` kaiming-uniform (seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from imgcls.models.heads.base import LOSS_LOGITS, Head, HeadOutput
from imgcls.models.heads.embedding import EmbeddingArgs, EmbeddingMLP
from imgcls.registry import HEADS

COS_EPS = 1e-7


def default_scale(num_outputs: int) -> float:
    """``s = 16`` for ≤ 20 outputs, else 30 ([INFERRED])."""
    return 16.0 if num_outputs <= 20 else 30.0


class MarginArgs(EmbeddingArgs):
    """Scale and additive angular margin of the hyperspherical heads (plus their embedding MLP)."""

    scale: float | None = Field(None, gt=0, description="logit scale s (None: 16 for <= 20 outputs, else 30)")
    margin: float = Field(0.5, ge=0.0, lt=math.pi / 2, description="additive angular margin m in radians")


class ArcFaceArgs(MarginArgs):
    """``model.head_args`` of ``arcface``."""


def cosine_logits(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` cosines between the embeddings and the rows of ``weight`` (float32)."""
    return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(weight.float(), dim=1))


def additive_angular_margin(cos: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """``cos(θ + m)`` where ``mask`` is true, ``cos θ`` elsewhere; θ = arccos of the clamped
    cosine; ``cos θ − m·sin m`` replaces ``cos(θ + m)`` when ``θ > π − m`` (monotone fallback)."""
    cos = cos.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)
    theta = torch.acos(cos)
    with_margin = torch.where(
        theta <= math.pi - margin, torch.cos(theta + margin), cos - margin * math.sin(margin)
    )
    return torch.where(mask.bool(), with_margin, cos)


@HEADS.register("arcface", args=ArcFaceArgs)
class ArcFaceHead(Head):
    """ArcFace over the leaf classes, with an optional trainable embedding MLP.

    head_args: ``scale`` (None: 16 for ≤ 20 classes, else 30), ``margin`` (0.5 rad),
    ``embedding`` (hidden sizes, e.g. ``[1280, 512]``; None: features used directly),
    ``dropout`` (0.2), ``embed_final_act`` (``relu`` | ``none``). Loss: the base head's
    (label-smoothed, soft-target aware) cross-entropy on the margin logits, term ``ce``.

    ``output.logits`` are always the margin-free ``s·cos θ`` (what ``predict`` and training accuracy
    use); a forward with targets adds the margin logits as ``output.extras["loss_logits"]``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        label_smoothing: float = 0.0,
        scale: float | None = None,
        margin: float = 0.5,
        embedding: Sequence[int] | None = None,
        dropout: float = 0.2,
        embed_final_act: str = "relu",
    ) -> None:
        super().__init__(in_features, num_classes, label_smoothing)
        ArcFaceArgs.from_init("arcface", locals())
        self.embed = EmbeddingMLP(in_features, embedding, dropout, embed_final_act)
        self.scale = float(scale) if scale is not None else default_scale(num_classes)
        self.margin = float(margin)
        self.weight = nn.Parameter(torch.empty(num_classes, self.embed.out_features))
        nn.init.kaiming_uniform_(self.weight)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        emb = self.embed(features)
        cos = cosine_logits(emb, self.weight)
        extras = {}
        if targets is not None:
            mask = F.one_hot(targets.long(), self.num_classes).bool()
            extras[LOSS_LOGITS] = self.scale * additive_angular_margin(cos, mask, self.margin)
        return HeadOutput(logits=self.scale * cos, embeddings=emb, extras=extras)

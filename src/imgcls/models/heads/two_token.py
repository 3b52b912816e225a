"""The two-classifier head of a DeiT with a distillation token (Touvron et al., ICML 2021; seed 004,
SPEC §5.2): ``head`` on the CLS token, ``head_dist`` on the DIST token.

The backbone (``deit`` with ``distillation_token: true``) hands over ``[CLS, DIST]`` features
``(B, 2D)``; this head splits them. ``output.logits`` follow ``inference``: ``cls`` (CLS classifier
only), ``dist`` (DIST only) or ``avg`` (mean of both logit vectors, the paper's test-time fusion);
``output.extras`` always holds ``cls_logits`` and ``dist_logits`` so that evaluation can report
CLS-only and DIST-only accuracy. ``output.embeddings`` is the CLS feature.

Loss: label cross-entropy on both classifiers, ``ce`` (CLS) and ``ce_dist`` (DIST, term name
:data:`DIST_LABEL_TERM`), so a two-token student trained without a teacher has no untrained
classifier. A logit-distillation objective replaces ``ce_dist`` by its teacher term (DeiT: the
DIST token learns from the teacher); the seed's untrained DIST head averaged at inference
(pitfall §5.9.4) cannot happen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from imgcls.errors import ConfigError
from imgcls.models.heads.base import Head, HeadOutput, cross_entropy
from imgcls.registry import HEADS, ComponentArgs

if TYPE_CHECKING:
    from imgcls.runtime.batch import Batch

#: the loss term of the DIST classifier against labels (replaced by a teacher term under logit KD)
DIST_LABEL_TERM = "ce_dist"
INFERENCE = ("cls", "dist", "avg")


class TwoTokenHeadArgs(ComponentArgs):
    inference: Literal["cls", "dist", "avg"] = Field(
        "avg",
        description="prediction from the CLS classifier, the DIST classifier, or the mean of both logits",
    )


@HEADS.register("deit_dist", args=TwoTokenHeadArgs)
class TwoTokenHead(Head):
    #: splits [CLS, DIST] features (``build_model`` checks the backbone gives two)
    feature_tokens = 2

    def __init__(
        self, in_features: int, num_classes: int, label_smoothing: float = 0.0, inference: str = "avg"
    ) -> None:
        super().__init__(in_features, num_classes, label_smoothing)
        if in_features % 2:
            raise ConfigError(
                f"head deit_dist needs [CLS, DIST] features of even width, got {in_features}; "
                "set model.backbone_args.distillation_token=true"
            )
        if inference not in INFERENCE:
            raise ConfigError(f"deit_dist inference must be one of {', '.join(INFERENCE)}, got '{inference}'")
        self.token_dim = in_features // 2
        self.inference = inference
        self.head = torch.nn.Linear(self.token_dim, num_classes)
        self.head_dist = torch.nn.Linear(self.token_dim, num_classes)
        for fc in (self.head, self.head_dist):
            torch.nn.init.trunc_normal_(fc.weight, std=0.02)
            torch.nn.init.zeros_(fc.bias)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        cls, dist = features[:, : self.token_dim], features[:, self.token_dim :]
        cls_logits, dist_logits = self.head(cls), self.head_dist(dist)
        if self.inference == "cls":
            logits = cls_logits
        elif self.inference == "dist":
            logits = dist_logits
        else:
            logits = (cls_logits + dist_logits) / 2
        return HeadOutput(
            logits=logits, embeddings=cls, extras={"cls_logits": cls_logits, "dist_logits": dist_logits}
        )

    def loss(self, output: HeadOutput, batch: Batch) -> dict[str, torch.Tensor]:
        return {
            "ce": cross_entropy(output.extras["cls_logits"], batch, self.label_smoothing),
            DIST_LABEL_TERM: cross_entropy(output.extras["dist_logits"], batch, self.label_smoothing),
        }

"""The Head contract (MMPretrain-style: a head owns its parameters *and* its loss).

Every head maps backbone features ``(B, D)`` to a :class:`HeadOutput`, turns that output into
named loss terms, and into class probabilities. The trainer only ever calls these three
methods, sums the loss dict and logs each term, so a new method plugs in as a head without
touching the training loop.

``output.logits`` are always the scores the head *predicts* from (``predict`` reads them), whether or
not the forward saw targets, so training accuracy and validation accuracy come from the same
prediction. What only the loss needs — e.g. margin-penalised logits of ArcFace/SphereMulti, which a
forward with targets computes — goes into ``output.extras`` (``extras["loss_logits"]`` for logits
the default loss uses instead of ``output.logits``; see :func:`loss_logits`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from imgcls.runtime.batch import Batch


@dataclass
class HeadOutput:
    """What a head returns.

    logits: ``(B, C)`` scores over the classes the head predicts (leaf classes for flat heads,
        tree nodes for multi-label hierarchical heads).
    embeddings: ``(B, E)`` the representation the head classifies (used for t-SNE,
        compactness/separation and memory banks).
    extras: anything else a head needs in its own ``loss`` (e.g. auxiliary logits, or
        ``loss_logits``: training-only logits such as margin logits, which must not be used to predict).
    """

    logits: torch.Tensor
    embeddings: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


#: ``HeadOutput.extras`` key of the logits a loss uses when they differ from the predicting logits
LOSS_LOGITS = "loss_logits"


def loss_logits(output: HeadOutput) -> torch.Tensor:
    """The logits a loss is computed on: ``extras["loss_logits"]`` when the forward set them (margin
    heads with targets), else ``output.logits``."""
    return output.extras.get(LOSS_LOGITS, output.logits)


class Head(nn.Module, ABC):
    """Base class for classification heads.

    Subclasses implement ``forward``; the default ``loss`` is (label-smoothed, soft-target
    aware) cross-entropy over :func:`loss_logits` and the default ``predict`` is a softmax of
    ``output.logits``.

    ``inference_mode`` names how predictions depend on the rest of the batch:
    ``"sample"`` for ordinary heads (each sample independent); batch-graph heads declare
    ``"batch"``, ``"self"`` or ``"memory"``.
    """

    num_classes: int
    in_features: int
    #: ``"classes"`` for flat heads; ``"nodes"`` for multi-label hierarchical heads, which also implement
    #: ``predict_nodes(output) -> (B, num_nodes)``. ``predict`` always returns class probabilities.
    output_space: str = "classes"

    def __init__(self, in_features: int, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if in_features <= 0 or num_classes <= 1:
            raise ValueError(
                f"head needs in_features > 0 and num_classes > 1, got {in_features}, {num_classes}"
            )
        self.in_features = in_features
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    @property
    def inference_mode(self) -> str:
        return "sample"

    @abstractmethod
    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        """Logits and embeddings of a batch of features (targets only while training)."""

    def loss(self, output: HeadOutput, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": cross_entropy(loss_logits(output), batch, self.label_smoothing)}

    def predict(self, output: HeadOutput) -> torch.Tensor:
        return output.logits.float().softmax(dim=-1)

    def scale_logits(self, output: HeadOutput, temperature: float | torch.Tensor) -> HeadOutput:
        """``output`` with every logit ``predict`` reads divided by ``temperature`` (temperature scaling,
        ``evaluation/calibration.py``). Heads that predict from logits kept in ``extras`` override this."""
        return replace(output, logits=output.logits.float() / temperature)


def cross_entropy(logits: torch.Tensor, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against hard labels, or against ``batch.soft_targets`` after MixUp/CutMix.

    Label smoothing applies in both cases (for soft targets: ``(1-ε)·t + ε/C``), so mixing
    never silently disables it (a pitfall of seed 004).
    """
    logits = logits.float()
    if batch.soft_targets is None:
        return nn.functional.cross_entropy(logits, batch.targets, label_smoothing=label_smoothing)
    target = batch.soft_targets.float()
    if label_smoothing > 0:
        target = target * (1.0 - label_smoothing) + label_smoothing / target.shape[-1]
    return torch.sum(-target * logits.log_softmax(dim=-1), dim=-1).mean()

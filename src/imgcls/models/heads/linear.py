"""Plain classification heads: ``linear`` (one affine map) and ``mlp`` (hidden layers with
activation and dropout; with ``hidden: [64], dropout: 0.3`` it is seed 004's AdaptiveCNN
classifier, SPEC §5.1). Both use the base cross-entropy loss (label smoothing, soft targets)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from imgcls.models.heads.base import Head, HeadOutput
from imgcls.registry import HEADS

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@HEADS.register("linear")
class LinearHead(Head):
    def __init__(self, in_features: int, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__(in_features, num_classes, label_smoothing)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        return HeadOutput(logits=self.fc(features), embeddings=features)


@HEADS.register("mlp")
class MLPHead(Head):
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        label_smoothing: float = 0.0,
        hidden: list[int] | int = 256,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__(in_features, num_classes, label_smoothing)
        if activation not in ACTIVATIONS:
            from imgcls.errors import ConfigError

            raise ConfigError(f"mlp head activation '{activation}' is unknown; use one of {sorted(ACTIVATIONS)}")
        sizes = [in_features, *([hidden] if isinstance(hidden, int) else hidden)]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(sizes[-1], num_classes)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        embeddings = self.body(features)
        return HeadOutput(logits=self.fc(embeddings), embeddings=embeddings)

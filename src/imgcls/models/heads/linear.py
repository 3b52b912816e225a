"""Plain classification heads: ``linear`` (one affine map) and ``mlp`` (hidden layers with
activation and dropout; with ``hidden: [64], dropout: 0.3`` it is seed 004's AdaptiveCNN
classifier, SPEC §5.1). Both use the base cross-entropy loss (label smoothing, soft targets)."""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from imgcls.models.heads.base import Head, HeadOutput
from imgcls.registry import HEADS, ComponentArgs

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class LinearArgs(ComponentArgs):
    """``linear`` takes no arguments."""


class MLPArgs(ComponentArgs):
    """``model.head_args`` of ``mlp``."""

    hidden: list[PositiveInt] | PositiveInt = Field(
        256, description="hidden layer width(s), e.g. [64] or [512, 256]"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after each hidden layer")
    activation: Literal["relu", "gelu", "silu", "tanh"] = Field("relu", description="hidden-layer activation")


@HEADS.register("linear", args=LinearArgs)
class LinearHead(Head):
    def __init__(self, in_features: int, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__(in_features, num_classes, label_smoothing)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        return HeadOutput(logits=self.fc(features), embeddings=features)


@HEADS.register("mlp", args=MLPArgs)
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
        MLPArgs.from_init("mlp", locals())
        sizes = [in_features, *([hidden] if isinstance(hidden, int) else hidden)]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(sizes[-1], num_classes)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        embeddings = self.body(features)
        return HeadOutput(logits=self.fc(embeddings), embeddings=embeddings)

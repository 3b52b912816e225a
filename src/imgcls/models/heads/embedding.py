"""The trainable embedding block placed before a classifier head (seed 002, SPEC §3.2).

The seed's ``DevNet`` embedding: ``Flatten → Linear(1280, 1280) → ReLU → Linear(1280, E) → ReLU →
Dropout(0.2)`` on frozen EfficientNetV2-S features. Here the hidden sizes are a list
(``embedding: [1280, 512]`` reproduces it): a Linear + ReLU per size, except that the last
activation is ``embed_final_act`` — ``relu`` as in the seed, or ``none``. The final ReLU confines
embeddings to the positive orthant (pairwise angles ≤ 90°), which limits angular separation
for hyperspherical heads; ``none`` removes it. Dropout follows the last layer only (the seed's
middle dropout is commented out). An empty / missing list is the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from imgcls.errors import ConfigError
from imgcls.registry import ComponentArgs

FINAL_ACTS = ("relu", "none")


class EmbeddingArgs(ComponentArgs):
    """The embedding-MLP arguments shared by the hyperspherical heads."""

    embedding: list[PositiveInt] | None = Field(
        None,
        description="hidden sizes of the trainable embedding MLP (e.g. [1280, 512]); None: features as they are",
    )
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout after the embedding MLP")
    embed_final_act: Literal["relu", "none"] = Field(
        "relu", description="activation after the last embedding layer (relu: the seed; none: full sphere)"
    )


class EmbeddingMLP(nn.Module):
    """``in_features → hidden[0] → … → hidden[-1]`` with ReLU between layers.

    Attributes:
        out_features: width of the output (``hidden[-1]``, or ``in_features`` when empty).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] | None = None,
        dropout: float = 0.2,
        final_act: str = "relu",
    ) -> None:
        super().__init__()
        hidden = list(hidden or [])
        if any(not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in hidden):
            raise ConfigError(f"embedding sizes must be positive integers, e.g. [1280, 512]; got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"embedding dropout must be in [0, 1), got {dropout}")
        if final_act not in FINAL_ACTS:
            raise ConfigError(f"embed_final_act must be one of {', '.join(FINAL_ACTS)}, got '{final_act}'")
        layers: list[nn.Module] = []
        width = in_features
        for k, size in enumerate(hidden):
            layers.append(nn.Linear(width, size))
            if k < len(hidden) - 1 or final_act == "relu":
                layers.append(nn.ReLU())
            width = size
        if hidden and dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

"""DRA-Net head — Dynamic Residual feature Aggregation with learnable class attractors (seed 003,
leinusi/DRA-Net notebook; SPEC §4.2–4.6).

For a backbone feature ``f`` ``(B, D)``:

    h        = W_up f + b_up                                  (D → H, no activation)
    w        = softmax(W₂ ReLU(W₁ h + b₁) + b₂)                (adaptive weights over the C attractors)
    a        = Σ_c w_c² A_c   (``aggregate: squared``, the seed's code: bmm of w with w·A)
             | Σ_c w_c  A_c   (``aggregate: linear``, the seed's README)
    g        = W_down a + b_down                              (H → D)
    combined = f + g                                          (residual)
    logits   = W_b ReLU(W_a combined + b_a) + b_b             (D → hidden → C)

``A`` ``(C, H)`` holds one learnable attractor per class (C = the data's number of classes), initialised
``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` as in the seed, or — ``attractor_init:
class_means`` — at the start of the stage from the class means of the backbone features mapped into the
attractor space, ``A_c = W_up μ_c + b_up`` (done by :class:`imgcls.engine.attractor_init.ClassMeanInit`,
a callback, never by the training loop).

``HeadOutput.embeddings`` is the refined ``combined`` feature, so the evaluation's compactness, separation
and t-SNE measure the attractor module (the seed measured the backbone features only); the backbone
features are measured beside them. The loss is cross-entropy plus ``reg_weight`` × one regulariser of
:mod:`imgcls.losses.attractor` (``learned`` | ``diversity`` | ``compact`` | ``none``), logged as the loss
term ``attractor_reg`` (the weighted value). Design choices: ``docs/dra.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, ValidationError
from torch import nn

from imgcls.errors import ConfigError
from imgcls.losses.attractor import AttractorRegularizer
from imgcls.models.heads.base import Head, HeadOutput, cross_entropy
from imgcls.registry import HEADS, ComponentArgs

if TYPE_CHECKING:
    from imgcls.runtime.batch import Batch

AGGREGATIONS = ("squared", "linear")


def aggregate(weights: torch.Tensor, attractors: torch.Tensor, mode: str = "squared") -> torch.Tensor:
    """``(B, H)`` mixture of the attractors ``(C, H)`` under ``weights`` ``(B, C)``:
    ``Σ_c w_c² A_c`` (``squared``, the seed's code) or ``Σ_c w_c A_c`` (``linear``)."""
    if mode == "squared":
        return weights.pow(2) @ attractors.to(weights.dtype)
    if mode == "linear":
        return weights @ attractors.to(weights.dtype)
    raise ValueError(f"unknown aggregation '{mode}'; use one of {AGGREGATIONS}")


class DRAHeadArgs(ComponentArgs):
    high_dim: int = Field(1024, gt=0, description="width H of the attractor space (seed: 1024)")
    weights_hidden: int = Field(
        512, gt=0, description="hidden width of the adaptive-weights network (seed: 512)"
    )
    hidden_dim: int = Field(256, gt=0, description="hidden width of the MLP classifier (seed: 256)")
    aggregate: Literal["squared", "linear"] = Field(
        "squared", description="squared: Σ w² A (the seed's code); linear: Σ w A (its README)"
    )
    regularizer: Literal["none", "learned", "diversity", "compact"] = Field(
        "diversity",
        description="diversity: mean pairwise cosine of the attractors (ours); learned: the seed's MLP distance "
        "(can collapse to 0); compact: mean pairwise distance (README); none",
    )
    reg_weight: float = Field(1e-3, ge=0.0, description="λ of the regulariser (seed: lambda_reg 1e-3)")
    metric_hidden: int | None = Field(
        None, gt=0, description="hidden width of the learned distance (None: high_dim)"
    )
    attractor_init: Literal["kaiming", "class_means"] = Field(
        "kaiming",
        description="kaiming (seed) or class_means: A_c = W_up·(class mean of backbone features) at stage start",
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside the MLP classifier (seed: none)")


@HEADS.register("dra", args=DRAHeadArgs)
class DRAHead(Head):
    """The DRA-Net head (see the module docstring); arguments as in :class:`DRAHeadArgs`."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        label_smoothing: float = 0.0,
        high_dim: int = 1024,
        weights_hidden: int = 512,
        hidden_dim: int = 256,
        aggregate: str = "squared",
        regularizer: str = "diversity",
        reg_weight: float = 1e-3,
        metric_hidden: int | None = None,
        attractor_init: str = "kaiming",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_features, num_classes, label_smoothing)
        try:  # direct construction (tests, benchmarks) gets the same checks as a config
            DRAHeadArgs(
                high_dim=high_dim,
                weights_hidden=weights_hidden,
                hidden_dim=hidden_dim,
                aggregate=aggregate,
                regularizer=regularizer,
                reg_weight=reg_weight,
                metric_hidden=metric_hidden,
                attractor_init=attractor_init,
                dropout=dropout,
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(
                f"invalid dra head_args.{'.'.join(map(str, err['loc']))}={err.get('input')!r}: {err['msg']}"
            ) from None
        self.aggregate_mode = aggregate
        self.reg_weight = float(reg_weight)
        self.attractor_init = attractor_init
        self.attractors = nn.Parameter(torch.empty(num_classes, high_dim))
        nn.init.kaiming_normal_(self.attractors, mode="fan_out", nonlinearity="relu")
        self.up = nn.Linear(in_features, high_dim)
        self.weights_net = nn.Sequential(
            nn.Linear(high_dim, weights_hidden), nn.ReLU(), nn.Linear(weights_hidden, num_classes)
        )
        self.down = nn.Linear(high_dim, in_features)
        self.classifier = nn.Sequential(
            nn.Linear(in_features, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )
        self.regularizer = AttractorRegularizer(regularizer, high_dim, metric_hidden)

    # -------------------------------------------------------------------------------- class-mean init
    @classmethod
    def needs_class_mean_init(cls, head_args: dict[str, Any]) -> bool:
        """Whether a head built from ``head_args`` wants its attractors set from class means at stage start."""
        return head_args.get("attractor_init") == "class_means"

    @property
    def wants_class_mean_init(self) -> bool:
        return self.attractor_init == "class_means"

    @torch.no_grad()
    def init_from_class_means(self, means: torch.Tensor, present: torch.Tensor | None = None) -> None:
        """Set ``A_c = W_up μ_c + b_up`` for every class ``c`` with ``present[c]`` (default: all).

        ``means`` ``(C, D)`` are class means of the backbone features; absent classes keep their attractor."""
        if means.shape != (self.num_classes, self.in_features):
            raise ValueError(
                f"class means must be ({self.num_classes}, {self.in_features}), got {tuple(means.shape)}"
            )
        mapped = self.up(means.to(self.attractors.device, self.up.weight.dtype))
        mask = torch.ones(self.num_classes, dtype=torch.bool) if present is None else present.bool().cpu()
        self.attractors[mask.to(self.attractors.device)] = mapped[mask.to(mapped.device)].to(
            self.attractors.dtype
        )

    # -------------------------------------------------------------------------------- forward / loss
    def adaptive_weights(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` softmax weights over the attractors."""
        return self.weights_net(self.up(features)).float().softmax(dim=-1)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        weights = self.adaptive_weights(features)
        mixed = aggregate(weights.to(self.attractors.dtype), self.attractors, self.aggregate_mode)
        combined = features + self.down(mixed)
        logits = self.classifier(combined)
        return HeadOutput(logits=logits, embeddings=combined, extras={"attractor_weights": weights})

    def regularizer_value(self) -> torch.Tensor:
        """The unweighted regulariser ``R(A)`` (0 for ``none``)."""
        return self.regularizer(self.attractors)

    def loss(self, output: HeadOutput, batch: Batch) -> dict[str, torch.Tensor]:
        terms = {"ce": cross_entropy(output.logits, batch, self.label_smoothing)}
        if self.regularizer.kind != "none":
            terms["attractor_reg"] = self.reg_weight * self.regularizer_value()
        return terms

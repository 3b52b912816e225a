"""VGG-5: a small VGG-style convolutional backbone, the "VGG-5" baseline of seed 000's table (SPEC §1.3).

The seed lists "VGG-5" (CIFAR-10 0.904, MNIST 0.990, STL-10 0.940; 81.55 MB, 19.63 GFLOPs) without any
definition, and its repository has no VGG code. Our reading [INFERRED]: Simonyan & Zisserman's VGG
building block — 3×3 convolution (padding 1) → BatchNorm → ReLU, with 2×2 max-pooling between stages —
with **five** convolution layers, then a global average pool, so the backbone ends in a ``(B, C_5)``
feature vector like every other backbone (the classifier is the head: ``linear``, or ``mlp`` for
VGG's fully connected layers). Defaults: widths 64-128-256-256-512 with a pool after convolutions
1, 2, 4 and 5 (VGG-11's first five convolutions and pools), 2.14 M parameters. The seed's 81.55 MB
(≈ 21 M fp32 parameters) and 19.63 GFLOPs cannot be derived from the name; wider layers
(``channels``) or an ``mlp`` head with large hidden layers move towards them.
"""

from __future__ import annotations

import torch
from pydantic import Field, ValidationError, field_validator
from torch import nn

from imgcls.errors import ConfigError
from imgcls.registry import BACKBONES, ComponentArgs


class VGG5Args(ComponentArgs):
    channels: list[int] = Field(
        default_factory=lambda: [64, 128, 256, 256, 512],
        description="output width of each of the five 3×3 convolutions",
    )
    pool_after: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 5],
        description="2×2 max-pool after these convolutions (1-based; skipped once the map is 1 px)",
    )
    batch_norm: bool = Field(True, description="BatchNorm after each convolution (VGG-BN); false: plain VGG")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the pooled features")

    @field_validator("channels")
    @classmethod
    def _five(cls, v: list[int]) -> list[int]:
        if len(v) != 5 or any(c < 1 for c in v):
            raise ValueError("VGG-5 has exactly five convolutions: give five widths >= 1")
        return v

    @field_validator("pool_after")
    @classmethod
    def _positions(cls, v: list[int]) -> list[int]:
        if any(not 1 <= i <= 5 for i in v) or len(set(v)) != len(v):
            raise ValueError("pool_after lists distinct convolution numbers between 1 and 5")
        return sorted(v)


class VGG5(nn.Module):
    """Five ``conv3×3 → (BN) → ReLU`` layers with max-pools, then global average pooling."""

    def __init__(
        self,
        in_chans: int = 3,
        channels: list[int] | None = None,
        pool_after: list[int] | None = None,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        given = {"channels": channels, "pool_after": pool_after}
        try:
            args = VGG5Args(
                **{k: v for k, v in given.items() if v is not None}, batch_norm=batch_norm, dropout=dropout
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(
                f"bad model.backbone_args.{'.'.join(map(str, err['loc']))} for vgg5: "
                f"{err['msg'].removeprefix('Value error, ')}"
            ) from None
        layers: list[nn.Module] = []
        c_in = in_chans
        for i, c_out in enumerate(args.channels, start=1):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not args.batch_norm)]
            if args.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            if i in args.pool_after:
                layers.append(MaxPoolIfLarger())
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(args.dropout) if args.dropout > 0 else nn.Identity()
        self.num_features = args.channels[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pool(self.features(x)).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class MaxPoolIfLarger(nn.MaxPool2d):
    """2×2 max-pool that leaves a 1-pixel map alone (small inputs such as 28-px MNIST after four pools)."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if min(x.shape[-2:]) < 2 else super().forward(x)


@BACKBONES.register("vgg5", args=VGG5Args)
def vgg5(
    in_chans: int = 3,
    channels: list[int] | None = None,
    pool_after: list[int] | None = None,
    batch_norm: bool = True,
    dropout: float = 0.0,
) -> VGG5:
    return VGG5(in_chans, channels, pool_after, batch_norm, dropout)

"""AdaptiveCNN: residual blocks with squeeze-and-excitation (seed 004, SPEC §5.1).

Two fixed layouts from the seed's ``src/models.py``: ``mnist`` (1×28×28, stem with max-pool,
6 blocks 32→64→128, ≈ 709 K parameters with the seed's 128→64→C classifier) and ``cifar``
(3×32×32, 11 blocks 64→128→256→512, ≈ 17.6 M with the 512→256→C classifier). The backbone ends
at the global average pool; the seed's classifier is our ``mlp`` head (hidden 64 or 256,
dropout 0.3). SE (Hu et al., 2018) uses reduction 16 and bias-free linear layers.
``norm: group`` swaps BatchNorm for GroupNorm (Wu & He, 2018; 8 groups where the width allows),
an addition of ours: the outputs no longer depend on the rest of the batch, so tiny per-rank
batches and DDP runs behave exactly like one process. ``blocks`` / ``stem_pool`` (also ours) replace a
layout's residual blocks and stem max-pool, e.g. a wider last stage, where a 4×4 map makes width cheap.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from imgcls.errors import ConfigError
from imgcls.registry import BACKBONES, ComponentArgs


class SEBlock(nn.Module):
    """Squeeze-and-excitation: GAP → Linear(C, C/r) → ReLU → Linear(C/r, C) → sigmoid → channel scale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc(x.mean(dim=(2, 3)))
        return x * scale[:, :, None, None]


NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, or GroupNorm with 8 groups (1 when the width is not a multiple of 8)."""
    if kind == "group":
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    return nn.BatchNorm2d(channels)


class ResidualBlock(nn.Module):
    """conv3×3(stride) → BN → ReLU → conv3×3 → BN → SE → + shortcut → ReLU."""

    def __init__(
        self, c_in: int, c_out: int, stride: int = 1, use_se: bool = True, norm: str = "batch"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, c_out)
        self.se = SEBlock(c_out) if use_se else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm_layer(norm, c_out)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


#: (stem channels, stem max-pool, [(out channels, stride), ...]) per layout, as in the seed's code.
LAYOUTS = {
    "mnist": (32, True, [(32, 1), (32, 1), (64, 2), (64, 1), (128, 2), (128, 1)]),
    "cifar": (
        64,
        False,
        [
            (64, 1),
            (64, 1),
            (128, 2),
            (128, 1),
            (128, 1),
            (256, 2),
            (256, 1),
            (256, 1),
            (512, 2),
            (512, 1),
            (512, 1),
        ],
    ),
}
#: the seed's classifier hidden width per layout (use with the ``mlp`` head)
CLASSIFIER_HIDDEN = {"mnist": 64, "cifar": 256}


class AdaptiveCNNArgs(ComponentArgs):
    """``model.backbone_args`` of ``adaptive_cnn``."""

    layout: Literal["mnist", "cifar"] = Field(
        "mnist", description="mnist: 1x28x28, 6 blocks; cifar: 3x32x32, 11 blocks"
    )
    use_se: bool = Field(True, description="squeeze-and-excitation in every residual block")
    width_mult: float = Field(1.0, gt=0.0, description="multiplier of every width (at least 8 channels)")
    norm: Literal["batch", "group"] = Field(
        "batch", description="BatchNorm, or GroupNorm (batch-independent)"
    )
    blocks: list[tuple[int, Literal[1, 2]]] | None = Field(
        None,
        min_length=1,
        description="[[out channels, stride], ...] per residual block (before width_mult); None: the layout's",
    )
    stem_pool: bool | None = Field(None, description="2x2 max-pool after the stem; None: the layout's")

    @field_validator("blocks")
    @classmethod
    def _positive_widths(cls, blocks):
        if blocks is not None and any(c <= 0 for c, _ in blocks):
            raise ValueError("every block's out channels must be positive")
        return blocks


class AdaptiveCNN(nn.Module):
    def __init__(
        self,
        layout: str = "mnist",
        in_chans: int = 1,
        use_se: bool = True,
        width_mult: float = 1.0,
        norm: str = "batch",
        blocks: list[tuple[int, int]] | None = None,
        stem_pool: bool | None = None,
    ) -> None:
        super().__init__()
        AdaptiveCNNArgs.from_init("adaptive_cnn", locals())
        stem, layout_pool, layout_blocks = LAYOUTS[layout]
        pool = layout_pool if stem_pool is None else stem_pool
        blocks = layout_blocks if blocks is None else [tuple(b) for b in blocks]
        w = lambda c: max(8, round(c * width_mult))  # noqa: E731
        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, w(stem), 3, 1, 1, bias=False),
            norm_layer(norm, w(stem)),
            nn.ReLU(inplace=True),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        c = w(stem)
        for c_out, stride in blocks:
            layers.append(ResidualBlock(c, w(c_out), stride, use_se, norm))
            c = w(c_out)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)

    def forward_tokens(self, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Feature maps of the given residual blocks (0-based, negatives count from the end) as tokens
        ``(B, H·W, C)`` — a CNN teacher's "tokens" for token distillation (docs/distillation.md)."""
        blocks = [i for i, m in enumerate(self.features) if isinstance(m, ResidualBlock)]
        wanted = {}
        for layer in layers:
            if not -len(blocks) <= layer < len(blocks):
                raise ConfigError(
                    f"adaptive_cnn has residual blocks 0..{len(blocks) - 1}; layer {layer} does not exist"
                )
            wanted[blocks[layer]] = layer
        out: dict[int, torch.Tensor] = {}
        for i, module in enumerate(self.features[: max(wanted) + 1]):
            x = module(x)
            if i in wanted:
                out[wanted[i]] = x.flatten(2).transpose(1, 2)
        return {layer: out[layer] for layer in layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@BACKBONES.register("adaptive_cnn", args=AdaptiveCNNArgs)
def adaptive_cnn(
    in_chans: int = 1,
    layout: str = "mnist",
    use_se: bool = True,
    width_mult: float = 1.0,
    norm: str = "batch",
    blocks: list[tuple[int, int]] | None = None,
    stem_pool: bool | None = None,
) -> AdaptiveCNN:
    return AdaptiveCNN(
        layout=layout,
        in_chans=in_chans,
        use_se=use_se,
        width_mult=width_mult,
        norm=norm,
        blocks=blocks,
        stem_pool=stem_pool,
    )

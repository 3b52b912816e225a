"""DeiT with a hybrid convolutional patch embedding, as seed 004 built it (SPEC §5.2; Touvron et al.,
"Training data-efficient image transformers & distillation through attention", ICML 2021).

Patch embedding: optional 1×1 ``channel_expand`` (grayscale → 3 channels, no bias) → conv stem
(3×3 conv → BN → GELU, twice, full resolution; seed widths 96 → 192) → a ``patch_size``-strided
convolution to ``embed_dim``. Tokens: ``[CLS, (DIST), patches]`` + a learned positional embedding
(trunc-normal 0.02), then ``depth`` pre-norm blocks
``x += DropPath(MHSA(LN(x))); x += DropPath(MLP(LN(x)))`` with ``F.scaled_dot_product_attention``
and a linear drop-path schedule ``linspace(0, drop_path_rate, depth)``, and a final LayerNorm.

Outputs (the backbone contract, DESIGN.md):

* ``forward_features(x)`` → the normed CLS token ``(B, D)``; with ``distillation_token: true`` the
  concatenation ``[CLS, DIST]`` ``(B, 2D)`` (``num_features`` = 2D), which the ``deit_dist`` head
  splits into its two classifiers. **CLS-token dropout** (seed: probability 0.1 per sample,
  training only) replaces a sample's normed CLS output by the mean of its normed patch tokens.
* ``forward_tokens(x, layers)`` → ``{block index: (B, N, D)}`` patch tokens (prefix tokens dropped)
  of the given blocks *before* the final LayerNorm, as the seed's ``forward_with_intermediates``;
  no CLS-token dropout. ``blocks``, ``norm`` and ``num_prefix_tokens`` are public so that token
  distillation can capture the same tensors with hooks during the ordinary forward pass.

Seed sizes (12 blocks, width 192, 3 heads, MLP ratio 2, stem 96/192, dist token): 28 px / patch 2
(196 tokens, MNIST) ≈ 3.92 M parameters with a two-token 10-way head, 32 px / patch 4 (64 tokens,
CIFAR-10) ≈ 4.34 M. Initialisation as the seed: linear trunc-normal 0.02 / bias 0, LayerNorm and
BatchNorm (1, 0), convolutions normal(0, √(2/fan_out)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from imgcls.errors import ConfigError
from imgcls.registry import BACKBONES, ComponentArgs


class DeiTArgs(ComponentArgs):
    img_size: int = Field(32, gt=0, description="input side in pixels (28 for MNIST-like data, 32 for CIFAR)")
    patch_size: int = Field(
        4, gt=0, description="patch side after the conv stem (seed: 2 at 28 px, 4 at 32 px)"
    )
    embed_dim: int = Field(192, gt=0, description="token width (DeiT-tiny: 192)")
    depth: int = Field(12, gt=0, description="number of transformer blocks")
    num_heads: int = Field(3, gt=0, description="attention heads (embed_dim must divide by it)")
    mlp_ratio: float = Field(2.0, gt=0, description="MLP hidden width / embed_dim (seed: 2.0)")
    qkv_bias: bool = Field(True, description="bias in the query/key/value projection")
    drop_rate: float = Field(
        0.0, ge=0, lt=1, description="dropout after the positional embedding and in MLP/projection"
    )
    attn_drop_rate: float = Field(0.0, ge=0, lt=1, description="attention-probability dropout")
    drop_path_rate: float = Field(
        0.1, ge=0, lt=1, description="stochastic depth of the last block (linear from 0)"
    )
    distillation_token: bool = Field(
        False, description="add a DIST token; features become [CLS, DIST] (use head deit_dist)"
    )
    conv_stem: bool = Field(
        True, description="hybrid patch embedding: two 3×3 conv-BN-GELU layers before the patch conv"
    )
    stem_channels: list[int] = Field([96, 192], description="widths of the conv stem layers (seed: 96, 192)")
    channel_expand: bool = Field(
        False, description="grayscale input: a bias-free 1×1 conv to 3 channels first (seed)"
    )
    cls_token_dropout: float = Field(
        0.1,
        ge=0,
        le=1,
        description="training only: per-sample probability to replace the CLS output by the patch-token mean",
    )


class HybridPatchEmbed(nn.Module):
    """(channel expand) → conv stem → strided patch convolution → tokens ``(B, N, D)``."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: int,
        conv_stem: bool,
        stem_channels: list[int],
        channel_expand: bool,
    ) -> None:
        super().__init__()
        self.expand = nn.Conv2d(in_chans, 3, 1, bias=False) if channel_expand else nn.Identity()
        c = 3 if channel_expand else in_chans
        layers: list[nn.Module] = []
        if conv_stem:
            for width in stem_channels:
                layers += [nn.Conv2d(c, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.GELU()]
                c = width
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(self.expand(x))).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x += DropPath(MHSA(LN(x))); x += DropPath(MLP(LN(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)  # timm's: fc1 → GELU → drop → fc2 → drop
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DeiT(nn.Module):
    def __init__(
        self,
        in_chans: int = 3,
        img_size: int = 32,
        patch_size: int = 4,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        distillation_token: bool = False,
        conv_stem: bool = True,
        stem_channels: list[int] | tuple[int, ...] = (96, 192),
        channel_expand: bool = False,
        cls_token_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(f"deit: img_size {img_size} must be a multiple of patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ConfigError(f"deit: embed_dim {embed_dim} must be a multiple of num_heads {num_heads}")
        if not 0.0 <= cls_token_dropout <= 1.0:
            raise ConfigError(f"deit: cls_token_dropout must be in [0, 1], got {cls_token_dropout}")
        self.img_size, self.patch_size = img_size, patch_size
        self.grid = img_size // patch_size
        self.embed_dim = embed_dim
        self.cls_token_dropout = cls_token_dropout
        self.patch_embed = HybridPatchEmbed(
            in_chans, embed_dim, patch_size, conv_stem, list(stem_channels), channel_expand
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distillation_token else None
        #: CLS (+ DIST) tokens in front of the patch tokens
        self.num_prefix_tokens = 2 if distillation_token else 1
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.grid * self.grid + self.num_prefix_tokens, embed_dim)
        )
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, r) for r in rates]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim * self.num_prefix_tokens
        #: token features concatenated in ``forward_features`` (checked against the head's by ``build_model``)
        self.feature_tokens = self.num_prefix_tokens
        for p in (self.pos_embed, self.cls_token, self.dist_token):
            if p is not None:
                trunc_normal_(p, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(
                f"deit expects {self.img_size}×{self.img_size} inputs, got {tuple(x.shape[-2:])}"
            )
        tokens = self.patch_embed(x)
        prefix = [self.cls_token.expand(tokens.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(tokens.shape[0], -1, -1))
        return self.pos_drop(torch.cat([*prefix, tokens], dim=1) + self.pos_embed)

    def _layer_indices(self, layers: list[int] | None) -> list[int]:
        depth = len(self.blocks)
        if layers is None:
            return list(range(depth))
        out = []
        for i in layers:
            j = i + depth if i < 0 else i
            if not 0 <= j < depth:
                raise ConfigError(f"deit has blocks 0..{depth - 1}; layer {i} does not exist")
            out.append(j)
        return out

    def forward_tokens(self, x: torch.Tensor, layers: list[int] | None = None) -> dict[int, torch.Tensor]:
        """Patch tokens ``(B, N, D)`` at the output of each requested block (before the final LayerNorm)."""
        wanted = self._layer_indices(layers)
        x = self._embed(x)
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            x = block(x)
            if i in wanted:
                out[i] = x[:, self.num_prefix_tokens :]
        return {i: out[j] for i, j in zip(layers if layers is not None else wanted, wanted, strict=True)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        cls = x[:, 0]
        if self.training and self.cls_token_dropout > 0:
            drop = torch.rand(x.shape[0], 1, device=x.device) < self.cls_token_dropout
            cls = torch.where(drop, x[:, self.num_prefix_tokens :].mean(dim=1), cls)
        if self.dist_token is None:
            return cls
        return torch.cat([cls, x[:, 1]], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@BACKBONES.register("deit", args=DeiTArgs)
def deit(in_chans: int = 3, **kwargs) -> DeiT:
    return DeiT(in_chans=in_chans, **kwargs)

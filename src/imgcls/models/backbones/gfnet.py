"""GFNet: global filter networks (Rao et al., NeurIPS 2021), as seed 001 used it for the ASL
alphabet (SPEC §2.3, §6.1).

Patch embedding → learned positional embedding → blocks of [global filter (rfft2 → learnable
complex weight of shape H × (W/2+1) × C → irfft2, ``norm="ortho"``, computed in fp32 because
half-precision FFTs need power-of-two sizes) + MLP] → LayerNorm → mean over tokens.
``block_style: seed`` (default) uses the seed's two residuals per block,
``x = x + DropPath(GF(LN(x))); x = x + DropPath(MLP(LN(x)))``; ``original`` uses the paper's one,
``x = x + DropPath(MLP(LN(GF(LN(x)))))``. Filter init: ``randn/sqrt(dim)`` (seed) or ``randn·0.02``
(paper), via ``filter_init``. The seed's ASL model: ``img_size=96, patch_size=8, in_chans=1,
embed_dim=256, depth=8, drop_rate=0.2, drop_path_rate=0.1`` (4,618,012 parameters with a 28-way head).
The complex filter is stored as two real 3-D parameters (see :class:`GlobalFilter`), so channels_last
conversion of the model cannot break it (issue 14).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn

from imgcls.registry import BACKBONES, ComponentArgs


class GFNetArgs(ComponentArgs):
    """``model.backbone_args`` of ``gfnet`` (defaults: the seed's ASL model)."""

    img_size: int = Field(96, gt=0, description="input size in pixels (a multiple of patch_size)")
    patch_size: int = Field(8, gt=0, description="patch size in pixels")
    embed_dim: int = Field(256, gt=0, description="token width")
    depth: int = Field(8, ge=1, description="number of global-filter blocks")
    mlp_ratio: float = Field(4.0, gt=0.0, description="MLP hidden width / embed_dim")
    drop_rate: float = Field(0.2, ge=0.0, lt=1.0, description="dropout")
    drop_path_rate: float = Field(0.1, ge=0.0, lt=1.0, description="stochastic depth, linear over the blocks")
    block_style: Literal["seed", "original"] = Field(
        "seed", description="seed: two residuals per block; original: one"
    )
    filter_init: Literal["seed", "original"] = Field(
        "seed", description="filter init randn/sqrt(dim) (seed) or randn*0.02"
    )

    @model_validator(mode="after")
    def _patches_tile_the_image(self) -> GFNetArgs:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"gfnet: img_size {self.img_size} must be a multiple of patch_size {self.patch_size}"
            )
        return self


class GlobalFilter(nn.Module):
    """``irfft2(rfft2(x) · K)`` over the token grid, with a learnable complex filter ``K`` of logical
    shape ``h × (w//2+1) × dim`` (the rfft2 half-spectrum along the width).

    ``K`` is stored as two real 3-D parameters, ``weight_real`` and ``weight_imag``: a 4-D
    ``(h, w//2+1, dim, 2)`` parameter (the seed's and the paper's layout) is given channels-last
    strides by ``model.to(memory_format=torch.channels_last)``, after which ``view_as_complex``
    refuses it; no memory-format conversion touches 3-D tensors, and real parameters keep every
    optimiser, EMA, grad-clip and safetensors path real-valued. Checkpoints holding the old
    ``complex_weight`` load unchanged (converted in ``_load_from_state_dict``).
    """

    def __init__(self, dim: int, h: int, w: int, init: str = "seed") -> None:
        super().__init__()
        scale = 1.0 / math.sqrt(dim) if init == "seed" else 0.02
        self.h, self.w = h, w
        weight = torch.randn(h, w // 2 + 1, dim, 2) * scale
        self.weight_real = nn.Parameter(weight[..., 0].clone())
        self.weight_imag = nn.Parameter(weight[..., 1].clone())

    @property
    def filter_shape(self) -> tuple[int, int, int]:
        """The logical (complex) filter shape ``h × (w//2+1) × dim``."""
        return tuple(self.weight_real.shape)  # type: ignore[return-value]

    def complex_filter(self) -> torch.Tensor:
        return torch.complex(self.weight_real.float(), self.weight_imag.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            grid = x.float().reshape(b, self.h, self.w, c)
            freq = torch.fft.rfft2(grid, dim=(1, 2), norm="ortho")
            freq = freq * self.complex_filter()
            out = torch.fft.irfft2(freq, s=(self.h, self.w), dim=(1, 2), norm="ortho")
        return out.reshape(b, n, c).to(dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        old = state_dict.pop(prefix + "complex_weight", None)
        if old is not None:  # checkpoints written before the real/imag split
            state_dict[prefix + "weight_real"] = old[..., 0].contiguous()
            state_dict[prefix + "weight_imag"] = old[..., 1].contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class GFBlock(nn.Module):
    def __init__(
        self, dim: int, mlp_ratio: float, drop: float, drop_path: float, h: int, w: int, style: str, init: str
    ) -> None:
        super().__init__()
        self.style = style
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.filter = GlobalFilter(dim, h, w, init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)  # timm's: fc1 → GELU → drop → fc2 → drop
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.style == "seed":
            x = x + self.drop_path(self.filter(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        return x + self.drop_path(self.mlp(self.norm2(self.filter(self.norm1(x)))))


class GFNet(nn.Module):
    def __init__(
        self,
        img_size: int = 96,
        patch_size: int = 8,
        in_chans: int = 1,
        embed_dim: int = 256,
        depth: int = 8,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.1,
        block_style: str = "seed",
        filter_init: str = "seed",
    ) -> None:
        super().__init__()
        GFNetArgs.from_init("gfnet", locals())
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(
            *[
                GFBlock(embed_dim, mlp_ratio, drop_rate, r, self.grid, self.grid, block_style, filter_init)
                for r in rates
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.num_features = embed_dim
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_tokens(self, x: torch.Tensor, layers: list[int] | None = None) -> dict[int, torch.Tensor]:
        x = self.pos_drop(self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed)
        out = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if layers is None or i in layers:
                out[i] = x
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.grid * self.patch_embed.stride[0]:
            raise ValueError(
                f"gfnet expects {self.grid * self.patch_embed.stride[0]}-px inputs, got {x.shape[-1]}"
            )
        tokens = self.forward_tokens(x, [len(self.blocks) - 1])[len(self.blocks) - 1]
        return self.norm(tokens).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@BACKBONES.register("gfnet", args=GFNetArgs)
def gfnet(in_chans: int = 1, **kwargs) -> GFNet:
    return GFNet(in_chans=in_chans, **kwargs)

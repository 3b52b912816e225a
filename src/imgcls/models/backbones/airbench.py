"""Airbench: the CIFAR-10 speed-run network of Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU"
(arXiv:2404.00498; github.com/KellerJordan/cifar10-airbench, ``airbench94.py``), as a backbone (issue 11, P3:
more accuracy per second of training).

The network: a 2×2 convolution whose weights start as the **whitening** of the training images' patches (the
eigenvectors of their second-moment matrix scaled by ``1/sqrt(eigenvalue + eps)``, and the same with the sign
flipped, so ``2·C·k²`` channels), then GELU, then three groups of
``conv3×3 → max-pool 2 → BN → GELU → conv3×3 → BN → GELU`` (widths 64-256-256), a global max-pool, and the
pooled features scaled by 1/9. Every 3×3 convolution starts as an identity on its first input channels
(``dirac_``: an implicit residual); the BatchNorms keep 0.6 of their running statistics per step.

Differences from ``airbench94.py``, all because imgcls splits a backbone from its head and runs on any input:
- the pooled features are scaled by ``feature_scale`` (1/9) before the head; airbench scales the logits of its
  bias-free linear layer by 1/9, which a ``linear`` head on the scaled features computes up to its bias;
- the global pool is adaptive (airbench's ``MaxPool2d(3)`` assumes 32-px inputs);
- BatchNorm's ``eps`` is PyTorch's 1e-5, not 1e-12: on the CPU the normalisation may run in bfloat16;
- every parameter trains: airbench freezes the whitening filters and the BatchNorm scales (on a GPU, a
  speed-up); the Fashion-MNIST screens of ``benchmarks/results/p3_explorations.md`` trained them;
- the whitening is set by :class:`imgcls.engine.whitening_init.PatchWhiteningInit` before the first step
  (5,000 training images, as airbench), which any run with this backbone gets; airbench's optimiser tricks
  (64× learning rate for norm biases, lookahead, freezing the whitening bias after 3 epochs) are not
  reproduced: the engine's optimiser, schedule and EMA train it (``configs/fashion_mnist/airbench.yaml``).
"""

from __future__ import annotations

import itertools

import torch
from pydantic import Field, field_validator
from torch import nn

from imgcls.models.backbones.vgg import MaxPoolIfLarger
from imgcls.registry import BACKBONES, ComponentArgs


class AirbenchArgs(ComponentArgs):
    widths: list[int] = Field(
        default_factory=lambda: [64, 256, 256], description="output width of each of the three conv groups"
    )
    whiten_kernel: int = Field(2, ge=1, le=7, description="side of the whitening convolution's patches")
    whiten_eps: float = Field(5e-4, gt=0.0, description="added to each eigenvalue before whitening")
    bn_keep: float = Field(
        0.6,
        ge=0.0,
        lt=1.0,
        description="share of BatchNorm's running statistics kept per step (airbench's 'batchnorm_momentum'; "
        "PyTorch's momentum is 1 - this)",
    )
    feature_scale: float = Field(1 / 9, gt=0.0, description="multiplies the pooled features (airbench: 1/9)")

    @field_validator("widths")
    @classmethod
    def _three(cls, v: list[int]) -> list[int]:
        if len(v) != 3 or any(c < 1 for c in v):
            raise ValueError("airbench has three conv groups: give three widths >= 1")
        return v


def _identity_start_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3×3 convolution, no bias, whose first ``min(c_in, c_out)`` filters start as the identity."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: conv.weight.shape[1]])
    return conv


def _norm(channels: int, keep: float) -> nn.BatchNorm2d:
    """BatchNorm keeping ``keep`` of its running statistics per step (PyTorch's momentum is ``1 - keep``)."""
    return nn.BatchNorm2d(channels, momentum=1.0 - keep)


class ConvGroup(nn.Module):
    """``conv → max-pool 2 → BN → GELU → conv → BN → GELU``."""

    def __init__(self, c_in: int, c_out: int, keep: float) -> None:
        super().__init__()
        self.conv1 = _identity_start_conv(c_in, c_out)
        self.pool = MaxPoolIfLarger()  # 2×2; a 1-px map (a small input) passes through
        self.norm1 = _norm(c_out, keep)
        self.conv2 = _identity_start_conv(c_out, c_out)
        self.norm2 = _norm(c_out, keep)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


@torch.no_grad()
def patch_second_moments(images: torch.Tensor, kernel: int) -> tuple[torch.Tensor, int]:
    """Sum of ``p pᵀ`` (float64, ``(C·k², C·k²)``) over every ``k×k`` patch ``p`` of ``images`` ``(N, C, H, W)``,
    and the number of patches; flattened in a convolution weight's ``(C, kh, kw)`` order."""
    c = images.shape[1]
    patches = images.unfold(2, kernel, 1).unfold(3, kernel, 1)  # (N, C, H', W', k, k)
    flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kernel * kernel).double()
    return flat.T @ flat, flat.shape[0]


def whitening_filters(second_moment: torch.Tensor, channels: int, kernel: int, eps: float) -> torch.Tensor:
    """The whitening convolution's weight ``(2·C·k², C, k, k)`` for a patch second-moment matrix: its eigenvectors
    (largest eigenvalue first) divided by ``sqrt(eigenvalue + eps)``, then the same negated."""
    eigenvalues, eigenvectors = torch.linalg.eigh(second_moment.double())
    order = torch.arange(len(eigenvalues) - 1, -1, -1)
    scaled = eigenvectors.T[order] / torch.sqrt(eigenvalues[order].clamp_min(0.0) + eps)[:, None]
    filters = scaled.reshape(-1, channels, kernel, kernel)
    return torch.cat([filters, -filters]).float()


@BACKBONES.register("airbench", args=AirbenchArgs)
class Airbench(nn.Module):
    """Patch-whitening convolution, three conv groups, global max-pool, scaled features."""

    #: tells :func:`imgcls.engine.whitening_init.whitening_init_callbacks` (which reads it from the registered
    #: class) to set the whitening before training
    wants_patch_whitening_init = True

    def __init__(
        self,
        in_chans: int = 3,
        widths: list[int] | None = None,
        whiten_kernel: int = 2,
        whiten_eps: float = 5e-4,
        bn_keep: float = 0.6,
        feature_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        args = AirbenchArgs.from_init("airbench", {k: v for k, v in dict(locals()).items() if v is not None})
        self.in_chans, self.whiten_kernel, self.whiten_eps = in_chans, args.whiten_kernel, args.whiten_eps
        self.feature_scale = args.feature_scale
        whiten_width = 2 * in_chans * args.whiten_kernel**2
        self.whiten = nn.Conv2d(in_chans, whiten_width, args.whiten_kernel, padding=0, bias=True)
        nn.init.zeros_(self.whiten.bias)  # its weight is set from the data by PatchWhiteningInit
        widths = [whiten_width, *args.widths]
        self.groups = nn.Sequential(*(ConvGroup(a, b, args.bn_keep) for a, b in itertools.pairwise(widths)))
        self.act = nn.GELU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.num_features = args.widths[-1]

    @torch.no_grad()
    def init_whitening(self, second_moment: torch.Tensor) -> None:
        """Set the whitening filters from the patch second-moment matrix (see :func:`patch_second_moments`)."""
        weight = whitening_filters(second_moment, self.in_chans, self.whiten_kernel, self.whiten_eps)
        self.whiten.weight.copy_(weight.to(self.whiten.weight))

    def pad_to_patch(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` zero-padded (right, bottom) to at least one whitening patch; unchanged when it is that large."""
        short = [max(0, self.whiten_kernel - size) for size in x.shape[-2:]]
        return nn.functional.pad(x, (0, short[1], 0, short[0])) if any(short) else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(self.pad_to_patch(x))))
        return self.pool(x).flatten(1) * self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

"""Grad-CAM heat maps (Selvaraju et al., 2017) with pytorch-grad-cam, for CNNs and ViTs
(seed 004's ``test`` command draws Grad-CAM on the last conv; SPEC §5.6).

The work here is choosing the layer and, for token models, turning tokens back into a map:

1. a backbone may name its own layer: ``backbone.cam_target() -> (module, reshape_transform | None)``
   (for our own token backbones, e.g. GFNet);
2. timm ViT-style models (``blocks`` + ``num_prefix_tokens``): the last block's ``norm1``, whose
   patch tokens still feed the class token through that block's attention (the layer the
   pytorch-grad-cam ViT tutorial uses); the reshape drops the ``num_prefix_tokens`` class /
   distillation / register tokens and lays the rest on the patch grid;
3. other timm models: the last stage of ``feature_info`` (NHWC stages, e.g. Swin, are permuted);
4. our own token backbones (``forward_tokens`` + ``blocks``, e.g. GFNet): the last block's output
   tokens (``num_prefix_tokens`` dropped, default 0) on the ``grid`` × ``grid`` patch grid — GFNet
   mean-pools them, so this is the classic CAM setting;
5. any other CNN: the last module that runs once and outputs a spatial ``(B, C, H, W)`` map
   with H·W > 1 and no token sequence after it — the output of the last convolutional block
   (for a ResNet this is ``layer4[-1]``, the layer pytorch-grad-cam recommends).

A model with none of these (e.g. an MLP) gets no CAM, and the
report says so. The scored output is the class logit for class-space heads and the log of the
head's class probability otherwise (hierarchical multi-label heads, whose logits are over tree
nodes). Maps are upsampled to the input size and min–max scaled to [0, 1] per image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class CamTarget:
    layer: nn.Module
    name: str  # dotted module path inside the model, for the report
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None
    kind: str  # "hint" | "vit" | "timm" | "tokens" | "cnn"


class ClassScores(nn.Module):
    """``images → (B, C)`` class scores of a :class:`~imgcls.models.classifier.Classifier` (what Grad-CAM differentiates)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        head = self.model.head
        if getattr(head, "output_space", "classes") == "classes" and out.logits.shape[1] == head.num_classes:
            return out.logits.float()
        return head.predict(out).float().clamp_min(1e-12).log()


def token_reshape_transform(
    num_prefix_tokens: int, grid: tuple[int, int] | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(B, N, D)`` tokens → ``(B, D, h, w)`` map, dropping the first ``num_prefix_tokens`` tokens."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, num_prefix_tokens:, :]
        n = patches.shape[1]
        h, w = (
            grid
            if grid is not None and grid[0] * grid[1] == n
            else (math.isqrt(n), n // max(1, math.isqrt(n)))
        )
        if h * w != n:
            raise ValueError(f"cannot lay {n} patch tokens on a square grid")
        return patches.reshape(patches.shape[0], h, w, patches.shape[2]).permute(0, 3, 1, 2)

    return reshape


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _module_name(root: nn.Module, module: nn.Module) -> str:
    return next((name for name, m in root.named_modules() if m is module), type(module).__name__)


def _timm_model(backbone: nn.Module) -> nn.Module | None:
    inner = getattr(backbone, "model", None)
    return inner if inner is not None and type(inner).__module__.startswith("timm.") else None


def _last_spatial_map(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """The innermost module producing the last spatial ``(B, C, H, W)`` map of a forward pass (see module doc, rule 5)."""
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return None
    calls: dict[nn.Module, int] = {}
    events: list[tuple[nn.Module, torch.Tensor | None]] = []  # (module, 4-D output or None for token outputs)

    def hook(module: nn.Module, _inputs, output) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, torch.Tensor):
            if output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
                events.append((module, output))
            elif output.ndim == 3:
                events.append((module, None))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    once = [i for i, (m, out) in enumerate(events) if out is not None and calls[m] == 1]
    if not once:
        return None
    last_index = once[-1]
    if any(out is None for _, out in events[last_index + 1 :]):
        return None  # token processing follows the last map: not a CNN
    last = events[last_index][1]
    # a block and the Sequential around it return the same tensor: take the innermost (it fires first)
    return next(events[i][0] for i in once if events[i][1] is last or _same_storage(events[i][1], last))


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.data_ptr() == b.data_ptr()


def find_cam_target(model: nn.Module, example: torch.Tensor) -> CamTarget | None:
    """The layer Grad-CAM should use for ``model`` (a Classifier), or None when the model has no spatial maps."""
    backbone = getattr(model, "backbone", model)
    hint = getattr(backbone, "cam_target", None)
    if callable(hint):
        layer, reshape = hint()
        return CamTarget(layer, _module_name(model, layer), reshape, "hint")
    timm_model = _timm_model(backbone)
    if timm_model is not None:
        blocks = getattr(timm_model, "blocks", None)
        if (
            blocks is not None
            and hasattr(timm_model, "num_prefix_tokens")
            and len(blocks)
            and hasattr(blocks[-1], "norm1")
        ):
            grid = getattr(getattr(timm_model, "patch_embed", None), "grid_size", None)
            reshape = token_reshape_transform(
                int(timm_model.num_prefix_tokens), tuple(grid) if grid is not None else None
            )
            return CamTarget(blocks[-1].norm1, _module_name(model, blocks[-1].norm1), reshape, "vit")
        info = getattr(timm_model, "feature_info", None)
        if (
            info
            and isinstance(info, list)
            and "module" in info[-1]
            and not hasattr(timm_model, "num_prefix_tokens")
        ):
            layer = timm_model.get_submodule(info[-1]["module"])
            reshape = nhwc_to_nchw if getattr(timm_model, "output_fmt", "NCHW") == "NHWC" else None
            return CamTarget(layer, _module_name(model, layer), reshape, "timm")
    blocks = getattr(backbone, "blocks", None)
    if (
        timm_model is None
        and callable(getattr(backbone, "forward_tokens", None))
        and isinstance(blocks, nn.Sequential | nn.ModuleList)
        and len(blocks)
    ):
        grid = getattr(backbone, "grid", None)
        reshape = token_reshape_transform(
            int(getattr(backbone, "num_prefix_tokens", 0)), (grid, grid) if isinstance(grid, int) else None
        )
        return CamTarget(blocks[-1], _module_name(model, blocks[-1]), reshape, "tokens")
    layer = _last_spatial_map(model, example)
    if layer is None:
        return None
    return CamTarget(layer, _module_name(model, layer), None, "cnn")


def grad_cam(
    model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor | list[int], target: CamTarget | None = None
) -> np.ndarray:
    """Grad-CAM maps ``(B, H, W)`` in [0, 1] of normalised ``inputs`` ``(B, C, H, W)`` for ``classes`` ``(B,)``.

    Raises ``ValueError`` when the model has no layer Grad-CAM can use (see :func:`find_cam_target`).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    was_training = model.training
    model.eval()
    target = target or find_cam_target(model, inputs[:1])
    if target is None:
        raise ValueError(
            f"{type(model).__name__} has no convolutional feature map or attention block for Grad-CAM"
        )
    scores = ClassScores(model)
    try:
        with (
            torch.enable_grad(),
            GradCAM(scores, [target.layer], reshape_transform=target.reshape_transform) as cam,
        ):
            cam.compute_input_gradient = True  # gradients even when some parameters are frozen
            maps = cam(inputs.float(), targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        model.train(was_training)
    return np.clip(np.nan_to_num(maps.astype(np.float32)), 0.0, 1.0)

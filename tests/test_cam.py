"""Grad-CAM: target-layer discovery, token reshaping and heat maps for a CNN and a ViT (random weights)."""

from __future__ import annotations

import pytest
import torch
from tests.tiny_runs import single_thread
from torch import nn

from imgcls.config import ModelConfig
from imgcls.evaluation.cam import ClassScores, find_cam_target, grad_cam, token_reshape_transform
from imgcls.models.classifier import build_model


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Single-threaded torch: on a shared 2-core machine spinning intra-op threads slow tiny models many-fold."""
    with single_thread():
        yield


CNN = ModelConfig(
    backbone="adaptive_cnn",
    backbone_args={"layout": "mnist", "width_mult": 0.25},
    head="mlp",
    head_args={"hidden": [16]},
)
VIT = ModelConfig(
    backbone="timm:vit_tiny_patch16_224",
    backbone_args={"img_size": 32, "patch_size": 4, "depth": 2},
    head="linear",
)


def _check_maps(maps, batch: int, size: int) -> None:
    assert maps.shape == (batch, size, size)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    peaks = maps.reshape(batch, -1).max(axis=1)
    # min-max scaled per image: a map peaks at 1, or is all 0 when no location has positive evidence (ReLU)
    assert ((peaks > 0.99) | (peaks == 0.0)).all() and (peaks > 0.99).any()


def test_cnn_target_is_last_block_and_maps_are_unit_range():
    torch.manual_seed(0)
    model = build_model(CNN, num_classes=5, in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    target = find_cam_target(model, x[:1])
    assert target is not None and target.kind == "cnn"
    last_block = model.backbone.features[-1]
    assert target.layer is last_block  # the innermost module yielding the last spatial map
    assert target.name == f"backbone.features.{len(model.backbone.features) - 1}"
    _check_maps(grad_cam(model, x, [0, 1, 4], target), 3, 28)


def test_vit_target_is_last_norm1_with_prefix_tokens_dropped():
    torch.manual_seed(0)
    model = build_model(VIT, num_classes=4, in_chans=3).eval()
    vit = model.backbone.model
    x = torch.randn(2, 3, 32, 32)
    target = find_cam_target(model, x[:1])
    assert target.kind == "vit" and target.layer is vit.blocks[-1].norm1
    tokens = torch.randn(2, vit.num_prefix_tokens + 64, 192)
    assert target.reshape_transform(tokens).shape == (2, 192, 8, 8)  # 32 px / patch 4 = 8×8 grid
    _check_maps(grad_cam(model, x, [1, 3]), 2, 32)


def test_own_token_backbone_uses_last_block_on_its_grid():
    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="gfnet",
        backbone_args={"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 2},
        head="linear",
    )
    model = build_model(cfg, num_classes=3, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    target = find_cam_target(model, x[:1])
    assert target.kind == "tokens" and target.layer is model.backbone.blocks[-1]
    assert target.reshape_transform(torch.randn(2, 64, 32)).shape == (2, 32, 8, 8)
    _check_maps(grad_cam(model, x, [0, 2], target), 2, 32)


def test_token_reshape_lays_tokens_row_major_after_prefix():
    prefix = 2  # e.g. class + distillation token
    tokens = torch.arange(prefix + 6, dtype=torch.float32).view(1, prefix + 6, 1).expand(1, prefix + 6, 3)
    out = token_reshape_transform(prefix, grid=(2, 3))(tokens)
    assert out.shape == (1, 3, 2, 3)
    assert torch.equal(out[0, 0], torch.tensor([[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]))
    square = token_reshape_transform(1)(torch.zeros(1, 1 + 16, 5))  # no grid: square inferred
    assert square.shape == (1, 5, 4, 4)
    with pytest.raises(ValueError, match="square grid"):
        token_reshape_transform(0)(torch.zeros(1, 7, 5))


class _MLPBackbone(nn.Module):
    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 8)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_model_without_conv_or_attention_has_no_target():
    from imgcls.models.classifier import Classifier
    from imgcls.models.heads.linear import LinearHead

    model = Classifier(_MLPBackbone(), LinearHead(8, 3)).eval()
    x = torch.randn(2, 1, 28, 28)
    assert find_cam_target(model, x[:1]) is None
    with pytest.raises(ValueError, match="no convolutional feature map"):
        grad_cam(model, x, [0, 1])


def test_backbone_hint_wins():
    model = build_model(CNN, num_classes=3, in_chans=1).eval()
    chosen = model.backbone.features[2]
    model.backbone.cam_target = lambda: (chosen, None)
    target = find_cam_target(model, torch.randn(1, 1, 28, 28))
    assert target.kind == "hint" and target.layer is chosen


def test_class_scores_are_logits_for_flat_heads():
    model = build_model(CNN, num_classes=3, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(ClassScores(model)(x), model(x).logits)


def test_frozen_parameters_still_give_maps():
    model = build_model(CNN, num_classes=3, in_chans=1).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _check_maps(grad_cam(model, torch.randn(2, 1, 28, 28), [0, 2]), 2, 28)
    assert not any(p.requires_grad for p in model.parameters())

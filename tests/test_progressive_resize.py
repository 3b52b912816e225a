"""Progressive resizing (augment.resize_min / resize_epochs): the FFCV-style size schedule by hand,
the downscaled batches, config errors, the model check, and a real run whose steps see the sizes."""

from __future__ import annotations

import pytest
import torch
from tests.tiny_runs import TINY_OVERRIDES, requires_fashion_mnist, single_thread
from torch import nn

from imgcls import api
from imgcls.config import AugmentConfig, load_config
from imgcls.data.augment import BatchAugment
from imgcls.data.progressive_resize import ProgressiveResize, check_model_accepts
from imgcls.engine.callbacks import Callback
from imgcls.errors import ConfigError
from imgcls.runtime.batch import Batch


def test_sizes_follow_the_linear_ramp_between_start_and_end() -> None:
    ramp = ProgressiveResize(16, start=2, end=6)
    # epochs 0-1 at 16, then 16 + (e - 2) / 4 * (28 - 16): 16, 19, 22, 25, and 28 from epoch 6 on
    assert [ramp.size_at(e, 28) for e in range(8)] == [16, 16, 16, 19, 22, 25, 28, 28]
    assert ProgressiveResize(40, 0, 4).size_at(0, 28) == 28  # never upscales
    assert ProgressiveResize(None).is_identity and ProgressiveResize(None).size_at(0, 28) == 28


def test_batches_are_downscaled_keeping_the_aspect_ratio_and_range() -> None:
    ramp = ProgressiveResize(14, start=0, end=4)
    images = torch.rand(3, 1, 28, 56, generator=torch.Generator().manual_seed(0))
    small = ramp(images, 0)
    assert small.shape == (3, 1, 14, 28) and small.min() >= 0.0 and small.max() <= 1.0
    # antialiased 2x bilinear downscaling: away from the borders output i is the tent-filtered mean of
    # inputs 2i-1..2i+2 (weights 1/8, 3/8, 3/8, 1/8), so a linear ramp j/27 gives (2i + 0.5)/27
    ramp_image = (torch.arange(28.0) / 27).expand(1, 1, 28, 28)
    row = ramp(ramp_image, 0)[0, 0, 5]
    assert torch.allclose(row[1:-1], (2 * torch.arange(1.0, 13.0) + 0.5) / 27, atol=1e-6)
    assert ramp(images, 4) is images  # full size: the batch passes unchanged


def test_batch_augment_resizes_by_epoch_and_counts_as_an_op() -> None:
    aug = BatchAugment(AugmentConfig(resize_min=20, resize_epochs=(0, 2)), num_classes=10)
    assert not aug.is_identity and "resize_min=20" in repr(aug)
    batch = Batch(torch.rand(4, 1, 28, 28), torch.arange(4))
    sizes = [aug(batch, torch.Generator().manual_seed(0), epoch).images.shape[-1] for epoch in range(3)]
    assert sizes == [20, 24, 28]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["augment.resize_min=20"], "resize_epochs"),
        (["augment.resize_min=20", "augment.resize_epochs=[5,2]"], "start <= end"),
        (["augment.resize_min=0", "augment.resize_epochs=[0,2]"], "resize_min"),
    ],
)
def test_bad_resize_settings_are_config_errors(overrides, match) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


class FixedSizeNet(nn.Module):
    """A model that only takes 28x28 inputs (a flatten into a linear layer, like fixed position embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_the_model_check_refuses_a_fixed_size_model_and_leaves_train_mode() -> None:
    ramp = ProgressiveResize(20, 0, 4)
    net = FixedSizeNet().train()
    with pytest.raises(ValueError, match="cannot take 20x20 inputs"):
        check_model_accepts(net, ramp, channels=1, image_size=28)
    assert net.training
    pooled = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    check_model_accepts(pooled, ramp, channels=1, image_size=28)  # any size: no error


class InputSizes(Callback):
    """Records (epoch, input height) of every training forward pass."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def on_fit_start(self, trainer) -> None:
        def hook(module, args):
            if module.training:
                self.seen.append((trainer.state.global_epoch, args[0].shape[-2]))

        trainer.model.register_forward_pre_hook(hook)


@requires_fashion_mnist
def test_a_real_run_trains_on_the_scheduled_sizes_and_evaluates_at_full_size(tmp_path) -> None:
    sizes = InputSizes()
    overrides = [
        *TINY_OVERRIDES,
        "data.name=fashion_mnist",
        "data.train_subset=1500",
        "data.test_subset=500",
        "train.epochs=4",
        "train.batch_size=100",
        "optim.lr=3e-3",
        "train.precision=fp32",
        "train.channels_last=false",
        "augment.resize_min=20",
        "augment.resize_epochs=[0,2]",
        f"output.dir={tmp_path}",
    ]
    with single_thread():
        result = api.train(None, overrides, callbacks=[sizes])
    per_epoch = {epoch: {h for e, h in sizes.seen if e == epoch} for epoch in range(4)}
    assert per_epoch == {0: {20}, 1: {24}, 2: {28}, 3: {28}}
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.metrics["accuracy"] > 0.5  # evaluated on full-size 28x28 test images


@requires_fashion_mnist
def test_a_fixed_size_model_is_refused_before_training(tmp_path) -> None:
    overrides = [
        "data.train_subset=300",
        "data.test_subset=100",
        "model.backbone=deit",
        "model.backbone_args={img_size: 28, patch_size: 7, embed_dim: 32, depth: 1, num_heads: 2}",
        "model.head=linear",
        "augment.resize_min=14",
        "augment.resize_epochs=[0,2]",
        f"output.dir={tmp_path}",
    ]
    with pytest.raises(ConfigError, match=r"resize_min=14: the model cannot take 14x14 inputs"):
        api.train(None, overrides, evaluate_after=False)
    assert not any(tmp_path.rglob("*.pt"))

"""Test-time augmentation: averaging identity views must reproduce the plain prediction exactly
(so TTA adds no hidden change of its own), and the default views are what they claim to be."""

from __future__ import annotations

import contextlib

import pytest
import torch
from tests.tiny_runs import single_thread

from imgcls.config import ModelConfig
from imgcls.data.preprocess import Preprocess
from imgcls.evaluation.predict import predict_tensor, tta_views
from imgcls.models.classifier import build_model


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Single-threaded torch: on a shared 2-core machine spinning intra-op threads slow tiny models many-fold."""
    with single_thread():
        yield


NO_AUTOCAST = contextlib.nullcontext


def _model_and_images(seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        backbone="adaptive_cnn",
        backbone_args={"layout": "mnist", "width_mult": 0.25},
        head="mlp",
        head_args={"hidden": [16]},
    )
    model = build_model(cfg, num_classes=10, in_chans=1).eval()
    images = torch.randint(
        0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    prep = Preprocess([0.286], [0.353], torch.device("cpu"), image_size=28)
    return model, images, prep


def test_identity_transforms_equal_plain_prediction():
    model, images, prep = _model_and_images()
    plain, out = predict_tensor(model, images, prep, NO_AUTOCAST, tta=1)
    with torch.no_grad():
        direct = model.head.predict(model(prep(images))).float()
    torch.testing.assert_close(plain, direct, rtol=0, atol=1e-6)
    for n in (1, 3, 8):
        averaged, _ = predict_tensor(model, images, prep, NO_AUTOCAST, transforms=[lambda x: x] * n)
        torch.testing.assert_close(averaged, plain, rtol=0, atol=1e-6)
    assert torch.allclose(plain.sum(dim=1), torch.ones(6))
    assert out.logits.shape == (6, 10)


def test_tta_one_view_is_identity_and_views_are_flips_and_shifts():
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4)
    views = tta_views(x, 10)
    assert len(views) == 10 and len(tta_views(x, 1)) == 1
    assert torch.equal(views[0], x)
    assert torch.equal(views[1], x.flip(-1))
    assert torch.equal(views[2], torch.roll(x, shifts=(1, 0), dims=(-2, -1)))
    assert all(v.shape == x.shape for v in views)


def test_tta_with_flip_equals_mean_of_plain_and_flipped():
    model, images, prep = _model_and_images(1)
    two, _ = predict_tensor(model, images, prep, NO_AUTOCAST, tta=2)
    plain, _ = predict_tensor(model, images, prep, NO_AUTOCAST, tta=1)
    flipped, _ = predict_tensor(model, images.flip(-1), prep, NO_AUTOCAST, tta=1)
    torch.testing.assert_close(two, (plain + flipped) / 2, rtol=0, atol=1e-6)

"""Seed 002's focal loss as a named loss of the multi-label heads, and seed 004's ColorJitter saturation and
hue in the batched augmentation, both checked against torchvision (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.ops import sigmoid_focal_loss as tv_focal

from imgcls.config import AugmentConfig
from imgcls.data.augment import BatchAugment
from imgcls.data.augment_ops import (
    ColorJitter,
    adjust_hue,
    adjust_saturation,
    hsv_to_rgb,
    rgb_to_hsv,
    uniform,
)
from imgcls.data.sources import FASHION_MNIST_CLASSES
from imgcls.errors import ConfigError
from imgcls.losses.focal import sigmoid_focal_loss
from imgcls.losses.hierarchical import HierarchicalBCELoss
from imgcls.models.classifier import build_head
from imgcls.models.heads.base import loss_logits
from imgcls.runtime.batch import Batch
from imgcls.taxonomy import build_taxonomy

TREE = Path(__file__).parent.parent / "configs" / "taxonomies" / "fashion_mnist.yaml"
CLASSES = FASHION_MNIST_CLASSES


# ------------------------------------------------------------------------------------------------ focal
def test_focal_loss_equals_torchvision_and_reduces_to_bce():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(5, 7, generator=g)
    targets = (torch.rand(5, 7, generator=g) > 0.6).float()
    for gamma, alpha in ((2.0, 0.25), (1.0, 0.5), (0.0, 0.25)):
        ours = sigmoid_focal_loss(logits, targets, gamma=gamma, alpha=alpha)
        assert ours == pytest.approx(
            float(tv_focal(logits, targets, alpha=alpha, gamma=gamma, reduction="mean")), rel=1e-6
        )
    no_alpha = sigmoid_focal_loss(logits, targets, gamma=2.0, alpha=None)
    assert no_alpha == pytest.approx(
        float(tv_focal(logits, targets, alpha=-1, gamma=2.0, reduction="mean")), rel=1e-6
    )
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    assert sigmoid_focal_loss(logits, targets, gamma=0.0, alpha=None) == pytest.approx(float(bce), rel=1e-6)
    # by hand, one positive entry: p = σ(1), FL = α (1 − p)^γ · (−log p)
    p = torch.sigmoid(torch.tensor(1.0))
    by_hand = 0.25 * (1 - p) ** 2 * -torch.log(p)
    assert sigmoid_focal_loss(torch.tensor([[1.0]]), torch.tensor([[1.0]])) == pytest.approx(float(by_hand))
    weight = torch.arange(1.0, 8.0)
    elementwise = tv_focal(logits, targets, alpha=0.25, gamma=2.0, reduction="none")
    assert sigmoid_focal_loss(logits, targets, weight=weight) == pytest.approx(
        float((elementwise * weight).mean()), rel=1e-6
    )
    with pytest.raises(ConfigError, match="focal_gamma"):
        build_head(
            "sphere_multi",
            {"loss": "focal", "focal_gamma": -1},
            16,
            10,
            0.0,
            build_taxonomy(str(TREE), CLASSES),
        )


@pytest.mark.parametrize("head", ["sphere_multi", "sphere_multi_hier"])
def test_focal_is_a_named_loss_of_the_multi_label_heads(head):
    taxonomy = build_taxonomy(str(TREE), CLASSES)
    torch.manual_seed(0)
    model = build_head(
        head,
        {"loss": "focal", "focal_gamma": 2.0, "focal_alpha": 0.25, "embedding": [16]},
        8,
        10,
        0.0,
        taxonomy,
    )
    features = torch.randn(12, 8)
    y = torch.arange(12) % 10
    batch = Batch(images=torch.zeros(12, 1, 2, 2), targets=y)
    out = model.train()(features, y)
    terms = model.loss(out, batch)
    assert "focal" in terms and "bce" not in terms
    target_nodes = model.lineage[y]
    weight = model.hbce.node_weight if head == "sphere_multi_hier" else None
    elementwise = tv_focal(loss_logits(out).float(), target_nodes, alpha=0.25, gamma=2.0, reduction="none")
    expected = (elementwise * (weight if weight is not None else 1.0)).mean()
    assert float(terms["focal"]) == pytest.approx(float(expected), rel=1e-5)
    # it trains: a few steps lower the focal term
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        loss = model.loss(model(features, y), batch)["focal"]
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * first


def test_hbce_rejects_an_unknown_base():
    with pytest.raises(ConfigError, match="focal"):
        HierarchicalBCELoss(build_taxonomy(str(TREE), CLASSES), base="hinge")


# ------------------------------------------------------------------------------------------------ colour
def hand_made_image() -> torch.Tensor:
    """A 3×4×4 RGB image: pure and mixed colours, greys (hue undefined), black and white, in each sector."""
    pixels = [
        (1.0, 0.0, 0.0),
        (0.0, 1.0, 0.0),
        (0.0, 0.0, 1.0),
        (0.5, 0.5, 0.5),
        (1.0, 1.0, 0.0),
        (0.0, 1.0, 1.0),
        (1.0, 0.0, 1.0),
        (0.0, 0.0, 0.0),
        (1.0, 1.0, 1.0),
        (0.9, 0.2, 0.1),
        (0.2, 0.7, 0.3),
        (0.25, 0.3, 0.8),
        (0.6, 0.6, 0.1),
        (0.3, 0.5, 0.5),
        (0.7, 0.2, 0.6),
        (0.8, 0.5, 0.2),
    ]
    return torch.tensor(pixels).T.reshape(3, 4, 4)


def test_hue_and_saturation_kernels_match_torchvision_on_a_hand_made_image():
    image = hand_made_image()
    batch = image.expand(6, 3, 4, 4).clone()
    shifts = torch.tensor([-0.5, -0.25, 0.0, 0.1, 1 / 3, 0.5])
    out = adjust_hue(batch, shifts)
    for i, h in enumerate(shifts.tolist()):
        assert torch.allclose(out[i], TF.adjust_hue(image, h), atol=1e-6), h
    factors = torch.tensor([0.0, 0.3, 1.0, 1.5, 2.0, 0.8])
    out = adjust_saturation(batch, factors)
    for i, f in enumerate(factors.tolist()):
        assert torch.allclose(out[i], TF.adjust_saturation(image, f), atol=1e-6), f
    # by hand: a 1/3-turn hue shift sends red → green → blue → red; greys keep their value
    third = adjust_hue(image[None], torch.tensor([1 / 3]))[0]
    assert torch.allclose(third[:, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(third[:, 0, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(third[:, 0, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(third[:, 0, 3], image[:, 0, 3]) and torch.allclose(third[:, 2, 0], image[:, 2, 0])
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(batch)), batch, atol=1e-6)
    gray = torch.rand(2, 1, 4, 4)
    assert torch.equal(adjust_hue(gray, torch.tensor([0.3, -0.2])), gray)


def test_color_jitter_draws_saturation_then_hue_per_sample_like_torchvision():
    image = hand_made_image()
    batch = image.expand(8, 3, 4, 4).clone()
    out = ColorJitter(saturation=0.4, hue=0.2)(batch, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    saturation = uniform((8,), 0.6, 1.4, replay)
    hue = uniform((8,), -0.2, 0.2, replay)
    assert float(saturation.min()) >= 0.6 and float(saturation.max()) <= 1.4 and float(hue.abs().max()) <= 0.2
    for i in range(8):
        expected = TF.adjust_hue(TF.adjust_saturation(image, float(saturation[i])), float(hue[i]))
        assert torch.allclose(out[i], expected, atol=1e-5)
    assert len({round(float(out[i].sum()), 4) for i in range(8)}) == 8  # per-sample parameters


def test_augment_config_saturation_and_hue():
    aug = BatchAugment(AugmentConfig(saturation=0.2, hue=0.1), num_classes=10)
    assert [type(op).__name__ for op in aug.ops] == ["ColorJitter"]
    assert aug.ops[0].saturation == 0.2 and aug.ops[0].hue == 0.1
    with pytest.raises(ValueError):
        AugmentConfig(hue=0.6)

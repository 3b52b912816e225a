"""MixUp / CutMix on batches: soft targets, exact CutMix λ, odd batches, turn-off epoch, dominant label."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgcls.config import AugmentConfig
from imgcls.data.augment import build_train_augment
from imgcls.data.mixing import MixParams, MixUpCutMix, cutmix_boxes
from imgcls.runtime.batch import Batch


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def constant_batch(batch_size: int, size: int = 16) -> Batch:
    """Sample b is the constant image (b + 1) / 100 with class b: every pixel says where it came from."""
    values = (torch.arange(batch_size, dtype=torch.float32) + 1) / 100
    images = values.view(-1, 1, 1, 1).expand(batch_size, 1, size, size).contiguous()
    return Batch(images, torch.arange(batch_size))


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize(("mixup", "cutmix"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_soft_targets_sum_to_one_and_match_the_images(mixup: float, cutmix: float, mode: str) -> None:
    n = 8
    mixer = MixUpCutMix(n, mixup_alpha=mixup, cutmix_alpha=cutmix, mode=mode)
    batch = constant_batch(n)
    for seed in range(5):
        out = mixer(batch, gen(seed), epoch=0)
        soft = out.soft_targets
        assert soft is not None and soft.shape == (n, n)
        assert torch.allclose(soft.sum(1), torch.ones(n))
        assert (soft >= 0).all()
        # the image is the soft-target-weighted mean of the two source images (pixel average for CutMix)
        sources = batch.images[:, 0, 0, 0]
        assert torch.allclose(out.images.mean(dim=(1, 2, 3)), soft @ sources, atol=1e-6)
        assert out.images.shape == batch.images.shape and out.index is None


def test_cutmix_lambda_equals_pasted_area_exactly() -> None:
    n, size = 6, 20
    mixer = MixUpCutMix(n, cutmix_alpha=1.0, mode="elem")
    batch = constant_batch(n, size)
    for seed in range(10):
        params = mixer.sample(n, size, size, gen(seed))
        out = mixer.mix(batch, params)
        for b in range(n):
            partner = n - 1 - b
            pasted = int((out.images[b] == batch.images[partner, 0, 0, 0]).sum())
            kept = int((out.images[b] == batch.images[b, 0, 0, 0]).sum())
            assert pasted + kept == size * size
            assert (1.0 - params.lam[b].item()) * size * size == pytest.approx(
                pasted, abs=1e-9
            )  # λ is float64
            assert out.soft_targets[b, partner].item() == pytest.approx(pasted / size**2, abs=1e-6)
            assert out.soft_targets[b, b].item() == pytest.approx(kept / size**2, abs=1e-6)


def test_cutmix_boxes_hand_computed() -> None:
    class FixedCentres:
        def __init__(self, values: list[int]) -> None:
            self.values = iter(values)

        def integers(self, low: int, high: int, size: tuple) -> np.ndarray:
            return np.array(next(self.values))

    lam = np.array([0.64, 0.64])  # side = int(10 · √0.36) = 6
    boxes, corrected = cutmix_boxes(lam, 10, 10, FixedCentres([[5, 0], [5, 5]]))
    assert boxes.tolist() == [[2, 2, 8, 8], [0, 2, 3, 8]]  # (top, left, bottom, right): cy 5 and cy 0
    assert corrected.tolist() == pytest.approx([1 - 36 / 100, 1 - 18 / 100])


def test_mixup_blend_and_dominant_label() -> None:
    n = 6
    mixer = MixUpCutMix(n, mixup_alpha=0.4, mode="elem")
    batch = constant_batch(n)
    out = mixer(batch, gen(3), epoch=0)
    lam = out.soft_targets[torch.arange(n), torch.arange(n)]
    expected = lam.view(-1, 1, 1, 1) * batch.images + (1 - lam.view(-1, 1, 1, 1)) * batch.images.flip(0)
    assert torch.allclose(out.images, expected, atol=1e-6)
    dominant = torch.where(lam >= 0.5, torch.arange(n), torch.arange(n).flip(0))
    assert torch.equal(out.targets, dominant)
    assert torch.equal(out.targets, out.soft_targets.argmax(1))  # no exact ties with these draws
    assert (lam != lam[0]).any(), "elem mode draws λ per sample"


def test_batch_mode_uses_one_lambda_and_one_box() -> None:
    n = 8
    params = MixUpCutMix(n, cutmix_alpha=1.0).sample(n, 16, 16, gen(0))
    assert (params.lam == params.lam[0]).all() and (params.boxes == params.boxes[0]).all()
    assert params.cutmix.all() and params.mixed.all()


def test_odd_batch_pairs_the_middle_sample_with_itself() -> None:
    n = 5
    batch = constant_batch(n)
    for mixer in (MixUpCutMix(n, mixup_alpha=1.0), MixUpCutMix(n, cutmix_alpha=1.0, mode="elem")):
        out = mixer(batch, gen(1), epoch=0)
        assert torch.allclose(out.images[2], batch.images[2])
        assert torch.allclose(out.soft_targets[2], torch.nn.functional.one_hot(torch.tensor(2), n).float())
        assert out.targets[2] == 2
        assert torch.allclose(out.soft_targets.sum(1), torch.ones(n))


def test_mix_off_epoch_disables_mixing() -> None:
    mixer = MixUpCutMix(4, mixup_alpha=1.0, cutmix_alpha=1.0, off_epoch=3)
    batch = constant_batch(4)
    assert mixer(batch, gen(0), epoch=2).soft_targets is not None
    for epoch in (3, 10):
        out = mixer(batch, gen(0), epoch=epoch)
        assert out is batch and out.soft_targets is None
    assert MixUpCutMix(4, mixup_alpha=1.0, off_epoch=0).is_identity


def test_mix_prob_and_identity() -> None:
    batch = constant_batch(4)
    assert MixUpCutMix(4).is_identity
    never = MixUpCutMix(4, mixup_alpha=1.0, mix_prob=0.0)
    assert never.is_identity and never(batch, gen(0), 0) is batch
    sometimes = MixUpCutMix(4, mixup_alpha=1.0, mix_prob=0.5)
    mixed = [sometimes(batch, gen(seed), 0).soft_targets is not None for seed in range(40)]
    assert 5 < sum(mixed) < 35


def test_switch_probability_picks_cutmix_or_mixup() -> None:
    mixer = MixUpCutMix(4, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5)
    choices = [bool(mixer.sample(4, 8, 8, gen(seed)).cutmix[0]) for seed in range(60)]
    assert 10 < sum(choices) < 50
    always_cut = MixUpCutMix(4, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0)
    assert all(bool(always_cut.sample(4, 8, 8, gen(s)).cutmix.all()) for s in range(10))


def test_seeded_determinism() -> None:
    mixer = MixUpCutMix(8, mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem")
    batch = Batch(torch.rand(8, 3, 12, 12, generator=gen(0)), torch.arange(8))
    a, b, c = mixer(batch, gen(5), 0), mixer(batch, gen(5), 0), mixer(batch, gen(6), 0)
    assert torch.equal(a.images, b.images) and torch.equal(a.soft_targets, b.soft_targets)
    assert not torch.equal(a.soft_targets, c.soft_targets)


def test_mixing_soft_input_targets_keeps_distributions() -> None:
    n = 4
    soft_in = torch.softmax(torch.randn(n, 3, generator=gen(0)), dim=1)
    batch = Batch(torch.rand(n, 1, 8, 8), soft_in.argmax(1), soft_targets=soft_in)
    params = MixParams(
        mixed=torch.ones(n, dtype=torch.bool),
        cutmix=torch.zeros(n, dtype=torch.bool),
        lam=torch.full((n,), 0.7, dtype=torch.float64),
        boxes=torch.zeros(n, 4, dtype=torch.long),
    )
    out = MixUpCutMix(3, mixup_alpha=1.0).mix(batch, params)
    assert torch.allclose(out.soft_targets, 0.7 * soft_in + 0.3 * soft_in.flip(0))
    assert torch.equal(out.targets, out.soft_targets.argmax(1))


def test_mixing_through_the_pipeline() -> None:
    augment = build_train_augment(AugmentConfig(cutmix_alpha=1.0, mixup_alpha=0.8, mix_off_epoch=5), 10)
    batch = Batch(torch.rand(7, 3, 16, 16, generator=gen(0)), torch.arange(7))
    out = augment(batch, gen(0), epoch=0)
    assert out.soft_targets.shape == (7, 10) and torch.allclose(out.soft_targets.sum(1), torch.ones(7))
    dominant = out.soft_targets.gather(1, out.targets.view(-1, 1)).squeeze(1)
    assert torch.equal(dominant, out.soft_targets.max(1).values)  # the label is a class of largest weight
    late = augment(batch, gen(0), epoch=5)
    assert late.soft_targets is None and torch.equal(late.images, batch.images)

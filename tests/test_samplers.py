"""Tests of the confusion-aware sampler (issue 14, seed 001's suggested targeted sampling): class weights
``floor / K + (1 − floor) · e / Σ e`` against hand-computed values, drawn class proportions, no repeats
within a class until it is exhausted, seeded orders, and the trainer → callback → loader feedback (the
previous epoch's per-class validation error becomes the next epoch's weights, and survives a checkpoint)."""

from __future__ import annotations

import pytest
import torch

from imgcls.config import load_config
from imgcls.data.images import ImageData
from imgcls.data.loader import InMemoryLoader, epoch_generator
from imgcls.data.samplers import confusion_weights, epoch_order, weighted_class_order
from imgcls.engine.confusion_sampling import ConfusionSampling, sampling_callbacks
from imgcls.engine.trainer import Trainer
from imgcls.models.classifier import build_model
from tiny_runs import single_thread


def test_confusion_weights_hand_computed():
    w = confusion_weights([0.0, 0.5, 0.1, 0.4], floor=0.2)
    # 0.2 / 4 + 0.8 · e / 1.0
    torch.testing.assert_close(w, torch.tensor([0.05, 0.45, 0.13, 0.37], dtype=torch.float64))
    assert float(w.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(
        confusion_weights([0.0, 0.0, 0.0], 0.3), torch.full((3,), 1 / 3, dtype=torch.float64)
    )
    torch.testing.assert_close(
        confusion_weights([0.9, 0.1], 1.0), torch.tensor([0.5, 0.5], dtype=torch.float64)
    )
    # a class without validation images (NaN) counts as error 0 and keeps the floor
    torch.testing.assert_close(
        confusion_weights([float("nan"), 0.2, 0.2], 0.4),
        torch.tensor([0.4 / 3, 0.4 / 3 + 0.3, 0.4 / 3 + 0.3], dtype=torch.float64),
    )


def test_weighted_order_draws_classes_in_proportion():
    labels = torch.arange(4).repeat_interleave(10_000)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    order = weighted_class_order(labels, torch.Generator().manual_seed(0), probs, 20_000)
    share = torch.bincount(labels[order], minlength=4).double() / 20_000
    torch.testing.assert_close(share, probs, atol=0.012, rtol=0)
    for c in range(4):  # fewer draws than images: no image twice
        drawn = order[labels[order] == c]
        assert drawn.unique().numel() == drawn.numel()


def test_weighted_order_cycles_through_a_small_class_before_repeating():
    labels = torch.tensor([0] * 5 + [1] * 100)
    order = weighted_class_order(labels, torch.Generator().manual_seed(1), torch.tensor([0.5, 0.5]), 200)
    small = order[labels[order] == 0]
    assert small.numel() > 50
    counts = torch.bincount(small, minlength=5)
    assert int(counts.max() - counts.min()) <= 1  # every image k or k+1 times


def test_weighted_order_never_draws_a_class_absent_from_training():
    labels = torch.tensor([0] * 10 + [2] * 10)  # class 1 has no training images
    order = weighted_class_order(labels, torch.Generator().manual_seed(0), torch.tensor([0.1, 0.8, 0.1]), 500)
    assert set(labels[order].tolist()) == {0, 2} and order.numel() == 500


def test_confusion_epoch_order_size_and_seeding():
    labels = torch.arange(3).repeat_interleave(50)
    gen = lambda: epoch_generator(0, 2, salt=1)  # noqa: E731
    a = epoch_order(labels, gen(), "confusion", 20, 16)
    assert a.numel() == 60  # samples_per_class × classes
    assert torch.equal(a, epoch_order(labels, gen(), "confusion", 20, 16))
    assert (
        epoch_order(labels, gen(), "confusion", None, 16).numel() == 150
    )  # default: the training set's size
    skewed = epoch_order(labels, gen(), "confusion", 200, 16, torch.tensor([0.0, 0.0, 1.0]))
    assert set(labels[skewed].tolist()) == {2}


def tiny_trainer(callbacks, n_train=48, n_val=24):
    cfg = load_config(
        None,
        [
            "model.backbone=adaptive_cnn",
            "model.backbone_args={layout: mnist, width_mult: 0.125}",
            "model.head=linear",
            "data.sampler=confusion",
            "data.samples_per_class=8",
            "data.confusion_floor=0.2",
            "train.device=cpu",
            "train.batch_size=8",
            "train.epochs=2",
            "train.progress=false",
            "train.precision=fp32",
            "schedule.warmup_epochs=0",
        ],
    )
    gen = torch.Generator().manual_seed(0)

    def part(n):
        return ImageData(
            labels=torch.arange(n) % 3,
            class_names=["a", "b", "c"],
            images=torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen),
        )

    train = InMemoryLoader(
        part(n_train), 8, shuffle=True, drop_last=True, seed=0, sampler="confusion", samples_per_class=8
    )
    val = InMemoryLoader(part(n_val), 8, shuffle=False, drop_last=False)
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, 1)
    meta = {"image_size": 28, "channels": 1, "mean": [0.5], "std": [0.25]}
    trainer = Trainer(
        cfg,
        model,
        train,
        val,
        device=torch.device("cpu"),
        preprocess_meta=meta,
        class_names=["a", "b", "c"],
        callbacks=callbacks,
    )
    return cfg, trainer


def test_validation_errors_feed_the_next_epoch_weights():
    cb = ConfusionSampling(0.2)
    cfg, trainer = tiny_trainer([cb])
    assert [type(c) for c in sampling_callbacks(cfg)] == [ConfusionSampling]
    with single_thread():
        trainer.fit()
    errors = trainer.val_class_error
    assert len(errors) == 3 and all(0.0 <= e <= 1.0 for e in errors)
    # per-class errors agree with the epoch's validation accuracy (8 images per class)
    acc = 1 - sum(errors) / 3
    assert acc == pytest.approx(trainer.validate(trainer.model, trainer.val_loader)["acc"])
    expected = confusion_weights(errors, 0.2)
    torch.testing.assert_close(trainer.train_loader.class_probs, expected)
    assert cb.probs == pytest.approx(expected.tolist())
    # the weights travel with the checkpoint: a fresh callback restores them into a fresh loader
    fresh = ConfusionSampling(0.2)
    fresh.load_state_dict(cb.state_dict())
    _, other = tiny_trainer([fresh])
    fresh.on_fit_start(other)
    torch.testing.assert_close(other.train_loader.class_probs, expected)


def test_sampler_is_off_by_default():
    cfg = load_config(None, [])
    assert cfg.data.sampler == "random" and sampling_callbacks(cfg) == []


def test_m_per_class_refuses_a_class_it_could_never_draw_and_confusion_needs_validation():
    from imgcls.data.prepare import _require_m_per_class
    from imgcls.errors import ConfigError

    labels = torch.tensor([0] + [1] * 8 + [2] * 8)
    data = ImageData(
        labels=labels, class_names=["owl", "cat", "dog"], images=torch.zeros(17, 1, 4, 4, dtype=torch.uint8)
    )
    with pytest.raises(
        ConfigError,
        match=r"class\(es\) 'owl' \(1\) have fewer training images .* lower data.samples_per_class to 1",
    ):
        _require_m_per_class(data, 4)
    _require_m_per_class(data, 1)
    with pytest.raises(
        ConfigError, match=r"data.sampler=confusion weights classes by their validation error"
    ):
        load_config(None, ["data.sampler=confusion", "data.val_fraction=0"])

"""The training loop's mechanics with hand-checkable expectations: gradient accumulation equals a
larger batch, the schedule spans every optimiser step, clipping caps the gradient norm, early
stopping stops at the right epoch, progress totals count batches, loss-weight keys are checked and
validation reports every named loss term (issue 16)."""

from __future__ import annotations

import math

import pytest
import torch
from tests.tiny_runs import TINY_OVERRIDES, requires_fashion_mnist, single_thread
from torch import nn

from imgcls.config import load_config
from imgcls.data.prepare import make_loader, prepare_data
from imgcls.engine.callbacks import Callback, EarlyStopping, ProgressPrinter
from imgcls.engine.trainer import Trainer
from imgcls.errors import ConfigError
from imgcls.models.classifier import Classifier, build_head, build_model

pytestmark = requires_fashion_mnist
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def data():
    return prepare_data(load_config(None, ["data.train_subset=1000", "data.test_subset=100"]))


class MLPBackbone(nn.Module):
    """No BatchNorm, no dropout: a batch of 100 and four accumulated batches of 25 see the same gradient."""

    num_features = 32

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.Tanh())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_trainer(data, overrides: list[str], *, model=None, callbacks=(), batch_size: int = 100) -> Trainer:
    cfg = load_config(None, [*TINY_OVERRIDES, f"train.batch_size={batch_size}", *overrides])
    torch.manual_seed(0)
    if model is None:
        model = build_model(cfg.model, len(data.class_names), data.channels)
    train_loader = make_loader(data.train, data, cfg, train=True, batch_size=batch_size)
    val_loader = make_loader(data.val, data, cfg, train=False, batch_size=100)
    return Trainer(
        cfg,
        model,
        train_loader,
        val_loader,
        device=CPU,
        preprocess_meta=data.preprocess,
        class_names=data.class_names,
        callbacks=list(callbacks),
    )


def mlp_model(num_classes: int) -> Classifier:
    torch.manual_seed(0)
    return Classifier(MLPBackbone(), build_head("linear", {}, 32, num_classes, 0.0))


FP32 = [
    "train.precision=fp32",
    "train.channels_last=false",
    "train.deterministic=true",
    "optim.weight_decay=0.0",
    "schedule.name=cosine",
    "train.epochs=2",
    "optim.name=sgd",
    "optim.lr=0.05",
]


def test_accumulation_equals_a_k_times_larger_batch(data):
    big = make_trainer(data, FP32, model=mlp_model(10), batch_size=100)
    big.fit()
    small = make_trainer(data, [*FP32, "train.accumulate=4"], model=mlp_model(10), batch_size=25)
    small.fit()
    assert small.state.step == big.state.step == 2 * 9  # 900 training images: 9 steps per epoch either way
    a, b = big.model.state_dict(), small.model.state_dict()
    moved = sum(float((a[k] - mlp_model(10).state_dict()[k]).abs().sum()) for k in a)
    assert moved > 1.0  # the runs really trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-6)


def test_schedule_spans_the_final_partial_accumulation_group(data):
    # 900 images / 25 = 36 batches; accumulate=5 → 7 full groups + one of 1 batch = 8 optimiser steps per epoch
    trainer = make_trainer(
        data, [*FP32, "train.accumulate=5", "schedule.min_lr_ratio=0.0"], model=mlp_model(10), batch_size=25
    )
    assert trainer.steps_per_epoch == math.ceil(36 / 5) == 8
    trainer.fit()
    assert trainer.state.step == 16
    assert trainer.scheduler.last_epoch == 16  # the schedule ran exactly as long as the run
    assert trainer.current_lr() == pytest.approx(0.0, abs=1e-12)  # cosine reached its end, not beyond


class GradNormRecorder(Callback):
    """Wraps the optimiser's step to record the total gradient norm it applies."""

    name = "grad_norms"

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_stage_start(self, trainer) -> None:
        step = trainer.optimizer.step

        def recording_step(*args, **kwargs):
            grads = [
                p.grad for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
            return step(*args, **kwargs)

        trainer.optimizer.step = recording_step


@pytest.mark.parametrize("clip", [None, 0.05])
def test_gradient_clipping_caps_the_norm(data, clip):
    recorder = GradNormRecorder()
    extra = [f"train.grad_clip={clip}"] if clip else []
    make_trainer(data, [*FP32, "train.epochs=1", *extra], callbacks=[recorder]).fit()
    assert len(recorder.norms) == 9
    if clip is None:
        assert max(recorder.norms) > 0.05  # without clipping the gradients are larger than the cap below
    else:
        assert max(recorder.norms) <= clip * (1 + 1e-4)
        assert min(recorder.norms) == pytest.approx(clip, rel=1e-4)  # every step here was over the cap


def test_early_stopping_stops_at_the_right_epoch(data):
    # lr so small that nothing changes: val_loss never improves after epoch 1 → stop after 1 + patience epochs
    stopper = EarlyStopping("val_loss", patience=2)
    trainer = make_trainer(data, [*FP32, "train.epochs=10", "optim.lr=1e-12"], callbacks=[stopper])
    history = trainer.fit()
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert stopper.bad_epochs == 2


class ProgressTotals(ProgressPrinter):
    def __init__(self) -> None:
        super().__init__(live=True)
        self.live = True  # pretend to be on a terminal
        self.seen: list[tuple[float, int]] = []

    def on_epoch_end(self, trainer, metrics) -> None:
        task = self.progress.tasks[0]
        self.seen.append((task.total, trainer.state.batch_in_epoch))
        super().on_epoch_end(trainer, metrics)


def test_progress_total_counts_batches_not_optimizer_steps(data):
    progress = ProgressTotals()
    trainer = make_trainer(
        data, [*FP32, "train.epochs=1", "train.accumulate=4"], callbacks=[progress], batch_size=25
    )
    trainer.fit()
    assert progress.seen == [
        (36, 36)
    ]  # 36 batches (9 optimiser steps): the bar's total is what its counter counts


def test_unknown_loss_weight_key_is_an_error_naming_the_terms(data):
    stages = "stages=[{name: main, epochs: 1, loss_weights: {structur: 0.5}}]"
    trainer = make_trainer(data, [*FP32, stages])
    with pytest.raises(ConfigError, match=r"loss_weights names \['structur'\].*terms are: ce"):
        trainer.fit()


def test_validation_reports_every_named_loss_term(data):
    overrides = [
        *FP32,
        "train.epochs=1",
        "model.head=fch",
        "model.head_args={adjacency: rbf, structure_weight: 0.1}",
        "stages=[{name: main, epochs: 1, loss_weights: {structure: 2.0}}]",
    ]
    row = make_trainer(data, overrides).fit()[0]
    train_terms = {k.removeprefix("train_") for k in row if k.startswith("train_")} - {
        "acc",
        "images",
        "time_s",
    }
    assert {"ce", "structure", "loss"} <= train_terms
    for term in train_terms:
        assert math.isfinite(row[f"val_{term}"]) and row[f"val_{term}"] > 0
    extra = (
        row["val_loss"] - row["val_ce"] - 2.0 * row["val_structure"]
    )  # stage weights apply in validation too
    assert extra == pytest.approx(row.get("val_aux_ce", 0.0), rel=1e-4, abs=1e-5)

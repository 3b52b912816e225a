"""The trainer as the speed benchmarks use it (issue 11): built from config overrides on in-memory
Fashion-MNIST, and its training step on one fixed ready batch (the compute ceiling)."""

from __future__ import annotations

import torch

from imgcls.config import load_config
from imgcls.data.augment import build_train_augment
from imgcls.data.prepare import make_loader, prepare_data
from imgcls.engine.trainer import Trainer
from imgcls.models.classifier import build_model
from imgcls.runtime.batch import Batch
from imgcls.runtime.precision import configure_backends, resolve_device


def build_trainer(overrides: list[str], batch: int, config=None):
    """(cfg, prepared data, Trainer) for ``config`` (a YAML path; the defaults when None) with
    ``overrides`` (the model seeded with 0)."""
    cfg = load_config(config, overrides)
    device = resolve_device(cfg.train.device)
    configure_backends(cfg.train, device)
    data = prepare_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(data.class_names), data.channels)
    loader = make_loader(data.train, data, cfg, train=True, batch_size=batch, device=device)
    trainer = Trainer(
        cfg,
        model,
        loader,
        None,
        device=device,
        preprocess_meta=data.preprocess,
        class_names=data.class_names,
        augment=build_train_augment(cfg.augment, len(data.class_names)),
    )
    return cfg, data, trainer


def fixed_batch_step(trainer: Trainer, data, batch: int, size: int | None = None):
    """One forward + backward + optimiser step of ``trainer`` on a ready normalised random tensor
    already on the device (no loading, no augmentation), ``size`` pixels square (default: the data's)."""
    device = trainer.device
    size = size or data.image_size
    x = trainer.prep.normalize(torch.randn(batch, data.channels, size, size, device=device))
    raw = Batch(images=x, targets=torch.randint(0, len(data.class_names), (batch,), device=device))

    def step() -> None:
        trainer._forward_backward(raw, sync=True)
        trainer._optimizer_step()

    return step

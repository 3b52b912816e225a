"""Confusion-aware sampling (issue 14; the next step seed 001 suggests — "targeted sampling with emphasis
on the confusing classes" A/F, M/N, R/S/V — our own design): after every validation, the per-class
validation error of the epoch (``Trainer.val_class_error``, 1 − recall) becomes the class draw
probabilities of the next epoch's ``confusion`` sampler, ``floor / K + (1 − floor) · e_c / Σ e``
(:func:`imgcls.data.samplers.confusion_weights`). The weights are part of the callback's state, so a
resumed run draws exactly the epochs an uninterrupted one would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from imgcls.config import ExperimentConfig
from imgcls.data.samplers import confusion_weights
from imgcls.engine.callbacks import Callback

if TYPE_CHECKING:
    from imgcls.engine.trainer import Trainer


class ConfusionSampling(Callback):
    """Feeds the previous epoch's per-class validation error to the training loader's class weights."""

    name = "confusion_sampling"

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self.probs: list[float] | None = None

    def _apply(self, trainer: Trainer) -> None:
        setter = getattr(trainer.train_loader, "set_class_probs", None)
        if setter is not None and self.probs is not None:
            setter(torch.tensor(self.probs, dtype=torch.float64))

    def on_fit_start(self, trainer: Trainer) -> None:
        self._apply(trainer)  # weights restored from a checkpoint

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        errors = trainer.val_class_error
        if errors is None:  # no validation split: stay balanced
            return
        probs = confusion_weights(errors, self.floor)
        self.probs = probs.tolist()
        self._apply(trainer)
        metrics["sampler_max_class_share"] = float(probs.max())

    def state_dict(self) -> dict[str, Any]:
        return {"probs": self.probs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probs = state.get("probs")


def sampling_callbacks(cfg: ExperimentConfig) -> list[Callback]:
    """The callbacks the configured sampler needs (``data.sampler: confusion``), else none."""
    return [ConfusionSampling(cfg.data.confusion_floor)] if cfg.data.sampler == "confusion" else []

"""Training objectives: "forward + named loss terms for a batch" (DESIGN.md "Objective").

The trainer never looks inside a method: for every training and validation batch it asks an
objective for ``ObjectiveResult(terms, output)``, sums the terms (times the stage's
``loss_weights`` and the objective's own epoch-dependent ``term_weights``) and logs each one.
This is the shape of timm's ``timm/task/`` (``TrainingTask`` → ``LogitDistillationTask`` /
``TokenDistillationTask``): the default :class:`HeadObjective` wraps the model's head loss
exactly as before; a distillation objective (seed 004, ``engine/distillation.py``) adds a
frozen teacher and extra terms.

An objective is an ``nn.Module`` so that trainable extras (projectors) are its parameters: the
trainer puts them in their own optimiser param group and saves ``state_dict()`` in checkpoints
(key ``"objective"``). Anything frozen it holds (a teacher) must be kept out of its
``state_dict`` and parameters (store it in a plain attribute, not as a submodule).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from imgcls.config import ExperimentConfig
from imgcls.models.heads.base import Head, HeadOutput
from imgcls.runtime.batch import Batch


@dataclass
class ObjectiveResult:
    """Unweighted named loss terms of a batch and the student's head output (for accuracy)."""

    terms: dict[str, torch.Tensor]
    output: HeadOutput


class Objective(nn.Module, ABC):
    """Base objective: subclasses implement ``forward(model, head, batch)``.

    ``model`` is what to call for the student's forward (possibly DDP/compile-wrapped), ``head``
    the underlying head (for ``loss``/``predict``); ``batch.images`` are normalised and
    ``batch.unit_images`` the same images in [0, 1] before normalisation.
    """

    @abstractmethod
    def forward(self, model: Callable[..., HeadOutput], head: Head, batch: Batch) -> ObjectiveResult:
        """Named loss terms of ``batch`` and the student's head output."""

    def term_weights(self) -> dict[str, float]:
        """Multipliers of named terms in force now (e.g. an α schedule); missing terms weigh 1."""
        return {}

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Called before every training epoch (``epoch`` counts from 0 over all stages)."""

    def epoch_metrics(self) -> dict[str, float]:
        """Scalars logged with the epoch's history row (e.g. the α in force)."""
        return {}


class HeadObjective(Objective):
    """The default: the model's forward (labels go to the head only while it trains) and its head's loss."""

    def forward(self, model: Callable[..., HeadOutput], head: Head, batch: Batch) -> ObjectiveResult:
        output = model(batch.images, batch.targets)
        return ObjectiveResult(head.loss(output, batch), output)


#: factories tried in order by :func:`build_objective`; each returns an objective or None
OBJECTIVE_FACTORIES: list[Callable[..., Objective | None]] = []


def build_objective(cfg: ExperimentConfig, model: nn.Module, **context) -> Objective:
    """The objective the config asks for (the first registered factory that answers), else the head's."""
    for factory in OBJECTIVE_FACTORIES:
        objective = factory(cfg, model, **context)
        if objective is not None:
            return objective
    return HeadObjective()

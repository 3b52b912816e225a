"""Initialising a head from the class means of the backbone features at the start of a stage
(seed 003, DRA-Net: attractors placed at the classes instead of at random; SPEC §4.2, docs/dra.md).

A head opts in by exposing ``wants_class_mean_init`` (true) and ``init_from_class_means(means, present)``;
its class tells the config side whether it will, through ``needs_class_mean_init(head_args)``. The
callback :class:`ClassMeanInit` runs one pass over the training split in eval mode (no augmentation, no
gradients), averages the backbone features per class (summed across DDP ranks) and hands the means to
the head. With ``model.cache_features`` on and the backbone frozen, that pass fills the feature cache, so
the stage's first epoch costs no extra backbone forward. A resumed stage does not re-initialise: the
checkpoint already holds the attractors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from imgcls.engine.callbacks import Callback
from imgcls.runtime.distributed import all_reduce_sum

if TYPE_CHECKING:
    from imgcls.config import ExperimentConfig
    from imgcls.engine.trainer import Trainer


@torch.no_grad()
def class_feature_means(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums ``(C, D)`` (float64) and counts ``(C,)`` of ``features`` ``(N, D)`` under ``labels``."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels.long(), features.double())
    counts = torch.bincount(labels.long(), minlength=num_classes).to(torch.float64)
    return sums, counts


class ClassMeanInit(Callback):
    """At every stage start, initialise a head that asks for it from the class means of the backbone features."""

    name = "class_mean_init"

    def __init__(self) -> None:
        self.initialised_stages: list[int] = []

    @torch.no_grad()
    def on_stage_start(self, trainer: Trainer) -> None:
        head = trainer.model.head
        if not getattr(head, "wants_class_mean_init", False):
            return
        model = trainer.model
        was_training = model.training
        model.eval()
        c = head.num_classes
        sums = torch.zeros(c, head.in_features, dtype=torch.float64, device=trainer.device)
        counts = torch.zeros(c, dtype=torch.float64, device=trainer.device)
        try:
            for batch in trainer.train_loader:
                batch = batch.to(trainer.device)
                with trainer.autocast():
                    features = model.forward_features(trainer.prep(batch.images))
                s, n = class_feature_means(features.float(), batch.targets, c)
                sums += s
                counts += n
        finally:
            model.train(was_training)
        totals = all_reduce_sum(torch.cat([sums, counts[:, None]], dim=1), trainer.dist)
        sums, counts = totals[:, :-1], totals[:, -1]
        present = counts > 0
        means = sums / counts.clamp_min(1.0)[:, None]
        head.init_from_class_means(means.float(), present)
        self.initialised_stages.append(trainer.state.stage)

    def state_dict(self) -> dict[str, Any]:
        return {"initialised_stages": list(self.initialised_stages)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initialised_stages = list(state.get("initialised_stages", []))


def class_mean_init_callbacks(cfg: ExperimentConfig) -> list[Callback]:
    """``[ClassMeanInit()]`` when the model's head or a stage's head asks for class-mean initialisation."""
    from imgcls.registry import HEADS

    heads = [(cfg.model.head, cfg.model.head_args)] + [(s.head, s.head_args) for s in cfg.stages if s.head]
    for name, args in heads:
        wants = getattr(HEADS.get(name), "needs_class_mean_init", None)
        if wants is not None and wants(dict(args)):
            return [ClassMeanInit()]
    return []

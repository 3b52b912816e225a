"""Setting a backbone's patch-whitening convolution from the training images before the first step (airbench,
Jordan 2024, arXiv:2404.00498: the first layer whitens 2×2 patches; issue 11, P3).

A backbone opts in by exposing ``wants_patch_whitening_init`` (true; its registered factory too, so the config
side can tell), ``in_chans``, ``whiten_kernel``, ``pad_to_patch(images)`` and ``init_whitening(second_moment)``
(:class:`imgcls.models.backbones.airbench.Airbench`). The callback :class:`PatchWhiteningInit` reads the first
``max_images`` images of the training split as the model sees them (normalised, no augmentation; under DDP
each rank reads its share), sums the second moments of their ``k×k`` patches on the CPU (across the ranks too,
so every rank sets the same filters) and hands the average to the backbone. It runs once per run: a resumed run
takes the filters from its checkpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from imgcls.engine.callbacks import Callback
from imgcls.models.backbones.airbench import patch_second_moments
from imgcls.runtime.distributed import all_reduce_sum

if TYPE_CHECKING:
    from imgcls.config import ExperimentConfig
    from imgcls.engine.trainer import Trainer

#: airbench whitens from 5,000 training images
WHITENING_IMAGES = 5000


class PatchWhiteningInit(Callback):
    """At the start of a fresh run, set the backbone's whitening filters from the training images' patches."""

    name = "patch_whitening_init"

    def __init__(self, max_images: int = WHITENING_IMAGES) -> None:
        self.max_images = max_images
        self.done = False

    @torch.no_grad()
    def on_fit_start(self, trainer: Trainer) -> None:
        backbone = trainer.model.backbone
        if self.done or not getattr(backbone, "wants_patch_whitening_init", False):
            return
        kernel, side = backbone.whiten_kernel, backbone.in_chans * backbone.whiten_kernel**2
        per_rank = math.ceil(self.max_images / max(1, trainer.dist.world_size))  # the same total on any ranks
        moments = torch.zeros(side * side + 1, dtype=torch.float64)  # the sums, then the patch count
        seen = 0
        for batch in trainer.train_loader:
            # on the CPU in float64 (any device, MPS included); padded as the backbone pads small inputs
            images = backbone.pad_to_patch(trainer.prep(batch.to(trainer.device).images)).float().cpu()
            images = images[: per_rank - seen]
            sums, count = patch_second_moments(images, kernel)
            moments += torch.cat([sums.flatten(), sums.new_tensor([count])])
            seen += len(images)
            if seen >= per_rank:
                break
        if trainer.dist.enabled:  # every rank calls this once, with the same shape
            moments = all_reduce_sum(moments.to(trainer.device), trainer.dist).cpu()
        if moments[-1] > 0:
            backbone.init_whitening(moments[:-1].view(side, side) / moments[-1])
        self.done = True

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = bool(state.get("done", False))


def whitening_init_callbacks(cfg: ExperimentConfig) -> list[Callback]:
    """``[PatchWhiteningInit()]`` when the model's backbone whitens its input patches."""
    from imgcls.registry import BACKBONES

    return (
        [PatchWhiteningInit()]
        if getattr(BACKBONES.get(cfg.model.backbone), "wants_patch_whitening_init", False)
        else []
    )

"""Setting a backbone's patch-whitening convolution from the training images before the first step (airbench,
Jordan 2024, arXiv:2404.00498: the first layer whitens 2×2 patches; issue 11, P3).

A backbone opts in by exposing ``wants_patch_whitening_init`` (true; its registered factory too, so the config
side can tell), ``whiten_kernel`` and ``init_whitening(second_moment)``
(:class:`imgcls.models.backbones.airbench.Airbench`). The callback :class:`PatchWhiteningInit` reads the first
``max_images`` images of the training split as the model sees them (normalised, no augmentation), sums the
second moments of their ``k×k`` patches (across DDP ranks too, so every rank sets the same filters) and hands
the average to the backbone. It runs once per run: a resumed run takes the filters from its checkpoint.
"""

from __future__ import annotations

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
        kernel = backbone.whiten_kernel
        moments: torch.Tensor | None = None
        seen = 0
        for batch in trainer.train_loader:
            images = trainer.prep(batch.to(trainer.device).images).float()[: self.max_images - seen]
            if min(images.shape[-2:]) < kernel:
                break
            sums, count = patch_second_moments(images, kernel)
            found = torch.cat([sums.flatten(), sums.new_tensor([count])])
            moments = found if moments is None else moments + found
            seen += len(images)
            if seen >= self.max_images:
                break
        if moments is None:  # nothing to learn from (images smaller than a patch): keep the random filters
            moments = torch.zeros((backbone.in_chans * kernel**2) ** 2 + 1, dtype=torch.float64)
        totals = all_reduce_sum(moments.to(trainer.device), trainer.dist)
        side = backbone.in_chans * kernel**2
        count = float(totals[-1])
        if count > 0:
            backbone.init_whitening(totals[:-1].view(side, side) / count)
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

"""Weight averaging as callbacks: EMA (timm's ``ModelEmaV3``: decay with optional warm-up) and SWA
(Izmailov et al., 2018; ``torch.optim.swa_utils``), as in seed 004's recipes (SPEC §5.5).

Both keep an averaged copy of the model, validate it every epoch (``ema_val_*``/``swa_val_*`` in
the history), and hand its weights to every checkpoint (``extra_weights``), so
``eval.checkpoint: ema|swa`` evaluates the averaged model — unlike seed 004, whose final test
used the non-averaged model. SWA starts after ``train.swa_start`` × the total epochs: the
schedule is paused, the lr is set to ``train.swa_lr`` (when given), the weights are averaged
once per epoch and BatchNorm statistics are recomputed over the training data before the
averaged model is validated.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from timm.utils import ModelEmaV3
from torch.optim.swa_utils import AveragedModel

from imgcls.config import ExperimentConfig
from imgcls.engine.callbacks import Callback

if TYPE_CHECKING:
    from imgcls.engine.trainer import Trainer


class EMACallback(Callback):
    name = "ema"

    def __init__(self, decay: float, warmup: bool) -> None:
        self.decay, self.warmup = decay, warmup
        self.ema: ModelEmaV3 | None = None

    def _ensure(self, trainer: Trainer) -> ModelEmaV3:
        if self.ema is None:
            self.ema = ModelEmaV3(trainer.model, decay=self.decay, use_warmup=self.warmup)
        return self.ema

    def on_fit_start(self, trainer: Trainer) -> None:
        self._ensure(trainer)

    def on_stage_start(self, trainer: Trainer) -> None:
        if self.ema is not None and not _same_structure(self.ema.module, trainer.model):
            self.ema = None  # a stage switched the head: restart the average
        self._ensure(trainer)

    def on_train_step_end(self, trainer: Trainer) -> None:
        self._ensure(trainer).update(trainer.model, step=trainer.state.step)

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        result = trainer.validate(self._ensure(trainer).module, trainer.val_loader)
        metrics.update({f"ema_val_{k}": v for k, v in result.items()})

    def averaged_state_dict(self) -> dict[str, torch.Tensor] | None:
        return (
            None
            if self.ema is None
            else {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()}
        )

    def load_averaged(self, trainer: Trainer, weights: dict[str, torch.Tensor]) -> None:
        self._ensure(trainer).module.load_state_dict(weights)


class SWACallback(Callback):
    name = "swa"

    def __init__(self, start_fraction: float, swa_lr: float | None) -> None:
        self.start_fraction, self.swa_lr = start_fraction, swa_lr
        self.swa: AveragedModel | None = None

    def start_epoch(self, trainer: Trainer) -> int:
        """First (0-based, global) epoch whose weights are averaged."""
        return math.floor(self.start_fraction * trainer.total_epochs)

    def active(self, trainer: Trainer) -> bool:
        return trainer.state.global_epoch >= self.start_epoch(trainer)

    def on_epoch_start(self, trainer: Trainer) -> None:
        if not self.active(trainer):
            return
        trainer.scheduler_paused = True
        if self.swa_lr is not None:
            for group in trainer.optimizer.param_groups:
                group["lr"] = self.swa_lr

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.state.global_epoch - 1 < self.start_epoch(trainer):  # state already counts this epoch
            return
        if self.swa is None or not _same_structure(self.swa.module, trainer.model):
            self.swa = AveragedModel(trainer.model)
        self.swa.update_parameters(trainer.model)
        # Non-BN buffers (e.g. an FCH memory bank) follow the live model; BN statistics are recomputed.
        for (name, buf), live in zip(self.swa.module.named_buffers(), trainer.model.buffers(), strict=True):
            if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                buf.copy_(live)
        update_batchnorm(self.swa.module, trainer)
        result = trainer.validate(self.swa.module, trainer.val_loader)
        metrics.update({f"swa_val_{k}": v for k, v in result.items()})

    def averaged_state_dict(self) -> dict[str, torch.Tensor] | None:
        return (
            None
            if self.swa is None
            else {k: v.detach().cpu() for k, v in self.swa.module.state_dict().items()}
        )

    def state_dict(self) -> dict[str, Any]:
        return {"n_averaged": None if self.swa is None else int(self.swa.n_averaged)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._n_averaged = state["n_averaged"]

    def load_averaged(self, trainer: Trainer, weights: dict[str, torch.Tensor]) -> None:
        self.swa = AveragedModel(trainer.model)
        self.swa.module.load_state_dict(weights)
        self.swa.n_averaged.fill_(int(getattr(self, "_n_averaged", 0) or 0))


def _same_structure(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


@torch.no_grad()
def update_batchnorm(model: torch.nn.Module, trainer: Trainer) -> None:
    """Recompute BatchNorm running statistics of ``model`` over the (un-augmented) training data,
    like ``torch.optim.swa_utils.update_bn`` but through our batch loader and preprocessing."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {}
    for m in norms:
        m.reset_running_stats()
        momenta[m] = m.momentum
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for batch in trainer.train_loader:
        batch = batch.to(trainer.device)
        with trainer.autocast():
            model(trainer.prep(batch.images))
    for m in norms:
        m.momentum = momenta[m]
    model.train(was_training)


def averaging_callbacks(cfg: ExperimentConfig) -> list[Callback]:
    out: list[Callback] = []
    if cfg.train.ema_decay is not None:
        out.append(EMACallback(cfg.train.ema_decay, cfg.train.ema_warmup))
    if cfg.train.swa_start is not None:
        out.append(SWACallback(cfg.train.swa_start, cfg.train.swa_lr))
    return out

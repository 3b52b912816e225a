"""Optimisers with parameter groups and the per-step warm-up + schedule (cosine, constant, step, linear,
exponential, cyclic, plateau).

Groups: weight decay is not applied to norm weights and biases (1-D parameters) unless
``optim.decay_norm_and_bias``; the head's parameters may get a learning-rate multiplier
(``optim.head_lr_mult``, e.g. 10× for a fresh head on a pretrained backbone, SPEC §1.6).
The schedule is stepped every optimiser step: a linear warm-up from ``lr × warmup_start_factor``
(never 0 — seed 001's ``ep/5`` wasted its first epoch, SPEC §2.7) to ``lr``, then cosine (or
constant/step/linear/exponential/cyclic) down to ``lr × min_lr_ratio``. ``plateau`` (seed 004's
``ReduceLROnPlateau``) multiplies the lr by ``plateau_factor`` when the validation metric stalls; the
metric reaches the schedule through a callback at each epoch end, never through the training loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from imgcls.config import OptimConfig, ScheduleConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = (p.ndim <= 1 or name.endswith(".bias")) and not cfg.decay_norm_and_bias
        is_head = name.startswith("head.")
        groups.setdefault((is_head, no_decay), []).append(p)
    out = []
    for (is_head, no_decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "lr": cfg.lr * (cfg.head_lr_mult if is_head else 1.0),
                "name": f"{'head' if is_head else 'body'}{'_no_decay' if no_decay else ''}",
            }
        )
    return out


def build_optimizer(
    model: nn.Module,
    cfg: OptimConfig,
    device: torch.device,
    extra: nn.Module | None = None,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """The optimiser over ``model``'s trainable parameters; ``extra`` (an objective's trainable
    extras, e.g. distillation projectors) gets its own group named ``objective``. ``fused`` is the
    measured kernel choice (``engine/autotune.py``), used when ``optim.fused`` is null; with neither,
    fused kernels are used on CUDA only. RMSprop has no fused kernel."""
    groups = param_groups(model, cfg)
    extra_params = [p for p in extra.parameters() if p.requires_grad] if extra is not None else []
    if extra_params:
        groups.append(
            {"params": extra_params, "weight_decay": cfg.weight_decay, "lr": cfg.lr, "name": "objective"}
        )
    if not groups:
        from imgcls.errors import ConfigError

        raise ConfigError(
            "no trainable parameters: the stage freezes everything; adjust stages[].freeze/train_only"
        )
    if cfg.fused is not None:
        fused = cfg.fused
    elif fused is None:
        fused = device.type == "cuda"
    extra = {"fused": True} if fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, **extra
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **extra)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **extra)
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, cfg: ScheduleConfig, steps_per_epoch: int
) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based), before any plateau reduction.

    Every schedule starts after the warm-up (``step - warmup_steps``), except ``step``, whose milestones
    are absolute epochs. ``exponential`` multiplies by ``exp_gamma`` once per epoch after the warm-up
    (torch's ``ExponentialLR`` stepped per epoch, floored at ``min_lr_ratio``); ``cyclic`` is torch's
    ``CyclicLR`` (triangular / triangular2) between ``lr × min_lr_ratio`` and ``lr`` with a half-cycle of
    ``cyclic_step_epochs``, starting at the low end (torch's) or, after a warm-up, at the top where the
    warm-up ended; ``plateau`` is constant here (its reductions come
    from :class:`PlateauTracker`).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * step / warmup_steps
    floor = cfg.min_lr_ratio
    if cfg.name in ("constant", "plateau"):
        return 1.0
    if cfg.name == "step":
        epoch = step // max(1, steps_per_epoch)
        return cfg.gamma ** sum(epoch >= e for e in cfg.step_epochs)
    if cfg.name == "exponential":
        epochs_done = (step - warmup_steps) // max(1, steps_per_epoch)
        return max(cfg.exp_gamma**epochs_done, floor)
    if cfg.name == "cyclic":
        half = max(1, round(cfg.cyclic_step_epochs * steps_per_epoch))
        it = (
            step - warmup_steps + (half if warmup_steps > 0 else 0)
        )  # after a warm-up: from the top, going down
        cycle = math.floor(1 + it / (2 * half))
        x = abs(it / half - 2 * cycle + 1)
        amplitude = 1.0 if cfg.cyclic_mode == "triangular" else 1.0 / 2 ** (cycle - 1)
        return floor + (1.0 - floor) * max(0.0, 1.0 - x) * amplitude
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if cfg.name == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class PlateauTracker:
    """torch's ``ReduceLROnPlateau`` logic (relative threshold) as a multiplier of the schedule: after more
    than ``patience`` epochs without an improvement of the monitored metric by ``threshold`` (relative),
    the multiplier is multiplied by ``factor`` (not below ``min_scale``), then ``cooldown`` epochs pass
    before bad epochs count again. NaN metrics (no validation split) are ignored."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.monitor = cfg.plateau_monitor
        self.mode = "min" if self.monitor.endswith("loss") else "max"
        self.factor, self.patience = cfg.plateau_factor, cfg.plateau_patience
        self.threshold, self.cooldown, self.min_scale = (
            cfg.plateau_threshold,
            cfg.plateau_cooldown,
            cfg.min_lr_ratio,
        )
        self.scale = 1.0
        self.best: float | None = None
        self.bad_epochs = 0
        self.cooldown_left = 0

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best * (1.0 - self.threshold)
        return value > self.best * (1.0 + self.threshold)

    def update(self, value: float) -> None:
        if math.isnan(value):
            return
        if self._better(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            self.scale = max(self.scale * self.factor, self.min_scale)
            self.cooldown_left, self.bad_epochs = self.cooldown, 0

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("scale", "best", "bad_epochs", "cooldown_left")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """The per-step schedule (a ``LambdaLR`` over :func:`lr_factor`); with ``name: plateau`` it also
    holds a :class:`PlateauTracker` and takes the epoch's validation metrics through :meth:`observe`
    (fed by the ``PlateauFeed`` callback)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int
    ) -> None:
        self.total, self.steps_per_epoch = max(1, epochs * steps_per_epoch), steps_per_epoch
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        self.plateau = PlateauTracker(cfg) if cfg.name == "plateau" else None
        plateau = self.plateau
        super().__init__(
            optimizer,
            lambda step: (
                lr_factor(step, self.total, warmup, cfg, steps_per_epoch)
                * (plateau.scale if plateau else 1.0)
            ),
        )

    def _lrs_at_current_step(self) -> list[float]:
        """``get_lr()`` without torch's warning about calling it outside ``step()``."""
        return [
            base * factor(self.last_epoch)
            for factor, base in zip(self.lr_lambdas, self.base_lrs, strict=True)
        ]

    def set_epochs(self, epochs: int, apply: bool = True) -> None:
        """Change the schedule's horizon to ``epochs`` from the current step on (a time budget's plan);
        with ``apply`` the optimiser's learning rates follow at once."""
        self.total = max(1, epochs * self.steps_per_epoch)
        if apply:
            for group, lr in zip(self.optimizer.param_groups, self._lrs_at_current_step(), strict=True):
                group["lr"] = lr
            self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    @property
    def adapts_to_metrics(self) -> bool:
        return self.plateau is not None

    def observe(self, metrics: dict) -> None:
        """Update the plateau tracker with the epoch's ``metrics`` and apply the new lr at once."""
        if self.plateau is None:
            return
        self.plateau.update(float(metrics.get(self.plateau.monitor, float("nan"))))
        for group, lr in zip(self.optimizer.param_groups, self._lrs_at_current_step(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.pop("plateau", None)
        state["plateau_state"] = self.plateau.state_dict() if self.plateau is not None else None
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        plateau_state = state.pop("plateau_state", None)
        super().load_state_dict(state)
        if self.plateau is not None and plateau_state is not None:
            self.plateau.load_state_dict(plateau_state)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int
) -> Schedule:
    return Schedule(optimizer, cfg, epochs, steps_per_epoch)

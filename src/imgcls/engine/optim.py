"""Optimisers with parameter groups and the per-step warm-up + cosine schedule.

Groups: weight decay is not applied to norm weights and biases (1-D parameters) unless
``optim.decay_norm_and_bias``; the head's parameters may get a learning-rate multiplier
(``optim.head_lr_mult``, e.g. 10× for a fresh head on a pretrained backbone, SPEC §1.6).
The schedule is stepped every optimiser step: a linear warm-up from ``lr × warmup_start_factor``
(never 0 — seed 001's ``ep/5`` wasted its first epoch, SPEC §2.7) to ``lr``, then cosine (or
constant/step/linear) down to ``lr × min_lr_ratio``.
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
    model: nn.Module, cfg: OptimConfig, device: torch.device, extra: nn.Module | None = None
) -> torch.optim.Optimizer:
    """The optimiser over ``model``'s trainable parameters; ``extra`` (an objective's trainable
    extras, e.g. distillation projectors) gets its own group named ``objective``."""
    groups = param_groups(model, cfg)
    extra_params = [p for p in extra.parameters() if p.requires_grad] if extra is not None else []
    if extra_params:
        groups.append({"params": extra_params, "weight_decay": cfg.weight_decay, "lr": cfg.lr, "name": "objective"})
    if not groups:
        from imgcls.errors import ConfigError

        raise ConfigError("no trainable parameters: the stage freezes everything; adjust stages[].freeze/train_only")
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    extra = {"fused": True} if fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, **extra)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **extra)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **extra)
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_factor(step: int, total_steps: int, warmup_steps: int, cfg: ScheduleConfig, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * step / warmup_steps
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        epoch = step // max(1, steps_per_epoch)
        return cfg.gamma ** sum(epoch >= e for e in cfg.step_epochs)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = cfg.min_lr_ratio
    if cfg.name == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, epochs * steps_per_epoch)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg, steps_per_epoch)
    )

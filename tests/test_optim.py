"""Tests of optimisers and schedules (engine/optim.py, SPEC §2.7/§5.5): parameter groups (no weight decay
on norms and biases, head learning-rate multiplier, frozen parameters left out) and the per-step warm-up +
cosine / linear / step / constant factors at hand-computed steps."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from imgcls.config import ModelConfig, OptimConfig, ScheduleConfig
from imgcls.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from imgcls.errors import ConfigError
from imgcls.models.classifier import build_model

CPU = torch.device("cpu")


@pytest.fixture
def model() -> nn.Module:
    return build_model(
        ModelConfig(
            backbone_args={"layout": "mnist", "width_mult": 0.25}, head="mlp", head_args={"hidden": [16]}
        ),
        10,
        1,
    )


def groups_by_name(model: nn.Module, cfg: OptimConfig) -> dict[str, dict]:
    return {g["name"]: g for g in param_groups(model, cfg)}


def test_no_decay_on_norms_and_biases(model):
    groups = groups_by_name(model, OptimConfig(lr=0.1, weight_decay=0.05))
    assert set(groups) == {"body", "body_no_decay", "head", "head_no_decay"}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    named = dict(model.named_parameters())
    for name, p in named.items():
        expected = ("head" if name.startswith("head.") else "body") + ("_no_decay" if p.ndim <= 1 else "")
        assert id(p) in ids[expected], name
    assert groups["body"]["weight_decay"] == 0.05 and groups["head"]["weight_decay"] == 0.05
    assert groups["body_no_decay"]["weight_decay"] == 0.0 and groups["head_no_decay"]["weight_decay"] == 0.0
    # every BatchNorm weight/bias and every Linear bias is undecayed; every conv weight is decayed
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, nn.BatchNorm2d):
            assert id(module.weight) in ids["body_no_decay"] and id(module.bias) in ids["body_no_decay"]
        if isinstance(module, nn.Conv2d):
            assert id(module.weight) in ids["body"], prefix
    assert id(model.head.fc.bias) in ids["head_no_decay"] and id(model.head.fc.weight) in ids["head"]
    # a partition of the parameters
    assert sum(len(g["params"]) for g in groups.values()) == len(named)


def test_decay_norm_and_bias_puts_everything_in_decayed_groups(model):
    groups = groups_by_name(model, OptimConfig(weight_decay=0.05, decay_norm_and_bias=True))
    assert set(groups) == {"body", "head"}
    assert all(g["weight_decay"] == 0.05 for g in groups.values())


def test_head_lr_multiplier(model):
    groups = groups_by_name(model, OptimConfig(lr=0.01, head_lr_mult=10.0))
    assert groups["body"]["lr"] == pytest.approx(0.01) and groups["body_no_decay"]["lr"] == pytest.approx(
        0.01
    )
    assert groups["head"]["lr"] == pytest.approx(0.1) and groups["head_no_decay"]["lr"] == pytest.approx(0.1)


def test_frozen_parameters_are_left_out(model):
    model.backbone.requires_grad_(False)
    groups = groups_by_name(model, OptimConfig())
    assert set(groups) == {"head", "head_no_decay"}
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(model, OptimConfig(), CPU)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("rmsprop", torch.optim.RMSprop),
    ],
)
def test_build_optimizer_kinds(model, name, cls):
    opt = build_optimizer(model, OptimConfig(name=name, lr=0.02, head_lr_mult=2.0), CPU)
    assert isinstance(opt, cls)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["body"] == pytest.approx(0.02) and lrs["head"] == pytest.approx(0.04)
    if name == "sgd":
        assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.9


# ------------------------------------------------------------------------------- schedule factors
def factor(step: int, total: int = 110, warmup: int = 10, **kw) -> float:
    cfg = ScheduleConfig(**{"name": "cosine", "warmup_start_factor": 0.1, "min_lr_ratio": 0.01, **kw})
    return lr_factor(step, total, warmup, cfg, steps_per_epoch=10)


def test_warmup_cosine_factors_at_hand_computed_steps():
    assert factor(0) == pytest.approx(0.1)  # start factor, never 0
    assert factor(5) == pytest.approx(0.1 + 0.9 * 5 / 10)  # linear warm-up
    assert factor(9) == pytest.approx(0.91)
    assert factor(10) == pytest.approx(1.0)  # end of warm-up
    assert factor(60) == pytest.approx(0.5 * (1 + 0.01))  # half-way through the cosine
    assert factor(35) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert factor(110) == pytest.approx(0.01)  # end = min_lr_ratio
    assert factor(500) == pytest.approx(0.01)  # stays at the floor


def test_cosine_without_warmup_starts_at_one():
    assert factor(0, warmup=0) == pytest.approx(1.0)
    assert factor(55, warmup=0) == pytest.approx(0.5 * 1.01)


def test_other_schedules():
    assert factor(10, name="constant") == 1.0 and factor(100, name="constant") == 1.0
    assert factor(3, name="constant") == pytest.approx(0.1 + 0.9 * 0.3)  # warm-up applies to all
    assert factor(60, name="linear") == pytest.approx(0.01 + 0.99 * 0.5)
    assert factor(110, name="linear") == pytest.approx(0.01)
    step = {"name": "step", "step_epochs": [3, 6], "gamma": 0.5}
    assert factor(29, warmup=0, **step) == 1.0  # epoch 2
    assert factor(30, warmup=0, **step) == 0.5  # epoch 3
    assert factor(65, warmup=0, **step) == 0.25  # epoch 6


def test_scheduler_drives_the_optimizer_per_step(model):
    opt = build_optimizer(model, OptimConfig(lr=0.1, head_lr_mult=2.0), CPU)
    sched_cfg = ScheduleConfig(name="cosine", warmup_epochs=0.5, warmup_start_factor=0.2, min_lr_ratio=0.1)
    sched = build_scheduler(opt, sched_cfg, epochs=2, steps_per_epoch=20)  # warm-up 10 steps, 40 steps in all
    lrs = []
    for _ in range(41):
        lrs.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    assert lrs[0]["body"] == pytest.approx(0.02) and lrs[0]["head"] == pytest.approx(0.04)
    assert lrs[10]["body"] == pytest.approx(0.1) and lrs[10]["head"] == pytest.approx(0.2)
    assert lrs[25]["body"] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))  # cosine half-way: (40 - 10) / 2 + 10
    assert lrs[40]["body"] == pytest.approx(0.01) and lrs[40]["head"] == pytest.approx(0.02)
    body = [row["body"] for row in lrs]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(body[:11]))  # rising warm-up
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(body[10:]))  # falling cosine

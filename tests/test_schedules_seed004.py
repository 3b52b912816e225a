"""Seed 004's extra lr schedules (issue 15): ``exponential``, ``cyclic`` and ``plateau``, each checked step by
step against hand-computed learning rates (and against torch's own schedulers where one exists), the
plateau schedule fed by its callback, and its state surviving a checkpoint round trip."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch

from imgcls.config import ScheduleConfig
from imgcls.engine.callbacks import PlateauFeed
from imgcls.engine.optim import build_scheduler


def optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(cfg: ScheduleConfig, steps: int, epochs: int = 4, steps_per_epoch: int = 2) -> list[float]:
    """The lr used by each of ``steps`` optimiser steps."""
    opt = optimizer()
    sched = build_scheduler(opt, cfg, epochs, steps_per_epoch)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_exponential_decays_once_per_epoch_after_the_warm_up_down_to_the_floor():
    cfg = ScheduleConfig(
        name="exponential", warmup_epochs=1, warmup_start_factor=0.1, exp_gamma=0.5, min_lr_ratio=0.2
    )
    # warm-up epoch (2 steps): 0.1, 0.1 + 0.9·½; then 1, 1 | ½, ½ | ¼, ¼ | max(⅛, 0.2)
    expected = [0.1, 0.55, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2]
    assert lrs(cfg, 10) == pytest.approx(expected)


def test_exponential_without_warm_up_matches_torch_exponential_lr_stepped_per_epoch():
    cfg = ScheduleConfig(name="exponential", exp_gamma=0.9)
    ours = lrs(cfg, 8)
    opt = optimizer()
    ref = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    theirs = []
    for _epoch in range(4):
        theirs += [opt.param_groups[0]["lr"]] * 2
        opt.step()
        ref.step()
    assert ours == pytest.approx(theirs)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # low end 0.2, half-cycle 2 steps: 0.2 → 0.6 → 1 → 0.6 → 0.2 → ...
        ("triangular", [0.2, 0.6, 1.0, 0.6, 0.2, 0.6, 1.0, 0.6, 0.2]),
        # the second cycle's amplitude is halved: 0.2 + 0.8·½·{½, 1, ½}
        ("triangular2", [0.2, 0.6, 1.0, 0.6, 0.2, 0.4, 0.6, 0.4, 0.2]),
    ],
)
def test_cyclic_by_hand_and_against_torch_cyclic_lr(mode, expected):
    cfg = ScheduleConfig(name="cyclic", min_lr_ratio=0.2, cyclic_step_epochs=1.0, cyclic_mode=mode)
    ours = lrs(cfg, 9)
    assert ours == pytest.approx(expected)
    opt = optimizer()
    ref = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=0.2, max_lr=1.0, step_size_up=2, mode=mode, cycle_momentum=False
    )
    theirs = []
    for _ in range(9):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert ours == pytest.approx(theirs)


def test_cyclic_continues_from_the_top_after_a_warm_up():
    cfg = ScheduleConfig(
        name="cyclic", warmup_epochs=1, warmup_start_factor=0.5, min_lr_ratio=0.0, cyclic_step_epochs=1.0
    )
    # warm-up 0.5 → 0.75, then the cycle from its top (no jump down to the low end): 1, ½, 0, ½, 1
    assert lrs(cfg, 7) == pytest.approx([0.5, 0.75, 1.0, 0.5, 0.0, 0.5, 1.0])


#: (val_loss per epoch, lr multiplier after that epoch) for factor ½, patience 1, cooldown 1, floor 0.1, threshold 0
PLATEAU_SEQUENCE = [
    (1.00, 1.0),  # best
    (0.90, 1.0),  # better
    (0.95, 1.0),  # 1 bad epoch (not more than the patience)
    (0.95, 0.5),  # 2 bad → reduce, cooldown 1
    (0.95, 0.5),  # bad, but in cooldown: the count restarts
    (0.95, 0.5),  # 1 bad
    (0.80, 0.5),  # better
    (0.90, 0.5),  # 1 bad
    (0.90, 0.25),  # 2 bad → reduce
    (0.90, 0.25),  # cooldown
    (0.90, 0.25),
    (0.90, 0.125),
    (0.90, 0.125),  # cooldown
    (0.90, 0.125),
    (0.90, 0.1),  # ⅛·½ is below the floor 0.1
]


def plateau_cfg(**kw) -> ScheduleConfig:
    return ScheduleConfig(
        name="plateau",
        plateau_factor=0.5,
        plateau_patience=1,
        plateau_cooldown=1,
        plateau_threshold=0.0,
        min_lr_ratio=0.1,
        **kw,
    )


def test_plateau_reduces_the_lr_by_hand_and_like_torch_reduce_lr_on_plateau():
    opt = optimizer()
    sched = build_scheduler(opt, plateau_cfg(), 15, 3)
    trainer = SimpleNamespace(scheduler=sched, scheduler_paused=False)
    feed = PlateauFeed()
    ref_opt = optimizer()
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
        ref_opt, mode="min", factor=0.5, patience=1, threshold=0.0, cooldown=1, min_lr=0.1
    )
    for loss, expected in PLATEAU_SEQUENCE:
        for _ in range(3):  # an epoch of optimiser steps: the lr holds between reductions
            opt.step()
            sched.step()
            assert opt.param_groups[0]["lr"] == pytest.approx(sched.plateau.scale)
        feed.on_validation_end(trainer, {"val_loss": loss, "val_acc": 0.5})
        ref.step(loss)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected)  # applied at once, before the next step
        assert ref_opt.param_groups[0]["lr"] == pytest.approx(expected)


def test_plateau_warm_up_monitor_and_paused_scheduler():
    opt = optimizer()
    sched = build_scheduler(
        opt, plateau_cfg(warmup_epochs=1, warmup_start_factor=0.5, plateau_monitor="val_acc"), 4, 2
    )
    trainer = SimpleNamespace(scheduler=sched, scheduler_paused=False)
    seen = []
    for acc in (0.5, 0.4, 0.4, 0.4):  # val_acc is maximised: 0.4 never improves on 0.5
        for _ in range(2):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        PlateauFeed().on_validation_end(trainer, {"val_loss": 0.0, "val_acc": acc})
    # warm-up 0.5, 0.75; then 1 until 2 bad epochs (> patience 1) halve it after epoch 3
    assert seen == pytest.approx([0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    trainer.scheduler_paused = True  # SWA drives the lr: the feed leaves the schedule alone
    before = sched.plateau.state_dict()
    PlateauFeed().on_validation_end(trainer, {"val_loss": 0.0, "val_acc": 0.0})
    assert sched.plateau.state_dict() == before
    PlateauFeed().on_validation_end(
        SimpleNamespace(
            scheduler=build_scheduler(optimizer(), ScheduleConfig(), 1, 1), scheduler_paused=False
        ),
        {"val_loss": 1.0},
    )  # no-op elsewhere


def test_plateau_state_survives_a_weights_only_checkpoint_round_trip():
    opt = optimizer()
    sched = build_scheduler(opt, plateau_cfg(), 10, 1)
    trainer = SimpleNamespace(scheduler=sched, scheduler_paused=False)
    for loss, _ in PLATEAU_SEQUENCE[:5]:
        opt.step()
        sched.step()
        PlateauFeed().on_validation_end(trainer, {"val_loss": loss})
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2 = optimizer()
    resumed = build_scheduler(opt2, plateau_cfg(), 10, 1)
    resumed.load_state_dict(state)
    assert resumed.plateau.state_dict() == sched.plateau.state_dict()
    trainer2 = SimpleNamespace(scheduler=resumed, scheduler_paused=False)
    for loss, _ in PLATEAU_SEQUENCE[5:]:
        for s, o, t in ((sched, opt, trainer), (resumed, opt2, trainer2)):
            o.step()
            s.step()
            PlateauFeed().on_validation_end(t, {"val_loss": loss})
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)

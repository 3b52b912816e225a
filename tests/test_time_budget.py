"""train.time_budget_s: the epoch plan by hand, the schedule's new horizon, config errors, and real runs
whose epochs, learning rate and checkpoints follow the plan (also after a resume)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from tests.tiny_runs import TINY_OVERRIDES, requires_fashion_mnist, single_thread

import imgcls.engine.callbacks as callbacks_module
from imgcls import api
from imgcls.config import ScheduleConfig, load_config
from imgcls.engine.callbacks import planned_epochs
from imgcls.engine.optim import build_scheduler
from imgcls.errors import ConfigError
from imgcls.runtime import checkpoint as ckpt_io


def test_the_plan_fills_the_budget_with_whole_epochs() -> None:
    constant = lambda e: 1.0  # noqa: E731
    # 100 s budget, one epoch done in 10 s at a 10 s pace: 9 more fit exactly (10 in all); 95 s: 1 + 8
    assert planned_epochs(100.0, 10.0, done=1, pace_s=10.0, cap=50, cost=constant) == 10
    assert planned_epochs(95.0, 10.0, done=1, pace_s=10.0, cap=50, cost=constant) == 9
    assert planned_epochs(100.0, 10.0, done=1, pace_s=10.0, cap=4, cost=constant) == 4  # train.epochs caps it
    assert planned_epochs(5.0, 10.0, done=1, pace_s=10.0, cap=50, cost=constant) == 1  # overran: what is done
    # later: 5 epochs took 60 s and the pace is now 12 s: (100 - 60) / 12 = 3.3, so 3 more
    assert planned_epochs(100.0, 60.0, done=5, pace_s=12.0, cap=50, cost=constant) == 8
    # progressive resizing: epoch e costs (20 + 2e)² / 28² of a full one; at a full-size pace of 10·(28/20)² s
    # epochs 1, 2, 3 take 10·(22/20)² = 12.1, 14.4, 16.9 s: 10 + 12.1 + 14.4 = 36.5 ≤ 40 < 53.4
    growing = lambda e: (min(28, 20 + 2 * e) / 28) ** 2  # noqa: E731
    pace = 10.0 / growing(0)
    assert planned_epochs(40.0, 10.0, done=1, pace_s=pace, cap=50, cost=growing) == 3
    assert planned_epochs(53.5, 10.0, done=1, pace_s=pace, cap=50, cost=growing) == 4


def test_a_new_horizon_keeps_the_step_and_moves_the_cosine() -> None:
    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    cfg = ScheduleConfig(name="cosine", warmup_epochs=1)
    sched = build_scheduler(opt := optimizer(), cfg, epochs=10, steps_per_epoch=4)
    for _ in range(6):  # warm-up epoch (4 steps) and 2 steps of the cosine
        opt.step()
        sched.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch warning about reading the lr outside step()
        sched.set_epochs(5)
    # step 6 of 20 in all: the cosine runs over steps 4..20, i.e. progress 2/16
    expected = 0.5 * (1 + math.cos(math.pi * 2 / 16))
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)
    fresh = build_scheduler(opt2 := optimizer(), cfg, epochs=5, steps_per_epoch=4)
    for _ in range(6):
        opt2.step()
        fresh.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(expected)  # as if planned for 5 epochs from the start
    for _ in range(14):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # decayed fully at the new end


def test_a_multi_stage_run_refuses_a_time_budget() -> None:
    with pytest.raises(ConfigError, match="single-stage"):
        load_config(None, ["train.time_budget_s=60", "stages=[{name: a, epochs: 1}, {name: b, epochs: 1}]"])
    with pytest.raises(ConfigError, match="time_budget_s"):
        load_config(None, ["train.time_budget_s=0"])


RUN = [
    *TINY_OVERRIDES,
    "data.name=fashion_mnist",
    "data.train_subset=600",
    "data.test_subset=200",
    "train.batch_size=100",
    "train.precision=fp32",
    "train.channels_last=false",
    "schedule.name=cosine",
    "schedule.warmup_epochs=1",
]


@requires_fashion_mnist
def test_a_budgeted_run_trains_the_planned_epochs_and_a_resume_keeps_the_plan(tmp_path, monkeypatch) -> None:
    asked = []

    def plan(budget_s, spent_s, done, pace_s, cap, cost):
        asked.append((budget_s, done, cap, cost(0)))
        return 2  # whatever the clock says

    monkeypatch.setattr(callbacks_module, "planned_epochs", plan)
    with single_thread():
        result = api.train(
            None,
            [*RUN, "train.epochs=6", "train.time_budget_s=30", f"output.dir={tmp_path}"],
            evaluate_after=False,
        )
    # asked after every epoch; first with train.epochs as the cap, then with the plan
    assert asked == [(30.0, 1, 6, 1.0), (30.0, 2, 2, 1.0)]
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ended at the planned end
    ckpt = ckpt_io.load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert ckpt["progress"]["planned_epochs"] == 2

    def must_not_plan(*args, **kwargs):
        raise AssertionError("a resumed run planned again")

    monkeypatch.setattr(callbacks_module, "planned_epochs", must_not_plan)
    with single_thread():
        resumed = api.train(resume=result.run_dir, evaluate_after=False)
    assert len(resumed.history) == 2  # the plan survived: nothing left to train of the 2 planned epochs


@requires_fashion_mnist
def test_a_run_that_slows_down_shortens_its_plan_but_never_lengthens_it(tmp_path, monkeypatch) -> None:
    plans = iter([4, 5, 3])  # after epoch 1: 4; after 2: 5 (ignored, never longer); after 3: 3 (shorter)
    monkeypatch.setattr(callbacks_module, "planned_epochs", lambda *a, **k: next(plans))
    with single_thread():
        result = api.train(
            None,
            [*RUN, "train.epochs=8", "train.time_budget_s=30", f"output.dir={tmp_path}"],
            evaluate_after=False,
        )
    assert len(result.history) == 3
    ckpt = ckpt_io.load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert ckpt["progress"]["planned_epochs"] == 3


@requires_fashion_mnist
def test_a_budget_smaller_than_one_epoch_stops_after_it_and_a_large_one_trains_every_epoch(tmp_path) -> None:
    with single_thread():
        short = api.train(
            None,
            [*RUN, "train.epochs=5", "train.time_budget_s=1e-3", f"output.dir={tmp_path}"],
            evaluate_after=False,
        )
        long = api.train(
            None,
            [*RUN, "train.epochs=2", "train.time_budget_s=1e6", f"output.dir={tmp_path}"],
            evaluate_after=False,
        )
    assert len(short.history) == 1
    assert len(long.history) == 2

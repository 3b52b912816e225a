"""Precision/layout chosen by measurement (engine/autotune.py, issue 11): the faster candidate wins,
the choice is recorded in the run, explicit settings are not tuned, and a resumed run reuses the
recorded choice instead of measuring again."""

from __future__ import annotations

import time

import pytest
import torch
from tests.tiny_runs import TINY_OVERRIDES, requires_fashion_mnist, single_thread

from imgcls import api
from imgcls.engine import autotune
from imgcls.runtime import checkpoint as ckpt_io


def test_measure_picks_the_faster_candidate():
    model = torch.nn.Linear(4, 2)
    slow = {("fp32", False): 0.02, ("fp32", True): 0.02, ("bf16", False): 0.0, ("bf16", True): 0.02}

    def make_step(clone):
        assert clone is not model  # measured on a copy

        def step(amp_dtype, channels_last):
            precision = "bf16" if amp_dtype is torch.bfloat16 else "fp32"
            time.sleep(slow[(precision, channels_last)])

        return step

    execution = autotune.measure(model, make_step, list(slow), warmup=0, steps=2)
    assert (execution.precision, execution.channels_last, execution.source) == ("bf16", False, "measured")
    assert len(execution.candidates) == 4
    assert min(c["step_ms"] for c in execution.candidates) == execution.candidates[2]["step_ms"]


def test_a_failing_candidate_is_skipped_not_fatal():
    def make_step(clone):
        def step(amp_dtype, channels_last):
            if amp_dtype is not None:
                raise RuntimeError("no bf16 kernel for this op\nmore detail")

        return step

    execution = autotune.measure(
        torch.nn.Linear(2, 2), make_step, [("fp32", False), ("bf16", False)], warmup=0, steps=1
    )
    assert execution.precision == "fp32"
    assert execution.candidates[1]["error"] == "no bf16 kernel for this op"


def test_explicit_settings_pin_their_axis():
    from imgcls.config import TrainConfig

    cpu = torch.device("cpu")
    assert autotune.candidate_grid(TrainConfig(), cpu) == [
        ("fp32", False),
        ("fp32", True),
        ("bf16", False),
        ("bf16", True),
    ]
    assert autotune.candidate_grid(TrainConfig(precision="fp32"), cpu) == [("fp32", False), ("fp32", True)]
    assert autotune.candidate_grid(TrainConfig(channels_last=False), cpu) == [
        ("fp32", False),
        ("bf16", False),
    ]
    explicit = TrainConfig(precision="bf16", channels_last=True)
    assert not autotune.needs_tuning(explicit, cpu)
    ex = autotune.default_execution(explicit, cpu)
    assert (ex.precision, ex.channels_last, ex.source, ex.candidates) == ("bf16", True, "explicit", [])


RUN = [
    *TINY_OVERRIDES,
    "train.autotune_max_share=1.0",
    "data.train_subset=600",
    "data.test_subset=100",
    "train.batch_size=50",
    "train.epochs=2",
]


@requires_fashion_mnist
def test_choice_is_recorded_and_reused_on_resume(tmp_path, monkeypatch):
    calls = []
    real_measure = autotune.measure

    def fake_measure(model, make_step, grid, **kw):
        calls.append(grid)
        real_measure(model, make_step, grid, **kw)  # really runs the steps on a copy
        return autotune.Execution(
            "bf16", True, "measured", [{"precision": "bf16", "channels_last": True, "step_ms": 1.0}]
        )

    import imgcls.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "measure", fake_measure)
    with single_thread():
        run = api.train(
            None, [*RUN, "train.epochs=1", f"output.dir={tmp_path}"], evaluate_after=False
        ).run_dir
    assert len(calls) == 1
    ckpt = ckpt_io.load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["execution"]["precision"] == "bf16" and ckpt["execution"]["channels_last"] is True

    def must_not_measure(*a, **k):
        raise AssertionError("a resumed run re-measured")

    monkeypatch.setattr(trainer_module, "measure", must_not_measure)
    with single_thread():
        api.train(resume=run, overrides=["train.epochs=2"], evaluate_after=False)
    resumed = ckpt_io.load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["execution"]["precision"] == "bf16" and resumed["progress"]["global_epoch"] == 2


@requires_fashion_mnist
def test_explicit_run_is_not_measured(tmp_path, monkeypatch):
    import imgcls.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "measure", lambda *a, **k: pytest.fail("measured an explicit config"))
    with single_thread():
        run = api.train(
            None,
            [
                *RUN,
                "train.epochs=1",
                "train.precision=fp32",
                "train.channels_last=false",
                f"output.dir={tmp_path}",
            ],
            evaluate_after=False,
        ).run_dir
    assert ckpt_io.load_checkpoint(run / "checkpoints" / "last.pt")["execution"]["source"] == "explicit"


def test_optimizer_kernels_are_tuned_only_when_fused_is_null_on_cpu():
    from imgcls.config import OptimConfig, TrainConfig

    cpu = torch.device("cpu")
    explicit = TrainConfig(precision="fp32", channels_last=False)
    assert autotune.fused_candidates(OptimConfig(), cpu) == [False, True]
    assert autotune.needs_tuning(explicit, cpu, OptimConfig())  # the optimiser axis is still open
    assert autotune.fused_candidates(OptimConfig(fused=False), cpu) == []
    assert not autotune.needs_tuning(explicit, cpu, OptimConfig(fused=True))
    assert autotune.fused_candidates(OptimConfig(name="rmsprop"), cpu) == []  # no fused kernel
    assert autotune.fused_candidates(OptimConfig(), torch.device("cuda")) == []  # null means fused there


def test_measure_optimizer_picks_the_faster_kernel_and_leaves_the_model_alone(monkeypatch):
    from imgcls.config import OptimConfig
    from imgcls.engine import optim as optim_module

    real_build = optim_module.build_optimizer

    def build(model, cfg, device, extra=None, fused=None):
        opt = real_build(model, cfg, device, extra=extra, fused=fused)
        if not fused:  # make the foreach kernel artificially slow
            step = opt.step
            opt.step = lambda *a, **k: (time.sleep(0.05), step(*a, **k))[1]
        return opt

    monkeypatch.setattr(optim_module, "build_optimizer", build)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    fused, rows = autotune.measure_optimizer(model, OptimConfig(), torch.device("cpu"), steps=3)
    assert fused is True
    assert [r["fused"] for r in rows] == [False, True] and rows[0]["step_ms"] > rows[1]["step_ms"] >= 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_execution_round_trip_keeps_the_optimizer_choice():
    ex = autotune.Execution("bf16", True, "measured", [], True, [{"fused": True, "step_ms": 1.0}])
    back = autotune.Execution.from_dict(ex.to_dict())
    assert (back.fused_optimizer, back.source, back.optimizer_candidates) == (
        True,
        "recorded",
        ex.optimizer_candidates,
    )
    old = autotune.Execution.from_dict({"precision": "fp32", "channels_last": False})  # a run from before
    assert old.fused_optimizer is None
    assert back.describe() == "bf16 + channels_last, fused optimizer"


@requires_fashion_mnist
def test_measured_optimizer_kernel_is_used_recorded_and_reused(tmp_path, monkeypatch):
    import imgcls.engine.trainer as trainer_module

    calls = []

    def fake(model, optim_cfg, device):
        calls.append(optim_cfg.name)
        return True, [{"fused": False, "step_ms": 2.0}, {"fused": True, "step_ms": 1.0}]

    monkeypatch.setattr(trainer_module, "measure_optimizer", fake)
    explicit = ["train.precision=fp32", "train.channels_last=false"]
    with single_thread():
        run = api.train(
            None, [*RUN, *explicit, "train.epochs=1", f"output.dir={tmp_path}"], evaluate_after=False
        ).run_dir
    assert calls == ["adamw"]
    ckpt = ckpt_io.load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["execution"]["fused_optimizer"] is True and ckpt["execution"]["source"] == "explicit"

    built = []
    real_build = trainer_module.build_optimizer

    def spy(*a, **k):
        opt = real_build(*a, **k)
        built.append(opt.defaults.get("fused"))
        return opt

    monkeypatch.setattr(trainer_module, "measure_optimizer", lambda *a, **k: pytest.fail("re-measured"))
    monkeypatch.setattr(trainer_module, "build_optimizer", spy)
    with single_thread():
        api.train(resume=run, overrides=["train.epochs=2"], evaluate_after=False)
    assert built == [True]


def test_two_passes_time_the_grid_forwards_then_backwards():
    order = []

    def make_step(clone):
        def step(amp_dtype, channels_last):
            order.append(("bf16" if amp_dtype is torch.bfloat16 else "fp32", channels_last))

        return step

    grid = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    ex = autotune.measure(torch.nn.Linear(2, 2), make_step, grid, warmup=0, steps=1, passes=2)
    assert order == [*grid, *reversed(grid)]
    assert len(ex.candidates) == 4 and all(c["step_ms"] >= 0 for c in ex.candidates)

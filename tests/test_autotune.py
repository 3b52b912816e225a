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

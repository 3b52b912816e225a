"""Training/evaluation edge cases: SIGTERM/SIGINT during the final test-set evaluation end the process with one
line and 128 + signal (training is complete and saved, the run is left unevaluated); top-k accuracies with
k ≥ the number of classes are dropped with one warning; a non-finite loss is reported without PyTorch's
requires_grad warning; damaged (NaN) weights or non-finite outputs stop the evaluation with one line and no
metrics written."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from imgcls import api
from imgcls.engine.callbacks import Callback
from imgcls.errors import CheckpointError, TrainingError, TrainingInterrupted
from imgcls.evaluation import evaluate as evaluate_module
from imgcls.evaluation.metrics import (
    classification_metrics,
    reportable_top_k,
    require_finite_probs,
    topk_accuracy,
)
from imgcls.runtime import checkpoint as ckpt_io
from imgcls.runtime.signals import request_stop
from test_recovery import nan_loss_at
from tiny_runs import TINY_OVERRIDES, requires_fashion_mnist, single_thread

REPO = Path(__file__).resolve().parents[1]

#: 270 training images / batch 45 = 6 steps, one epoch, 100 test images
TINY = [
    *TINY_OVERRIDES,
    "data.train_subset=300",
    "data.test_subset=100",
    "train.epochs=1",
    "train.batch_size=45",
    "train.precision=fp32",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A trained, not yet evaluated tiny run (tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("tiny")
    return api.train(None, [*TINY, f"output.dir={out}"], evaluate_after=False).run_dir


# ------------------------------------------------------------------------------- top-k accuracy
#: 4 images, 3 classes; the rank of the target among the classes: 1, 2, 3, 1
PROBS = torch.tensor(
    [
        [0.7, 0.2, 0.1],  # target 0: top-1
        [0.5, 0.3, 0.2],  # target 1: second
        [0.6, 0.3, 0.1],  # target 2: last
        [0.1, 0.1, 0.8],  # target 2: top-1
    ]
)
TARGETS = torch.tensor([0, 1, 2, 2])


def test_topk_accuracy_by_hand():
    assert topk_accuracy(PROBS, TARGETS, 1) == pytest.approx(2 / 4)
    assert topk_accuracy(PROBS, TARGETS, 2) == pytest.approx(3 / 4)


def test_top_k_at_or_above_the_class_count_is_dropped_with_one_warning(caplog):
    assert reportable_top_k([1, 5, 2, 3], 3) == ([2], [3, 5])
    with caplog.at_level(logging.WARNING):
        metrics = classification_metrics(PROBS, TARGETS, ["a", "b", "c"], top_k=[1, 2, 3, 5])
    assert metrics["top2_accuracy"] == pytest.approx(3 / 4)
    assert metrics["accuracy"] == pytest.approx(2 / 4)
    assert not {"top1_accuracy", "top3_accuracy", "top5_accuracy"} & set(metrics)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert "k = 3, 5" in warned[0] and "3 classes" in warned[0] and "eval.top_k" in warned[0]


def test_top_k_below_the_class_count_warns_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        metrics = classification_metrics(PROBS, TARGETS, ["a", "b", "c"], top_k=[1, 2])
    assert metrics["top2_accuracy"] == pytest.approx(3 / 4)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# ------------------------------------------------------------------------------- non-finite loss, no warning
@pytest.fixture
def torch_warns_always():
    """PyTorch gives some warnings (requires_grad → scalar among them) once per process: every time here."""
    before = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    yield
    torch.set_warn_always(before)


@requires_fashion_mnist
@pytest.mark.parametrize("mode", ["stop", "skip_step"])
def test_a_non_finite_loss_is_reported_without_a_requires_grad_warning(
    mode, tmp_path, monkeypatch, torch_warns_always
):
    nan_loss_at(monkeypatch, {2}, once=True)
    overrides = [*TINY, f"train.on_nonfinite={mode}", f"output.dir={tmp_path}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if mode == "stop":
            with pytest.raises(TrainingError, match=r"loss became nan at .*step 2 \(terms: ce="):
                api.train(None, overrides, evaluate_after=False)
        else:
            result = api.train(None, overrides, evaluate_after=False)
            last = ckpt_io.load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
            assert last["progress"]["skipped_steps"] == 1
    assert not [w for w in caught if "requires_grad" in str(w.message)]


# ------------------------------------------------------------------------------- NaN at evaluation
@requires_fashion_mnist
def test_nan_weights_stop_the_evaluation_with_one_line(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    path = run_dir / "checkpoints" / "best.pt"
    ckpt = ckpt_io.load_checkpoint(path)
    damaged = sorted(k for k in ckpt["model"] if k.startswith("head.") and k.endswith("weight"))[0]
    ckpt["model"][damaged].fill_(float("nan"))
    ckpt_io.atomic_save(ckpt, path)
    with pytest.raises(CheckpointError) as info:
        api.evaluate(run_dir)
    message = str(info.value)
    assert "\n" not in message
    assert f"the 'best' checkpoint of {run_dir} has non-finite weights ({damaged})" in message
    assert f"`imgcls evaluate {run_dir} --checkpoint last`" in message
    assert not (run_dir / "metrics.json").exists()
    metrics = api.evaluate(run_dir, "last")  # the intact checkpoint still evaluates
    assert 0.0 <= metrics["accuracy"] <= 1.0 and (run_dir / "metrics.json").is_file()


@requires_fashion_mnist
def test_non_finite_outputs_of_finite_weights_stop_the_evaluation(tiny_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    predict = evaluate_module.predict_loader

    def overflowing(*args, **kwargs):
        preds = predict(*args, **kwargs)
        preds.probs[3] = float("nan")  # what an fp16 overflow in the forward pass gives
        return preds

    monkeypatch.setattr(evaluate_module, "predict_loader", overflowing)
    with pytest.raises(CheckpointError) as info:
        api.evaluate(run_dir)
    message = str(info.value)
    assert "\n" not in message
    assert (
        f"the 'best' checkpoint of {run_dir} gives non-finite class probabilities for 1 of 100 test images"
        in message
    )
    assert "no metrics were computed" in message and "train.precision=fp32" in message
    assert not (run_dir / "metrics.json").exists()


def test_require_finite_probs_counts_the_images():
    probs = PROBS.clone()
    require_finite_probs(probs, "runs/x", "last", "test")  # finite: nothing to say
    probs[1, 2], probs[2, 0] = float("inf"), float("nan")
    with pytest.raises(CheckpointError, match=r"'last' checkpoint of runs/x .* for 2 of 4 hold-out images"):
        require_finite_probs(probs, "runs/x", "last", "hold-out")


# ------------------------------------------------------------------------------- signals during the evaluation
def test_a_signal_during_the_final_evaluation_is_one_line_and_128_plus_signal(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info, api.signals_stop_final_evaluation(tmp_path):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises at the next bytecode, long before this ends
    assert info.value.exit_code == 130
    assert str(info.value) == (
        f"stopped by SIGINT during the final evaluation; training finished and its checkpoint is saved in "
        f"{tmp_path}; evaluate it with `imgcls evaluate {tmp_path}`"
    )
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


class StopAtFitEnd(Callback):
    """A SIGTERM that arrives after training's last check, while the trainer finishes up."""

    name = "stop_at_fit_end"

    def on_fit_end(self, trainer) -> None:
        request_stop(signal.SIGTERM)


@requires_fashion_mnist
def test_a_signal_after_the_last_step_skips_the_evaluation(tmp_path, monkeypatch):
    def not_called(*args, **kwargs):
        raise AssertionError("the evaluation ran although a SIGTERM was pending")

    monkeypatch.setattr(api, "evaluate", not_called)
    with pytest.raises(TrainingInterrupted) as info:
        api.train(None, [*TINY, f"output.dir={tmp_path}"], callbacks=[StopAtFitEnd()])
    (run_dir,) = tmp_path.glob("*/*")
    assert info.value.exit_code == 143
    assert str(info.value).startswith("stopped by SIGTERM during the final evaluation; training finished")
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "train_summary.json").is_file()
    assert not (run_dir / "metrics.json").exists()


@requires_fashion_mnist
def test_a_signal_as_training_hands_over_to_the_evaluation_is_not_lost(tmp_path, monkeypatch):
    """A SIGTERM in the instant between training's handler and the evaluation's meets one of them, never
    Python's default (which would end the process silently)."""
    real = api.signals_stop_final_evaluation

    @contextlib.contextmanager
    def signal_first(run_dir):
        os.kill(os.getpid(), signal.SIGTERM)  # before the evaluation's handler is installed
        time.sleep(0.05)
        with real(run_dir):
            yield

    monkeypatch.setattr(api, "signals_stop_final_evaluation", signal_first)
    with pytest.raises(TrainingInterrupted) as info:
        api.train(None, [*TINY, f"output.dir={tmp_path}"])
    (run_dir,) = tmp_path.glob("*/*")
    assert info.value.exit_code == 143
    assert str(info.value).startswith("stopped by SIGTERM during the final evaluation; training finished")
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "metrics.json").exists()


@requires_fashion_mnist
def test_sigterm_during_the_final_evaluation_in_a_real_process(tmp_path):
    """The CLI as a user runs it: SIGTERM once training has finished (train_summary.json is written inside the
    evaluation's signal handling); the evaluation takes ≥ 1.5 s (throughput timing), a wide window."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    for attempt in range(3):  # a run that finished before the signal landed is tried again
        out = tmp_path / f"attempt{attempt}"
        args = [sys.executable, "-m", "imgcls", "train", *TINY, f"output.dir={out}"]
        process = subprocess.Popen(
            args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 240
        while (
            not list(out.glob("*/*/train_summary.json"))
            and time.monotonic() < deadline
            and process.poll() is None
        ):
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=240)
        if process.returncode != 0:
            break
    (run_dir,) = out.glob("*/*")
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
    assert lines == [
        f"interrupted: stopped by SIGTERM during the final evaluation; training finished and its checkpoint is "
        f"saved in {run_dir}; evaluate it with `imgcls evaluate {run_dir}`"
    ]
    assert (run_dir / "checkpoints" / "best.pt").is_file() and not (run_dir / "metrics.json").exists()
    metrics = api.evaluate(run_dir)  # what the line says to do works
    assert metrics["num_samples"] == 100 and (run_dir / "metrics.json").is_file()


def test_sighup_stops_training_gracefully_unless_started_under_nohup():
    from imgcls.runtime.signals import graceful_stop, stop_requested

    # as started from a terminal (pytest itself may run under nohup)
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with graceful_stop():
            os.kill(os.getpid(), signal.SIGHUP)  # the terminal or ssh session closed
            time.sleep(0.05)
            assert stop_requested() == signal.SIGHUP
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup` does
        with graceful_stop():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
            assert stop_requested() is None
    finally:
        signal.signal(signal.SIGHUP, before)

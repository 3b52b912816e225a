"""Crash-safe training (issue 17): SIGTERM/SIGINT finish the step, save ``recovery.pt`` and exit 143/130 with
one line saying how to resume; recovery checkpoints every N steps resume mid-epoch to bit-identical weights,
EMA and metrics (deterministic CPU mode, with augmentation, dropout and EMA on); divergence inside or at the
end of an epoch never reaches ``last.pt``/``best.pt``; ``train.on_nonfinite=skip_step`` drops bad steps;
resuming with a config that does not fit the checkpoint changes nothing in the run directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imgcls import api
from imgcls.engine.callbacks import Callback
from imgcls.engine.trainer import Trainer
from imgcls.errors import CheckpointError, TrainingError, TrainingInterrupted
from imgcls.runtime import checkpoint as ckpt_io
from imgcls.runtime.signals import request_stop
from tiny_runs import requires_fashion_mnist, single_thread

pytestmark = requires_fashion_mnist
REPO = Path(__file__).resolve().parents[1]

#: 540 training images / batch 45 = 12 steps per epoch, 2 epochs; augmentation, dropout and EMA draw randomness
RUN = [
    "data.train_subset=600",
    "data.test_subset=100",
    "model.backbone_args={layout: mnist, width_mult: 0.25}",
    "model.drop_rate=0.2",
    "augment.hflip=0.5",
    "augment.crop_padding=2",
    "optim.lr=0.003",
    "train.epochs=2",
    "train.batch_size=45",
    "train.deterministic=true",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.progress=false",
    "train.ema_decay=0.9",
    "output.tensorboard=false",
    "eval.plots=false",
    "eval.throughput_s=0",  # one timed batch: real-process runs miss tests/conftest.py's fixture
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with single_thread():
        yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class AtStep(Callback):
    """Runs ``action(trainer)`` once, after optimiser step ``step``."""

    name = "at_step"

    def __init__(self, step: int, action) -> None:
        self.step, self.action, self.done = step, action, False

    def on_train_step_end(self, trainer) -> None:
        if trainer.state.step == self.step and not self.done:
            self.done = True
            self.action(trainer)


def train_with(monkeypatch, overrides: list[str], *callbacks: Callback):
    build = api.build_callbacks
    with monkeypatch.context() as mp:
        mp.setattr(api, "build_callbacks", lambda cfg, run_dir: [*callbacks, *build(cfg, run_dir)])
        return api.train(None, overrides, evaluate_after=False)


def last(run_dir: Path) -> dict:
    return ckpt_io.load_checkpoint(run_dir / "checkpoints" / "last.pt")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_resumed_exactly(straight: Path, resumed: Path) -> None:
    a, b = last(straight), last(resumed)
    assert_same(a["model"], b["model"])
    assert_same(a["extra_weights"]["ema"], b["extra_weights"]["ema"])
    assert a["progress"] == b["progress"]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc")
    assert [[r[k] for k in keys] for r in a["history"]] == [[r[k] for k in keys] for r in b["history"]]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    return api.train(None, [*RUN, f"output.dir={out}"], evaluate_after=False).run_dir


def test_stop_request_mid_epoch_saves_and_resumes_bit_identical(straight, tmp_path, monkeypatch):
    with pytest.raises(TrainingInterrupted) as info:
        train_with(
            monkeypatch, [*RUN, f"output.dir={tmp_path}"], AtStep(17, lambda t: request_stop(signal.SIGTERM))
        )
    (run_dir,) = tmp_path.glob("*/*")
    message = str(info.value)
    assert info.value.exit_code == 143 and "\n" not in message
    assert message.startswith("stopped by SIGTERM at epoch 2, after step 17; saved ")
    assert f"resume with `imgcls train --resume {run_dir}`" in message
    recovery = ckpt_io.load_checkpoint(run_dir / "checkpoints" / "recovery.pt")
    assert recovery["mid_epoch"]["batches"] == 5 and recovery["progress"]["step"] == 17
    resumed = api.train(resume=run_dir, evaluate_after=False)
    assert_resumed_exactly(straight, resumed.run_dir)
    assert not (run_dir / "checkpoints" / "recovery.pt").exists()  # superseded by the final last.pt


def test_recovery_every_n_steps_survives_a_crash(straight, tmp_path, monkeypatch):
    def crash(trainer):
        raise RuntimeError("simulated crash (kill -9 would lose the same work)")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_with(
            monkeypatch, [*RUN, "train.checkpoint_every_steps=5", f"output.dir={tmp_path}"], AtStep(22, crash)
        )
    (run_dir,) = tmp_path.glob("*/*")
    files = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert files == ["best.pt", "last.pt", "recovery.pt"]  # one recovery file, no temporary files
    recovery = ckpt_io.load_checkpoint(run_dir / "checkpoints" / "recovery.pt")
    assert (
        recovery["progress"]["step"] == 20 and recovery["mid_epoch"]["batches"] == 8
    )  # at most 4 steps lost
    resumed = api.train(resume=run_dir, evaluate_after=False)
    assert_resumed_exactly(straight, resumed.run_dir)


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(straight, tmp_path, monkeypatch):
    def crash(trainer):
        raise RuntimeError("simulated kill before the first checkpoint")

    with pytest.raises(RuntimeError, match="simulated kill"):
        train_with(monkeypatch, [*RUN, f"output.dir={tmp_path}"], AtStep(2, crash))
    (run_dir,) = tmp_path.glob("*/*")
    assert not list((run_dir / "checkpoints").glob("*.pt"))  # nothing saved yet, only config.yaml
    resumed = api.train(resume=run_dir, evaluate_after=False)
    assert resumed.run_dir == run_dir
    assert_resumed_exactly(straight, run_dir)


def test_sigterm_in_a_real_process_exits_143_and_resumes_exactly(straight, tmp_path):
    """The CLI as a user runs it: SIGTERM arrives during epoch 2, the process saves and exits 143."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    args = [sys.executable, "-m", "imgcls", "train", *RUN, "--no-eval", f"output.dir={tmp_path}"]
    process = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while (
        not list(tmp_path.glob("*/*/history.csv")) and time.monotonic() < deadline and process.poll() is None
    ):
        time.sleep(0.05)  # epoch 1 written: the signal lands in epoch 2
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    (run_dir,) = tmp_path.glob("*/*")
    assert process.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "Traceback" not in stderr
    assert f"--resume {run_dir}" in " ".join(stderr.split())
    resumed = api.train(resume=run_dir, evaluate_after=False)
    assert_resumed_exactly(straight, resumed.run_dir)


# ------------------------------------------------------------------------------- divergence
def test_divergence_on_the_last_step_of_an_epoch_keeps_last_pt_finite(straight, tmp_path, monkeypatch):
    def diverge(trainer):  # the epoch's last update blows the weights up; its loss was still finite
        with torch.no_grad():
            next(trainer.model.head.parameters()).fill_(float("inf"))

    with pytest.raises(TrainingError) as info:
        train_with(monkeypatch, [*RUN, f"output.dir={tmp_path}"], AtStep(24, diverge))
    message = str(info.value)
    assert "\n" not in message and "after epoch 2, step 24" in message and "previous one is intact" in message
    (run_dir,) = tmp_path.glob("*/*")
    for name in ("last.pt", "best.pt"):
        ckpt = ckpt_io.load_checkpoint(run_dir / "checkpoints" / name)
        assert ckpt["progress"]["global_epoch"] == 1
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_divergence_inside_an_epoch_is_never_saved(tmp_path, monkeypatch):
    def diverge(trainer):
        with torch.no_grad():
            next(trainer.model.head.parameters()).fill_(float("nan"))

    with pytest.raises(
        TrainingError, match=r"weights became non-finite \(head.*by epoch 1, step 3; not writing recovery.pt"
    ):
        train_with(
            monkeypatch,
            [*RUN, "train.checkpoint_every_steps=1", f"output.dir={tmp_path}"],
            AtStep(3, diverge),
        )
    (run_dir,) = tmp_path.glob("*/*")
    recovery = ckpt_io.load_checkpoint(run_dir / "checkpoints" / "recovery.pt")
    assert recovery["progress"]["step"] == 2  # the recovery write after step 3 refused the NaN weights
    assert all(torch.isfinite(v).all() for v in recovery["model"].values() if v.is_floating_point())


def nan_loss_at(monkeypatch, steps: set[int], once: bool) -> None:
    weighted_sum = Trainer._weighted_sum
    hit: set[int] = set()

    def patched(self, terms):
        loss = weighted_sum(self, terms)
        if self.model.training and self.state.step in steps and not (once and self.state.step in hit):
            hit.add(self.state.step)
            return loss * float("nan")
        return loss

    monkeypatch.setattr(Trainer, "_weighted_sum", patched)


def test_skip_step_drops_a_non_finite_step_and_goes_on(tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, {4}, once=True)
    result = api.train(
        None,
        [*RUN, "train.epochs=1", "train.on_nonfinite=skip_step", f"output.dir={tmp_path}"],
        evaluate_after=False,
    )
    ckpt = last(result.run_dir)
    assert ckpt["progress"]["skipped_steps"] == 1 and ckpt["progress"]["step"] == 11  # 12 batches, 1 dropped
    assert torch.isfinite(torch.tensor(ckpt["history"][0]["train_loss"]))


def test_skip_step_stops_after_k_non_finite_steps_in_a_row(tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, {4}, once=False)
    with pytest.raises(TrainingError, match=r"non-finite 3 steps in a row.*epoch 1, step 4"):
        api.train(
            None,
            [*RUN, "train.on_nonfinite=skip_step", "train.max_skipped_steps=3", f"output.dir={tmp_path}"],
            evaluate_after=False,
        )


def test_nan_never_counts_as_a_best_score():
    from imgcls.engine.callbacks import improved

    assert not improved(float("nan"), None, "min") and not improved(float("nan"), 0.5, "max")
    assert not improved(float("inf"), None, "max") and not improved(float("-inf"), 1.0, "min")
    assert improved(0.4, float("nan"), "min") and improved(0.3, 0.5, "min")


# ------------------------------------------------------------------------------- resume against the wrong weights
@pytest.mark.parametrize(
    "override", ["model.head=mlp", "model.backbone_args={layout: mnist, width_mult: 0.5}"]
)
def test_resume_with_a_mismatching_model_changes_nothing(straight, tmp_path, override):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError) as info:
        api.train(resume=run_dir, overrides=[override], evaluate_after=False)
    message = str(info.value)
    assert (
        "\n" not in message
        and "cannot resume" in message
        and ("missing" in message or "wrong shape" in message)
    )
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # config.yaml byte-identical, nothing written


def test_resume_with_a_checkpoint_missing_a_tensor(straight, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    ckpt = last(run_dir)
    removed = sorted(ckpt["model"])[0]
    del ckpt["model"][removed]
    ckpt_io.atomic_save(ckpt, run_dir / "checkpoints" / "last.pt")
    config = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(CheckpointError, match=f"missing: {removed}"):
        api.train(resume=run_dir, evaluate_after=False)
    assert (run_dir / "config.yaml").read_bytes() == config

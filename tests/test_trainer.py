"""Tests of the training engine (engine/trainer.py, callbacks.py, averaging.py, checkpoint.py) on real
Fashion-MNIST subsets: a short run learns; an interrupted run resumed from ``last.pt`` reaches bit-identical
weights (deterministic CPU mode, with augmentation, dropout, EMA and SWA on); checkpoint writes are atomic and
unreadable checkpoints are CheckpointErrors; a diverging loss is a one-line TrainingError; stages freeze
modules (parameters and BatchNorm statistics) and switch heads; EMA/SWA validate and evaluate."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from imgcls import api
from imgcls.config import load_config
from imgcls.data.prepare import make_loader, prepare_data
from imgcls.engine.callbacks import Callback, ProgressPrinter, StopAtValAcc
from imgcls.engine.trainer import Trainer
from imgcls.errors import CheckpointError, ConfigError, TrainingError
from imgcls.models.classifier import build_model
from imgcls.models.heads.linear import MLPHead
from imgcls.runtime import checkpoint as ckpt_io
from tiny_runs import TINY_OVERRIDES, requires_fashion_mnist, shared_run, single_thread

pytestmark = requires_fashion_mnist

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return shared_run(tmp_path_factory)


def history_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------- a short real run
def test_short_run_learns(shared):
    rows = history_rows(shared)
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # one row per epoch
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[1]["val_acc"]) > 0.5
    metrics = json.loads((shared / "metrics.json").read_text())
    assert metrics["num_samples"] == 1000
    assert metrics["accuracy"] >= 0.6  # chance is 0.1
    last = ckpt_io.load_checkpoint(shared / "checkpoints" / "last.pt")
    assert last["progress"]["global_epoch"] == 2
    assert last["progress"]["step"] == 2 * (2700 // 64)  # drop_last: 42 full batches per epoch
    assert int(rows[1]["step"]) == last["progress"]["step"]


def test_checkpoint_is_self_describing(shared):
    ckpt = ckpt_io.load_checkpoint(shared / "checkpoints" / "last.pt")
    assert ckpt["format"] == ckpt_io.FORMAT
    assert ckpt["class_names"][:2] == ["T-shirt/top", "Trouser"]
    assert ckpt["preprocess"] == {
        "image_size": 28,
        "channels": 1,
        "mean": [0.286],
        "std": [0.353],
        "invert": "none",
    }
    assert ckpt["config"]["train"]["epochs"] == 2
    assert {"torch", "timm", "imgcls", "python"} <= set(ckpt["versions"])
    assert {"optimizer", "scheduler", "scaler", "callbacks"} <= set(ckpt)
    best = ckpt_io.load_checkpoint(shared / "checkpoints" / "best.pt")
    assert "optimizer" not in best  # best.pt holds weights only
    assert best["metrics"]["val_acc"] == max(float(r["val_acc"]) for r in history_rows(shared))


# ------------------------------------------------------------------------------- exact resume
RESUME_OVERRIDES = [
    *TINY_OVERRIDES,
    "data.train_subset=1000",
    "data.test_subset=200",
    "train.epochs=2",
    "train.batch_size=100",
    "train.deterministic=true",
    "augment.crop_padding=2",
    "augment.hflip=0.5",
    "model.drop_rate=0.2",
    "schedule.warmup_epochs=0.5",
    "train.ema_decay=0.9",
    "train.swa_start=0.5",
    "train.swa_lr=0.001",
    "eval.checkpoint=ema",
]


class InterruptMidEpoch(Callback):
    """Raises KeyboardInterrupt (Ctrl-C) after ``batch`` optimiser steps of the 0-based epoch ``epoch``."""

    name = "interrupt"

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_step_end(self, trainer) -> None:
        if trainer.state.global_epoch == self.epoch and trainer.state.batch_in_epoch == self.batch:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory):
    """2 epochs straight, and the same run interrupted in epoch 2 then resumed (deterministic CPU mode)."""
    root = tmp_path_factory.mktemp("resume")
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        try:
            straight = api.train(
                None, [*RESUME_OVERRIDES, f"output.dir={root / 'straight'}"], evaluate_after=False
            )
            build_callbacks = api.build_callbacks
            mp.setattr(
                api,
                "build_callbacks",
                lambda cfg, run_dir: [*build_callbacks(cfg, run_dir), InterruptMidEpoch(1, 3)],
            )
            with pytest.raises(KeyboardInterrupt):
                api.train(
                    None, [*RESUME_OVERRIDES, f"output.dir={root / 'interrupted'}"], evaluate_after=False
                )
            mp.setattr(api, "build_callbacks", build_callbacks)
            (run_dir,) = (root / "interrupted").glob("*/*")
            at_interrupt = ckpt_io.load_checkpoint(run_dir / "checkpoints" / "last.pt")
            resumed = api.train(resume=run_dir, evaluate_after=False)
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    return SimpleNamespace(
        straight=straight,
        resumed=resumed,
        at_interrupt=at_interrupt,
        straight_last=ckpt_io.load_checkpoint(straight.run_dir / "checkpoints" / "last.pt"),
        resumed_last=ckpt_io.load_checkpoint(resumed.run_dir / "checkpoints" / "last.pt"),
    )


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_interrupted_run_kept_its_last_finished_epoch(resume_runs):
    progress = resume_runs.at_interrupt["progress"]
    assert progress["global_epoch"] == 1 and progress["epoch_in_stage"] == 1
    assert progress["step"] == 9  # 900 training images / 100, drop_last
    assert resume_runs.resumed.run_dir.parent.parent.name == "interrupted"


def test_resume_reaches_identical_weights(resume_runs):
    assert resume_runs.resumed_last["progress"] == resume_runs.straight_last["progress"]
    assert_same_tensors(resume_runs.straight_last["model"], resume_runs.resumed_last["model"])


def test_resume_reaches_identical_optimizer_state(resume_runs):
    a, b = resume_runs.straight_last["optimizer"]["state"], resume_runs.resumed_last["optimizer"]["state"]
    assert a.keys() == b.keys()
    for key in a:
        assert_same_tensors(a[key], b[key])


def test_resume_reaches_identical_averaged_weights(resume_runs):
    for which in ("ema", "swa"):
        assert_same_tensors(
            resume_runs.straight_last["extra_weights"][which],
            resume_runs.resumed_last["extra_weights"][which],
        )


def test_resumed_epoch_replays_the_same_metrics(resume_runs):
    straight, resumed = resume_runs.straight.history[-1], resume_runs.resumed.history[-1]
    assert resumed["epoch"] == straight["epoch"] == 2
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "ema_val_acc", "swa_val_acc", "lr"):
        assert resumed[key] == straight[key], key


def test_resumed_history_keeps_every_epoch(resume_runs):
    assert [int(r["epoch"]) for r in history_rows(resume_runs.resumed.run_dir)] == [1, 2]
    assert [r["epoch"] for r in resume_runs.resumed.history] == [1, 2]


def test_ema_and_swa_validate_every_epoch(resume_runs):
    rows = history_rows(resume_runs.straight.run_dir)
    assert len(rows) == 2
    assert all(r["ema_val_acc"] != "" and 0.0 <= float(r["ema_val_acc"]) <= 1.0 for r in rows)
    # swa_start 0.5 of 2 epochs: averaging starts with the second epoch
    assert rows[0]["swa_val_acc"] == "" and 0.0 <= float(rows[1]["swa_val_acc"]) <= 1.0
    assert float(rows[1]["lr"]) == pytest.approx(0.001)  # the SWA lr replaces the schedule


def test_eval_checkpoint_ema_evaluates_the_ema_weights(resume_runs):
    run_dir = resume_runs.straight.run_dir
    metrics = api.evaluate(run_dir)  # the config's eval.checkpoint: ema
    assert metrics["checkpoint"] == "ema"
    assert "`ema`" in (run_dir / "report.md").read_text()
    assert_same_tensors(
        load_file(str(run_dir / "model.safetensors")), resume_runs.straight_last["extra_weights"]["ema"]
    )
    assert json.loads((run_dir / "metrics.json").read_text())["checkpoint"] == "ema"


# ------------------------------------------------------------------------------- checkpoint files
@pytest.mark.parametrize(
    "failure", [OSError("No space left on device"), KeyboardInterrupt()], ids=["disk-full", "ctrl-c"]
)
def test_interrupted_checkpoint_write_keeps_the_previous_checkpoint(shared, tmp_path, monkeypatch, failure):
    path = tmp_path / "last.pt"
    shutil.copy(shared / "checkpoints" / "last.pt", path)
    before = ckpt_io.load_checkpoint(path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise failure

    monkeypatch.setattr(ckpt_io.torch, "save", broken_save)
    with pytest.raises(
        CheckpointError if isinstance(failure, OSError) else type(failure)
    ):  # disk full: one line
        ckpt_io.atomic_save({**before, "metrics": {"epoch": 99}}, path)
    monkeypatch.undo()
    after = ckpt_io.load_checkpoint(path)
    assert after["metrics"] == before["metrics"]
    assert_same_tensors(after["model"], before["model"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_atomic_save_replaces_the_checkpoint(shared, tmp_path):
    path = tmp_path / "ckpt.pt"
    shutil.copy(shared / "checkpoints" / "best.pt", path)
    payload = ckpt_io.load_checkpoint(path)
    payload["metrics"] = {"epoch": 7}
    ckpt_io.atomic_save(payload, path)
    assert ckpt_io.load_checkpoint(path)["metrics"] == {"epoch": 7}


class Exploit:
    """A pickle that would create a file when unpickled without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_unreadable_checkpoints_are_checkpoint_errors(shared, tmp_path):
    original = (shared / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(original[: len(original) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01 definitely not a checkpoint" * 10)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    marker = tmp_path / "pwned"
    torch.save({"format": ckpt_io.FORMAT, "payload": Exploit(marker)}, tmp_path / "exploit.pt")
    for name, words in [
        ("truncated.pt", "unreadable"),
        ("garbage.pt", "unreadable"),
        ("foreign.pt", "not an imgcls checkpoint"),
        ("exploit.pt", "refused: not a plain-tensor checkpoint"),
        ("missing.pt", "does not exist"),
    ]:
        with pytest.raises(CheckpointError) as info:
            ckpt_io.load_checkpoint(tmp_path / name)
        assert words in str(info.value) and str(tmp_path / name) in str(info.value), name
        assert "\n" not in str(info.value)
    assert not marker.exists()  # weights_only loading executed nothing


def test_truncated_checkpoint_in_a_run_dir_is_a_checkpoint_error(shared, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(shared, run_dir)
    best = run_dir / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="unreadable"):
        api.load(run_dir)
    with pytest.raises(CheckpointError, match="not a run directory"):
        api.train(resume=tmp_path / "nowhere")


def test_checkpoint_weights_that_do_not_fit_are_a_checkpoint_error(shared):
    ckpt = ckpt_io.load_checkpoint(shared / "checkpoints" / "best.pt")
    ckpt["config"]["model"]["backbone_args"]["width_mult"] = 0.5
    with pytest.raises(CheckpointError, match="do not fit"):
        api.model_from_checkpoint(ckpt, "best")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        api.model_from_checkpoint(ckpt_io.load_checkpoint(shared / "checkpoints" / "last.pt"), "ema")


# ------------------------------------------------------------------------------- diverging loss
def test_nan_loss_is_a_one_line_training_error(tmp_path):
    overrides = [
        *TINY_OVERRIDES,
        "data.train_subset=1000",
        "data.test_subset=100",
        "train.epochs=1",
        "train.batch_size=100",
    ]
    with pytest.raises(TrainingError) as info:
        api.train(None, [*overrides, "optim.lr=1e30", f"output.dir={tmp_path}"], evaluate_after=False)
    message = str(info.value)
    assert "\n" not in message
    assert "loss became" in message and "optim.lr" in message
    assert not list(tmp_path.glob("*/*/checkpoints/last.pt"))  # diverged in epoch 1: nothing to keep


# ------------------------------------------------------------------------------- stages
@pytest.fixture(scope="module")
def small_data():
    return prepare_data(load_config(None, ["data.train_subset=1000", "data.test_subset=100"]))


class ModeRecorder(Callback):
    """Records, at every training step, whether the BatchNorm / Dropout layers of backbone and head train."""

    name = "modes"

    def __init__(self) -> None:
        self.backbone_training: list[bool] = []
        self.head_training: list[bool] = []

    @staticmethod
    def layers_training(module: torch.nn.Module) -> bool:
        layers = [
            m
            for m in module.modules()
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout))
        ]
        assert layers, "nothing to record"
        return any(m.training for m in layers)

    def on_train_step_end(self, trainer) -> None:
        self.backbone_training.append(self.layers_training(trainer.model.backbone))
        self.head_training.append(trainer.model.head.training)


def fit(small_data, overrides: list[str], callbacks=()) -> Trainer:
    cfg = load_config(None, [*TINY_OVERRIDES, "train.batch_size=100", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, len(small_data.class_names), small_data.channels)
    train_loader = make_loader(small_data.train, small_data, cfg, train=True, batch_size=100)
    val_loader = make_loader(small_data.val, small_data, cfg, train=False, batch_size=100)
    trainer = Trainer(
        cfg,
        model,
        train_loader,
        val_loader,
        device=CPU,
        preprocess_meta=small_data.preprocess,
        class_names=small_data.class_names,
        callbacks=list(callbacks),
    )
    trainer.initial_state = copy.deepcopy(model.state_dict())
    trainer.fit()
    return trainer


@pytest.mark.parametrize(
    "stage",
    ["{name: head_only, epochs: 1, freeze: [backbone]}", "{name: head_only, epochs: 1, train_only: [head]}"],
)
def test_frozen_backbone_keeps_parameters_and_batchnorm_statistics(small_data, stage):
    modes = ModeRecorder()
    trainer = fit(small_data, [f"stages=[{stage}]"], [modes])
    after = trainer.model.state_dict()
    backbone_keys = [k for k in after if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone_keys) and any(
        "num_batches_tracked" in k for k in backbone_keys
    )
    for key in backbone_keys:
        assert torch.equal(after[key], trainer.initial_state[key]), key
    assert not torch.equal(after["head.fc.weight"], trainer.initial_state["head.fc.weight"])
    assert modes.backbone_training and not any(modes.backbone_training)  # frozen = eval mode
    assert all(modes.head_training)


def test_frozen_head_dropout_is_in_eval_mode(small_data):
    class HeadDropout(Callback):
        name = "head_dropout"

        def __init__(self) -> None:
            self.seen: list[bool] = []

        def on_train_step_end(self, trainer) -> None:
            self.seen.append(
                any(m.training for m in trainer.model.head.modules() if isinstance(m, torch.nn.Dropout))
            )

    recorder = HeadDropout()
    stages = "stages=[{name: backbone_only, epochs: 1, freeze: [head]}]"
    trainer = fit(
        small_data, ["model.head=mlp", "model.head_args={hidden: [16], dropout: 0.5}", stages], [recorder]
    )
    assert not trainer.model.head.fc.weight.requires_grad
    assert recorder.seen and not any(recorder.seen)


def test_freezing_ends_with_its_stage(small_data):
    modes = ModeRecorder()
    trainer = fit(
        small_data, ["stages=[{name: warm, epochs: 1, freeze: [backbone]}, {name: all, epochs: 1}]"], [modes]
    )
    after = trainer.model.state_dict()
    assert not torch.equal(
        after["backbone.features.0.weight"], trainer.initial_state["backbone.features.0.weight"]
    )
    assert not torch.equal(
        after["backbone.features.1.running_mean"], trainer.initial_state["backbone.features.1.running_mean"]
    )
    assert all(p.requires_grad for p in trainer.model.parameters())
    steps = len(modes.backbone_training) // 2
    assert not any(modes.backbone_training[:steps]) and all(modes.backbone_training[steps:])


def test_stage_switches_the_head(small_data):
    trainer = fit(
        small_data,
        ["stages=[{name: a, epochs: 1}, {name: b, epochs: 1, head: mlp, head_args: {hidden: [8]}}]"],
    )
    assert isinstance(trainer.model.head, MLPHead)
    assert trainer.model.head.fc.in_features == 8
    assert trainer.state.global_epoch == 2


def test_stage_ends_at_the_target_validation_accuracy(small_data):
    trainer = fit(small_data, ["stages=[{name: polish, epochs: 3, stop_at_val_acc: 0.01}]"], [StopAtValAcc()])
    assert trainer.state.global_epoch == 1


@pytest.mark.parametrize("stage_name", ["warmup", "/finetune"])
def test_epoch_summary_names_the_stage(small_data, capsys, stage_name):
    fit(small_data, [f"stages=[{{name: '{stage_name}', epochs: 1}}]"], [ProgressPrinter(live=False)])
    assert f"[{stage_name}] epoch 1/1" in capsys.readouterr().err


def test_freezing_an_unknown_module_is_a_config_error(small_data):
    with pytest.raises(ConfigError, match="no module named \\['backbon'\\]"):
        fit(small_data, ["stages=[{name: a, epochs: 1, freeze: [backbon]}]"])


class CountSteps(Callback):
    name = "count_steps"

    def __init__(self) -> None:
        self.steps = 0

    def on_train_step_end(self, trainer) -> None:
        self.steps += 1


def test_a_later_stage_naming_an_unknown_module_fails_before_the_first_step(small_data):
    counter = CountSteps()
    with pytest.raises(ConfigError, match=r"stages\[1\]\.freeze: no module named \['bakbone'\]"):
        fit(small_data, ["stages=[{name: a, epochs: 1}, {name: b, epochs: 1, freeze: [bakbone]}]"], [counter])
    assert counter.steps == 0
    # names under a head that a stage switches to are checked when that stage starts
    trainer = fit(
        small_data,
        [
            "stages=[{name: a, epochs: 1}, {name: b, epochs: 1, head: mlp, head_args: {hidden: [8]}, train_only: [head.body]}]"
        ],
    )
    assert trainer.state.global_epoch == 2


def test_a_later_stage_head_too_large_for_the_machine_fails_before_the_first_step(small_data):
    """A stage-2 head of 2**21 x 2**21 hidden units (4.4 T parameters) is refused at once, built on the meta
    device: no memory error after stage 1 has trained. A fitting head of the same kind trains."""
    from imgcls.engine.trainer import device_memory_bytes

    memory = device_memory_bytes(torch.device("cpu"))
    assert memory is not None and 2**30 < memory < 2**50  # this machine's RAM, read from the OS
    counter = CountSteps()
    huge = "stages=[{name: a, epochs: 1}, {name: b, epochs: 1, head: mlp, head_args: {hidden: [2097152, 2097152]}}]"
    with pytest.raises(
        ConfigError, match=r"stages\.1\.head 'mlp' would have 4,398,\d{3},\d{3},\d{3} parameters"
    ):
        fit(small_data, [huge], [counter])
    assert counter.steps == 0


def test_evaluating_swa_that_never_began_says_why(shared):
    ckpt = ckpt_io.load_checkpoint(shared / "checkpoints" / "last.pt")
    ckpt["config"]["train"]["swa_start"] = 0.9  # set, but the run ended before it began
    with pytest.raises(
        CheckpointError, match=r"no SWA weights: training stopped after epoch 2, before they began"
    ):
        api.model_from_checkpoint(ckpt, "swa")

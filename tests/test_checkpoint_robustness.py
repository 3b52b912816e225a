"""Checkpoints that cannot be used are refused with one line, and ``--resume`` falls back safely (issue 17).

A damaged file (empty, truncated, random bytes, text, a zip that is not torch's) reads "corrupt or unreadable";
a pickle holding Python objects reads "refused ... unsafe to load" and is never run; a file that loads but is
not an imgcls checkpoint (a bare state_dict, a list, missing or mistyped parts, a config that no longer
validates) names the missing or wrong part. ``--resume`` skips a damaged ``recovery.pt`` for ``last.pt`` with a
warning and lists every candidate when none is usable. Teacher weights (``distill.teacher`` checkpoints,
``distill.pretrained_file``) get the same checks plus the first mis-shaped key with both shapes. Files the
project writes get the umask's normal mode.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import zipfile
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from imgcls import api, runs
from imgcls.config import DistillConfig
from imgcls.engine.callbacks import Callback
from imgcls.errors import CheckpointError, ConfigError, TrainingInterrupted
from imgcls.runtime import checkpoint as ckpt_io
from imgcls.runtime.signals import request_stop
from imgcls.teacher import load_teacher
from test_cli import run, squeeze
from test_robust_inputs import TINY, make_tree
from tiny_runs import single_thread


class StopEarlyInSecondEpoch(Callback):
    """SIGTERM (as a user's kill) after the second step of epoch 2: last.pt holds epoch 1, recovery.pt step 2."""

    name = "stop_early_in_second_epoch"

    def on_train_step_end(self, trainer) -> None:
        if trainer.state.global_epoch == 1 and trainer.state.batch_in_epoch == 2:
            request_stop(signal.SIGTERM)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A 2-epoch run on 16×16 images stopped in epoch 2: checkpoints/{best,last,recovery}.pt."""
    tmp = tmp_path_factory.mktemp("stopped")
    root = make_tree(tmp / "data")
    with single_thread(), pytest.MonkeyPatch.context() as mp, pytest.raises(TrainingInterrupted):
        build = api.build_callbacks
        mp.setattr(
            api, "build_callbacks", lambda cfg, run_dir: [StopEarlyInSecondEpoch(), *build(cfg, run_dir)]
        )
        api.train(
            None,
            [*TINY, "train.epochs=2", f"data.root={root}", f"output.dir={tmp / 'runs'}"],
            evaluate_after=False,
        )
    (run_dir,) = (tmp / "runs").glob("*/*")
    return run_dir


@pytest.fixture
def run_copy(stopped_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(stopped_run, target)
    return target


def real_checkpoint(run_dir: Path, name: str = "best.pt") -> dict:
    return ckpt_io.load_checkpoint(run_dir / "checkpoints" / name)


def one_line(exc: pytest.ExceptionInfo, path: Path, *fragments: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and f"'{path}'" in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ------------------------------------------------------------------------------- corrupt vs unsafe
def _truncated(path: Path, good: bytes) -> None:
    path.write_bytes(good[: len(good) // 2])


def _zip_not_torch(path: Path, good: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


DAMAGED = {
    "empty": (lambda path, good: path.write_bytes(b""), "the file is empty (0 bytes)"),
    "truncated": (_truncated, "it is truncated"),
    "random-bytes": (lambda path, good: path.write_bytes(os.urandom(4096)), "not a torch checkpoint"),
    "text": (lambda path, good: path.write_text("epoch: 3\nweights: none\n"), "it is a text file"),
    "zip-not-torch": (_zip_not_torch, "a zip archive that is not a torch checkpoint"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_checkpoint_is_corrupt_not_unsafe(stopped_run, tmp_path, case):
    make, detail = DAMAGED[case]
    path = tmp_path / "best.pt"
    make(path, (stopped_run / "checkpoints" / "best.pt").read_bytes())
    with pytest.raises(CheckpointError) as info:
        ckpt_io.load_checkpoint(path)
    message = one_line(info, path, "is corrupt or unreadable", detail, "--checkpoint best|last")
    assert "refused" not in message and "unsafe" not in message


class Exploit:
    """A pickle that would create a file when loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class Custom:
    """An object of a class that is not a tensor or a plain container."""


def test_python_objects_are_refused_as_unsafe_and_never_run(stopped_run, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = real_checkpoint(stopped_run)
    for name, payload, global_name in (
        ("exploit.pt", {**ckpt, "extra": Exploit(marker)}, "io.open"),
        ("custom.pt", {"model": Custom()}, f"{__name__}.Custom"),
    ):
        torch.save(payload, tmp_path / name)
        with pytest.raises(CheckpointError) as info:
            ckpt_io.load_checkpoint(tmp_path / name)
        message = one_line(
            info,
            tmp_path / name,
            "refused: not a plain-tensor checkpoint, it contains Python objects that are not plain "
            f"tensors/containers ({global_name}), unsafe to load; re-save it with torch.save of tensors",
        )
        assert "corrupt" not in message
        with pytest.raises(
            CheckpointError, match=r"refused as unsafe: .*re-save its tensors with safetensors"
        ):
            ckpt_io.check_plain_tensor_file(tmp_path / name, "model.pretrained_file")
    assert not marker.exists()


# ------------------------------------------------------------------------------- foreign and partial payloads
def _without(key: str):
    return lambda ckpt: {k: v for k, v in ckpt.items() if k != key}


FOREIGN = {
    "bare-state-dict": (lambda ckpt: ckpt["model"], "is a bare state_dict ("),
    "list": (lambda ckpt: [ckpt["model"]], "is not an imgcls checkpoint: it holds a list"),
    "no-format": (
        _without("format"),
        "is not an imgcls checkpoint (no format 'imgcls-checkpoint/1'; its keys: model",
    ),
    "other-format": (lambda ckpt: {**ckpt, "format": "other/2"}, "has format 'other/2', this imgcls reads"),
    "no-model": (_without("model"), "is incomplete: it has no 'model'"),
    "no-config": (_without("config"), "is incomplete: it has no 'config'"),
    "no-class-names": (_without("class_names"), "is incomplete: it has no 'class_names'"),
    "model-not-a-dict": (
        lambda ckpt: {**ckpt, "model": [1, 2]},
        "is damaged: its 'model' is a list, not a dict",
    ),
    "model-not-tensors": (
        lambda ckpt: {**ckpt, "model": {**ckpt["model"], "head.extra": "text"}},
        "its 'model' entry 'head.extra' is a str, not a tensor",
    ),
    "preprocess-partial": (
        lambda ckpt: {**ckpt, "preprocess": {"channels": 1}},
        "its 'preprocess' has no 'image_size', 'mean', 'std'",
    ),
    "config-invalid": (
        lambda ckpt: {**ckpt, "config": {**ckpt["config"], "model": {**ckpt["config"]["model"], "hed": "x"}}},
        "holds a config that no longer validates (unknown config key 'model.hed'",
    ),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_a_foreign_or_partial_payload_names_the_wrong_part(stopped_run, tmp_path, case):
    change, fragment = FOREIGN[case]
    path = tmp_path / "best.pt"
    torch.save(change(real_checkpoint(stopped_run)), path)
    with pytest.raises(CheckpointError) as info:
        ckpt_io.load_checkpoint(path)
    one_line(info, path, fragment)


def test_a_config_that_no_longer_validates_names_the_version_that_wrote_it(stopped_run, tmp_path):
    ckpt = real_checkpoint(stopped_run)
    ckpt["config"]["train"]["epochs"] = -3
    path = tmp_path / "old.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as info:
        ckpt_io.load_checkpoint(path)
    one_line(info, path, "'train.epochs'", f"written by imgcls {ckpt['versions']['imgcls']}")


def test_resuming_needs_a_full_checkpoint(stopped_run):
    best = stopped_run / "checkpoints" / "best.pt"
    assert "optimizer" in ckpt_io.load_checkpoint(stopped_run / "checkpoints" / "last.pt", resumable=True)
    with pytest.raises(CheckpointError) as info:
        ckpt_io.load_checkpoint(best, resumable=True)
    one_line(
        info,
        best,
        "is incomplete: it has no 'optimizer', 'scheduler', 'scaler'",
        "not a checkpoint to resume from",
    )


def test_evaluate_of_a_corrupt_checkpoint_exits_2_with_one_line(run_copy):
    best = run_copy / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    result = run("evaluate", str(run_copy))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert squeeze(result.stderr).count("error:") == 1
    assert squeeze(f"error: checkpoint '{best}' is corrupt or unreadable: it is truncated") in squeeze(
        result.stderr
    )


# ------------------------------------------------------------------------------- --resume falls back
def test_resume_prefers_the_newer_recovery_file(stopped_run):
    ckpt = runs.resume_checkpoint(stopped_run)
    assert ckpt["mid_epoch"]["batches"] == 2 and ckpt["progress"]["global_epoch"] == 1


def test_resume_skips_a_corrupt_recovery_file_for_last_pt_with_a_warning(run_copy, caplog):
    recovery = run_copy / "checkpoints" / "recovery.pt"
    recovery.write_bytes(recovery.read_bytes()[:2000])
    with caplog.at_level(logging.WARNING):
        ckpt = runs.resume_checkpoint(run_copy)
    assert "mid_epoch" not in ckpt and ckpt["progress"]["global_epoch"] == 1  # last.pt: epoch 1 finished
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "\n" not in warning
    assert warning.startswith(f"warning: '{recovery}' is corrupt or unreadable: it is truncated")
    assert f"resuming from '{run_copy / 'checkpoints' / 'last.pt'}' instead" in warning


def test_resume_with_every_candidate_unusable_lists_them_in_one_line(run_copy):
    folder = run_copy / "checkpoints"
    (folder / "recovery.pt").write_text("not a checkpoint")
    torch.save({"x": Custom()}, folder / "last.pt")
    with pytest.raises(CheckpointError) as info:
        runs.resume_checkpoint(run_copy)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot resume {run_copy}: no usable checkpoint (")
    assert f"'{folder / 'recovery.pt'}' is corrupt or unreadable: it is a text file" in message
    assert f"'{folder / 'last.pt'}' refused: not a plain-tensor checkpoint" in message


def test_resume_of_a_run_without_checkpoints_starts_over(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert runs.resume_checkpoint(tmp_path) is None


def test_training_resumed_past_a_corrupt_recovery_file_continues_from_last_pt(run_copy, caplog):
    before = real_checkpoint(run_copy, "last.pt")
    recovery = run_copy / "checkpoints" / "recovery.pt"
    recovery.write_bytes(b"")
    with single_thread(), caplog.at_level(logging.WARNING):
        api.train(resume=run_copy, evaluate_after=False)
    assert any(str(recovery) in r.getMessage() and "resuming from" in r.getMessage() for r in caplog.records)
    after = real_checkpoint(run_copy, "last.pt")
    assert before["progress"]["global_epoch"] == 1 and after["progress"]["global_epoch"] == 2
    assert after["progress"]["step"] > before["progress"]["step"]
    assert after["history"][0] == before["history"][0] and [r["epoch"] for r in after["history"]] == [1, 2]
    assert not recovery.exists()  # superseded by epoch 2's last.pt


def test_cli_resume_with_every_checkpoint_corrupt_exits_2_listing_them(run_copy):
    folder = run_copy / "checkpoints"
    for name in ("recovery.pt", "last.pt"):
        (folder / name).write_bytes(os.urandom(2048))
    result = run("train", "--resume", str(run_copy))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    flat = squeeze(result.stderr)
    assert flat.count("error:") == 1 and squeeze(f"cannot resume {run_copy}: no usable checkpoint") in flat
    assert squeeze(f"'{folder / 'recovery.pt'}' is corrupt") in flat
    assert squeeze(f"'{folder / 'last.pt'}' is corrupt") in flat


# ------------------------------------------------------------------------------- teachers
def test_a_corrupt_teacher_checkpoint_is_one_line(run_copy):
    last = run_copy / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:500])
    cfg = DistillConfig(teacher=str(last), teacher_checkpoint="last")
    with pytest.raises(CheckpointError) as info:
        load_teacher(cfg)
    one_line(info, last, "distill.teacher checkpoint", "is corrupt or unreadable: it is truncated")


def test_a_teacher_checkpoint_with_a_mis_shaped_tensor_names_it_and_both_shapes(stopped_run, tmp_path):
    ckpt = real_checkpoint(stopped_run)
    key = next(k for k, v in ckpt["model"].items() if k.startswith("head") and v.ndim == 2)
    shape = list(ckpt["model"][key].shape)
    ckpt["model"][key] = torch.zeros(shape[0] + 1, shape[1])
    path = tmp_path / "teacher.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as info:
        load_teacher(DistillConfig(teacher=str(path)))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"distill.teacher '{path}': ")
    assert f"wrong shape: {key} (saved {[shape[0] + 1, shape[1]]}, model {shape})" in message


#: a tiny timm ViT teacher: builds in well under a second
VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2, "in_chans": 3}


def timm_teacher(pretrained_file: Path, **changes) -> DistillConfig:
    return DistillConfig(
        teacher="timm:vit_tiny_patch16_224",
        pretrained_file=str(pretrained_file),
        teacher_args={**VIT, **changes},
        teacher_num_classes=10,
    )


def features_only_teacher(pretrained_file: Path) -> DistillConfig:
    """A timm teacher for feature (token) distillation only: no classifier needed."""
    return DistillConfig(
        teacher="timm:vit_tiny_patch16_224",
        pretrained_file=str(pretrained_file),
        teacher_args=VIT,
        logits="none",
        tokens={},
    )


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vit") / "vit.safetensors"
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **VIT)
    save_file(model.state_dict(), str(path))  # a teacher fine-tuned on 10 classes
    return path


def test_timm_teacher_loads_its_pretrained_file_classifier_included(vit_weights):
    teacher = load_teacher(timm_teacher(vit_weights))
    weights = load_file(str(vit_weights))
    state = teacher.model.state_dict()
    assert torch.equal(state["blocks.1.mlp.fc2.weight"], weights["blocks.1.mlp.fc2.weight"])
    # timm alone would drop a 10-class head (its default is 1000 classes) and leave it random
    assert torch.equal(state["head.weight"], weights["head.weight"])
    assert torch.equal(state["head.bias"], weights["head.bias"])


def test_a_logit_teacher_without_its_classifier_is_refused(tmp_path):
    headless = tmp_path / "backbone_only.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=0, **VIT).state_dict(), str(headless))
    with pytest.raises(CheckpointError) as info:
        load_teacher(timm_teacher(headless))
    one_line(
        info,
        headless,
        "does not fit teacher timm:vit_tiny_patch16_224",
        "missing: head.weight, head.bias",
    )
    # feature-only distillation needs no classifier: the same file loads
    assert load_teacher(features_only_teacher(headless)).model.num_classes == 0


def test_a_hub_teacher_whose_classifier_has_other_classes_is_refused_before_downloading():
    cfg = DistillConfig(teacher="timm:vit_tiny_patch16_224", teacher_args=VIT, teacher_num_classes=10)
    with pytest.raises(
        ConfigError, match=r"classifier for 1000 classes .* needs one for 10 .*\(distill\.logits=none\)"
    ):
        load_teacher(cfg)


def test_timm_teacher_pretrained_file_missing_corrupt_or_unsafe_is_one_line(vit_weights, tmp_path):
    missing = tmp_path / "none.safetensors"
    with pytest.raises(CheckpointError) as info:
        load_teacher(timm_teacher(missing))
    one_line(info, missing, "distill.pretrained_file", "does not exist")

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(vit_weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as info:
        load_teacher(timm_teacher(cut))
    one_line(info, cut, "is corrupt or unreadable: not a valid safetensors file")

    marker = tmp_path / "pwned"
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"cls_token": Exploit(marker)}, unsafe)
    with pytest.raises(CheckpointError) as info:
        load_teacher(timm_teacher(unsafe))
    one_line(info, unsafe, "refused as unsafe: not a plain-tensor checkpoint")
    assert not marker.exists()


def test_timm_teacher_weights_of_another_shape_name_the_first_key_and_both_shapes(vit_weights):
    with pytest.raises(CheckpointError) as info:
        load_teacher(timm_teacher(vit_weights, embed_dim=32))
    one_line(
        info,
        vit_weights,
        "does not fit teacher timm:vit_tiny_patch16_224",
        "wrong shape: cls_token is [1, 1, 48] in the file, [1, 1, 32] in the model (+",
    )


def test_a_feature_teacher_file_lacking_weights_is_refused_not_left_random(tmp_path):
    # without a classifier timm loads non-strictly and only logs the missing keys at INFO level
    state = timm.create_model("vit_tiny_patch16_224", num_classes=0, **VIT).state_dict()
    del state["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.bias"]
    partial = tmp_path / "partial.safetensors"
    save_file(state, str(partial))
    with pytest.raises(CheckpointError) as info:
        load_teacher(features_only_teacher(partial))
    one_line(
        info,
        partial,
        "does not fit teacher timm:vit_tiny_patch16_224",
        "missing: blocks.1.attn.qkv.weight, blocks.1.attn.qkv.bias; they would stay randomly initialised",
    )


def test_checked_timm_weights_file_collects_the_report_and_restores_the_logger():
    from imgcls.runtime.timm_weights import TIMM_LOADER_LOGGER, checked_timm_weights_file

    logger = logging.getLogger(TIMM_LOADER_LOGGER)
    level, filters = logger.level, list(logger.filters)
    with (
        pytest.raises(CheckpointError) as info,
        checked_timm_weights_file("w.pt", "model.pretrained_file", "timm:x", "fix"),
    ):
        logger.info(
            "Missing keys (a.weight, b.bias) discovered while loading pretrained weights. This is expected"
        )
    assert str(info.value) == (
        "model.pretrained_file 'w.pt' does not fit timm:x (missing: a.weight, b.bias; they would stay randomly "
        "initialised); fix"
    )
    assert (logger.level, logger.filters) == (level, filters)
    with checked_timm_weights_file(
        None, "model.pretrained_file", "timm:x", "fix"
    ):  # no file: nothing checked
        logger.info("Missing keys (a.weight) discovered while loading pretrained weights.")


def test_timm_backbone_pretrained_file_must_hold_every_backbone_weight(tmp_path, caplog):
    from imgcls.config import ModelConfig
    from imgcls.models.classifier import build_model

    full = timm.create_model("test_resnet", num_classes=1000, in_chans=3)
    complete = tmp_path / "complete.safetensors"
    save_file(full.state_dict(), str(complete))  # with its 1000-class classifier, which the backbone drops
    model = build_model(ModelConfig(backbone="timm:test_resnet", pretrained_file=str(complete)), 10, 3)
    loaded = model.backbone.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in full.state_dict().items() if not k.startswith("fc."))
    assert "Missing keys" not in caplog.text  # the check collects timm's report without echoing it

    # one channel: timm sums the stem over the RGB channels, and the file still fits
    gray = build_model(ModelConfig(backbone="timm:test_resnet", pretrained_file=str(complete)), 10, 1)
    stem = next(k for k, v in gray.backbone.model.state_dict().items() if v.ndim == 4)
    assert torch.allclose(
        gray.backbone.model.state_dict()[stem], full.state_dict()[stem].sum(1, keepdim=True)
    )

    state = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    dropped = sorted(k for k in state if k.endswith(".weight") and state[k].ndim == 4)[-1]
    del state[dropped]
    partial = tmp_path / "partial.safetensors"
    save_file(state, str(partial))
    with pytest.raises(CheckpointError) as info:
        build_model(ModelConfig(backbone="timm:test_resnet", pretrained_file=str(partial)), 10, 3)
    one_line(info, partial, "model.pretrained_file", "does not fit timm:test_resnet", f"missing: {dropped};")

    other = tmp_path / "other.safetensors"
    save_file(
        timm.create_model("test_resnet", num_classes=0, in_chans=3, stem_width=8).state_dict(), str(other)
    )
    with pytest.raises(CheckpointError) as info:
        build_model(ModelConfig(backbone="timm:test_resnet", pretrained_file=str(other)), 10, 3)
    one_line(info, other, "does not fit timm:test_resnet", "wrong shape: ")


# ------------------------------------------------------------------------------- file modes
def test_written_files_get_the_umask_mode_not_0600(stopped_run, tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    written = [stopped_run / "config.yaml", *(stopped_run / "checkpoints").glob("*.pt")]
    assert {p.name for p in written} >= {"config.yaml", "best.pt", "last.pt", "recovery.pt"}
    ckpt_io.save_safetensors(
        {"w": torch.ones(2)}, tmp_path / "model.safetensors", metadata={"checkpoint": "best"}
    )
    ckpt_io.atomic_save({"w": torch.ones(2)}, tmp_path / "state.pt")
    written += [tmp_path / "model.safetensors", tmp_path / "state.pt"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {
        p.name: oct(expected) for p in written
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.safetensors",
        "state.pt",
    ]  # no temporary files


# ------------------------------------------------------------------------------- audit findings (runs and locks)
def test_a_lost_best_checkpoint_is_an_error_not_last_reported_as_best(run_copy):
    (run_copy / "checkpoints" / "best.pt").unlink()
    with pytest.raises(CheckpointError) as info:
        runs.load_run_checkpoint(run_copy, "best")
    one_line(
        info,
        run_copy / "checkpoints" / "best.pt",
        "is missing, although the run selected a best",
        "--checkpoint last",
    )
    # a directory in its place is no checkpoint either
    (run_copy / "checkpoints" / "best.pt").mkdir()
    with pytest.raises(CheckpointError, match="is missing, although the run selected a best checkpoint"):
        runs.load_run_checkpoint(run_copy, "best")
    ckpt, which = runs.load_run_checkpoint(run_copy, "last")  # what the line says works
    assert which == "last" and ckpt["progress"]["global_epoch"] == 1


def test_without_a_validation_split_best_falls_back_to_last(tmp_path):
    root = make_tree(tmp_path / "data")
    with single_thread():
        run_dir = api.train(
            None,
            [*TINY, "data.val_fraction=0", f"data.root={root}", f"output.dir={tmp_path / 'runs'}"],
            evaluate_after=False,
        ).run_dir
    assert not (run_dir / "checkpoints" / "best.pt").exists()
    ckpt, which = runs.load_run_checkpoint(run_dir, "best")
    assert which == "best" and ckpt["progress"]["global_epoch"] == 1
    with single_thread():
        metrics = api.evaluate(run_dir)
    assert metrics["checkpoint_detail"] == "last epoch (1): no validation split, so no best checkpoint"


def test_damaged_preprocessing_or_integer_weights_are_one_line(run_copy):
    path = run_copy / "checkpoints" / "best.pt"
    good = ckpt_io.load_checkpoint(path)
    for key, value, fragment in (
        ("channels", "abc", "its 'preprocess' has channels='abc', not a positive integer"),
        ("image_size", 0, "its 'preprocess' has image_size=0, not a positive integer"),
        ("std", [0.0], "its 'preprocess' has std=[0.0], not 1 finite number(s) above 0"),
        ("mean", [float("nan")], "its 'preprocess' has mean=[nan], not 1 finite number(s)"),
    ):
        ckpt = {**good, "preprocess": {**good["preprocess"], key: value}}
        ckpt_io.atomic_save(ckpt, path)
        with pytest.raises(CheckpointError) as info:
            api.load(run_copy, "best")
        one_line(info, path, "is damaged: ", fragment)
    ckpt_io.atomic_save({**good, "model": {k: v.long() for k, v in good["model"].items()}}, path)
    with pytest.raises(CheckpointError) as info:
        api.load(run_copy, "best")
    one_line(info, path, "holds no floating-point weights")
    key = next(k for k, v in good["model"].items() if v.is_floating_point() and v.ndim == 4)
    ckpt_io.atomic_save({**good, "model": {**good["model"], key: good["model"][key].long()}}, path)
    with pytest.raises(
        CheckpointError, match=rf"wrong type: {key} is torch.int64 in the file, torch.float32 in the model"
    ):
        api.load(run_copy, "best")
    nan = {**good["model"], key: torch.full_like(good["model"][key], float("nan"))}
    ckpt_io.atomic_save({**good, "model": nan}, path)
    with pytest.raises(CheckpointError, match=rf"has non-finite weights \({key}\)"):
        api.load(run_copy, "best")  # prediction too, not only the evaluation


def test_a_second_process_training_the_same_run_is_refused(tmp_path):
    from imgcls.runtime.run_lock import hold_run_lock

    with hold_run_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        with pytest.raises(CheckpointError) as info, hold_run_lock(tmp_path):
            pass
    message = str(info.value)
    assert (
        "\n" not in message
        and f"run '{tmp_path}' is being trained by another process (PID {os.getpid()})" in message
    )
    with hold_run_lock(tmp_path):  # released when the first holder is done
        pass


def test_resume_while_another_process_trains_the_run_leaves_its_files_alone(run_copy):
    from imgcls.runtime.run_lock import hold_run_lock

    stale = run_copy / "checkpoints" / ".last.pt.abc123.tmp"  # another process's write in flight
    stale.write_bytes(b"half")
    with hold_run_lock(run_copy), pytest.raises(CheckpointError, match="is being trained by another process"):
        api.train(resume=run_copy, evaluate_after=False)
    assert stale.is_file()


def test_a_deleted_config_is_written_again_before_the_next_checkpoint(tmp_path, capsys):
    class DeleteConfig(Callback):
        name = "delete_config"

        def on_epoch_end(self, trainer, metrics) -> None:
            if metrics["epoch"] == 1:
                saver = next(cb for cb in trainer.callbacks if cb.name == "checkpointer")
                (saver.directory.parent / "config.yaml").unlink()

    root = make_tree(tmp_path / "data")
    with single_thread():
        result = api.train(
            None,
            [*TINY, "train.epochs=2", f"data.root={root}", f"output.dir={tmp_path / 'runs'}"],
            callbacks=[DeleteConfig()],
        )
    assert (result.run_dir / "config.yaml").is_file() and result.metrics["num_samples"] > 0
    expected = f"warning: '{result.run_dir / 'config.yaml'}' was deleted during training"
    assert squeeze(expected) in squeeze(capsys.readouterr().err)


def test_training_time_adds_the_attempts_before_a_resume(run_copy):
    before = ckpt_io.load_checkpoint(run_copy / "checkpoints" / "recovery.pt", resumable=True)["elapsed_s"]
    assert before > 0
    with single_thread():
        api.train(resume=run_copy, evaluate_after=False)
    summary = json.loads((run_copy / "train_summary.json").read_text())
    last = ckpt_io.load_checkpoint(run_copy / "checkpoints" / "last.pt", resumable=True)
    assert summary["train_time_s"] > before and last["elapsed_s"] > before


def test_evaluating_a_read_only_run_is_refused_before_the_work(run_copy, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(
        api, "prepare_data", lambda *a, **k: pytest.fail("evaluated a run it cannot write to")
    )
    with pytest.raises(CheckpointError) as info:
        api.evaluate(run_copy, "last")
    one_line(info, run_copy, "is not writable (Read-only file system)", "copy the run somewhere writable")


def test_a_checkpoints_folder_in_place_of_a_run_says_so(run_copy):
    with pytest.raises(CheckpointError) as info:
        runs.load_run_checkpoint(run_copy / "checkpoints")
    one_line(
        info,
        run_copy / "checkpoints",
        "is not a run directory (it has no config.yaml)",
        "pass the run above it",
    )


def test_a_file_system_without_locks_trains_with_a_warning(tmp_path, monkeypatch, caplog):
    import fcntl

    from imgcls.runtime.run_lock import hold_run_lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING), hold_run_lock(tmp_path):
        pass
    assert "cannot lock" in caplog.text and "No locks available" in caplog.text

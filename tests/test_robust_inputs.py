"""Bad input never ends in a traceback, and partial failures keep the good work (issue 17).

Each user mistake is run through the real command line entry point (``imgcls.cli.main``, in-process so the
cases cost milliseconds) and must exit 2 with one ``error:`` line: a binary YAML file, an unknown device, a
duplicate YAML key, a one-class or empty-class ImageFolder, a pickle as ``model.pretrained_file``, a code-holding
checkpoint, a full disk. Silent surprises warn (empty YAML, a test class absent from train); 16-bit grayscale
images keep their gray levels; the streaming path lists unreadable files; ``predict`` on good and bad files
predicts the good ones and reports each bad one; offline downloads and hub weights fail fast with one line.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls import api, cli
from imgcls.config import load_config
from imgcls.data.decode import decode_image
from imgcls.data.prepare import prepare_data
from imgcls.errors import CheckpointError, ConfigError, DataError, UserError
from imgcls.runtime import checkpoint as ckpt_io
from tiny_runs import requires_fashion_mnist, shared_run, single_thread

TINY = [
    "data.name=imagefolder",
    "data.image_size=16",
    "data.channels=1",
    "data.num_workers=0",
    "data.val_fraction=0.25",
    "model.backbone=adaptive_cnn",
    "model.backbone_args={layout: mnist, width_mult: 0.25}",
    "train.epochs=1",
    "train.batch_size=4",
    "train.progress=false",
    "train.precision=fp32",
    "output.tensorboard=false",
    "eval.plots=false",
    "eval.throughput_s=0",  # one timed batch: real-process runs miss tests/conftest.py's fixture
]


def make_tree(root: Path, classes=("a", "b", "c"), per_class: int = 6, test_per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(rng.normal(60 + 70 * k, 20, (16, 16)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return root


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """``imgcls ARGS`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["imgcls", *args])
    capsys.readouterr()
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    flat = " ".join(err.split())
    for word in words:
        assert word in flat, (word, err)


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


# ------------------------------------------------------------------------------- config files
def test_binary_yaml_is_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"data:\n  name: x\n\xff\xfe\x00\x89PNG")
    code, _, err = run_cli(["config", "show", str(path)], capsys, monkeypatch)
    assert_one_line_error(code, err, "not UTF-8", str(path))


def test_unknown_device_is_one_line(capsys, monkeypatch):
    code, _, err = run_cli(
        ["config", "show", "configs/quickstart.yaml", "train.device=tpu7"], capsys, monkeypatch
    )
    assert_one_line_error(code, err, "'tpu7'", "train.device", "cuda:N")


def test_duplicate_yaml_key_is_an_error(tmp_path, capsys, monkeypatch):
    path = tmp_path / "dup.yaml"
    path.write_text("optim:\n  lr: 0.1\ntrain:\n  epochs: 3\n  epochs: 5\n")
    code, _, err = run_cli(["config", "show", str(path)], capsys, monkeypatch)
    assert_one_line_error(code, err, "duplicate key 'epochs'", "line 5", "line 4")


def test_empty_yaml_warns(tmp_path, caplog):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    with caplog.at_level(logging.WARNING):
        cfg = load_config(path)
    assert cfg.train.epochs == load_config(None).train.epochs
    assert any("is empty" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------- data folders
def test_one_class_imagefolder_is_one_line(tmp_path, capsys, monkeypatch):
    root = make_tree(tmp_path / "data", classes=("only",))
    code, _, err = run_cli(
        ["train", *TINY, f"data.root={root}", f"output.dir={tmp_path / 'runs'}"], capsys, monkeypatch
    )
    assert_one_line_error(code, err, "1 class", "at least 2")
    assert not (tmp_path / "runs").exists()


def test_empty_class_folder_is_an_error(tmp_path):
    root = make_tree(tmp_path / "data")
    (root / "train" / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"empty_class.*hold no images"):
        prepare_data(load_config(None, [*TINY, f"data.root={root}"]))


def test_test_class_missing_from_train_warns(tmp_path, caplog):
    root = make_tree(tmp_path / "data")
    (root / "test" / "stray").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "test" / "stray" / "x.png")
    with caplog.at_level(logging.WARNING):
        data = prepare_data(load_config(None, [*TINY, f"data.root={root}"]))
    assert data.class_names == ["a", "b", "c"] and len(data.test) == 6
    assert any("stray" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)


def test_unreadable_first_image_does_not_break_the_size_probe(tmp_path):
    root = make_tree(tmp_path / "data")
    (root / "train" / "a" / "00.png").write_bytes(b"not a png at all")
    cfg = load_config(None, [*TINY, "data.image_size=null", f"data.root={root}"])
    data = prepare_data(cfg)
    assert data.image_size == 16
    assert data.skipped_files == [str(root / "train" / "a" / "00.png")]


def test_16_bit_grayscale_keeps_its_gray_levels(tmp_path):
    values = np.array([[0, 257, 1000, 30000], [32768, 40000, 65535, 12850]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # Pillow reads it as a 16-bit (I;16 or I) image
    gray = decode_image(str(path), None, 1)[0].numpy()
    assert (
        gray.tolist() == np.rint(values / 257.0).astype(np.uint8).tolist()
    )  # [[0, 1, 4, 117], [128, 156, 255, 50]]
    rgb = decode_image(str(path), None, 3).numpy()
    assert (rgb == gray[None]).all()
    assert len(np.unique(gray)) == 8  # not binarised to {0, 255}


# ------------------------------------------------------------------------------- runs: streaming, leftovers, predict
@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory):
    """A streaming (data.in_memory=no) run on a tree with an unreadable training and test file, no evaluation."""
    tmp = tmp_path_factory.mktemp("streamed")
    root = make_tree(tmp / "data")
    (root / "train" / "b" / "03.png").write_bytes(b"\x89PNG broken")
    (root / "test" / "c" / "01.png").write_bytes(b"")
    with single_thread():
        result = api.train(
            None,
            [*TINY, f"data.root={root}", "data.in_memory=no", f"output.dir={tmp / 'runs'}"],
            evaluate_after=False,
        )
        metrics = api.evaluate(result.run_dir)
    return result.run_dir, root, metrics


def test_streaming_path_lists_skipped_files(streamed_run):
    run_dir, root, metrics = streamed_run
    listed = (run_dir / "skipped_files.txt").read_text().split()
    assert str(root / "train" / "b" / "03.png") in listed  # met by the streaming train or validation loader
    assert str(root / "test" / "c" / "01.png") in listed
    assert metrics["skipped_files"] == len(listed)
    report = (run_dir / "report.md").read_text()
    assert "skipped_files.txt" in report and f"{len(listed)} unreadable image file(s)" in report


def test_every_run_writes_inference_weights_with_normal_file_modes(streamed_run):
    run_dir = streamed_run[0]
    assert (run_dir / "model.safetensors").is_file()
    mask = os.umask(0)
    os.umask(mask)
    assert (run_dir / "checkpoints" / "last.pt").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.head_args={no_such_arg: 1}", "no_such_arg"),  # found while building the model
        (
            "stages=[{name: a, freeze: [trunk]}]",
            "no module named ['trunk']",
        ),  # found when the first stage starts
    ],
    ids=["build", "stage-start"],
)
def test_config_error_leaves_no_run_directory(tmp_path, capsys, monkeypatch, override, words):
    root = make_tree(tmp_path / "data")
    code, _, err = run_cli(
        ["train", *TINY, f"data.root={root}", override, f"output.dir={tmp_path / 'runs'}"],
        capsys,
        monkeypatch,
    )
    assert_one_line_error(code, err, words)
    assert not (tmp_path / "runs").exists()


def test_resume_removes_stale_temp_files(streamed_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(streamed_run[0], run_dir)
    stale = run_dir / "checkpoints" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"")
    api.train(resume=run_dir, overrides=["train.epochs=2"], evaluate_after=False)
    assert not stale.exists()


def test_predict_reports_bad_files_and_predicts_good_ones(streamed_run, tmp_path, capsys, monkeypatch):
    run_dir, root, _ = streamed_run
    good = [str(root / "test" / "a" / "00.png"), str(root / "test" / "b" / "01.png")]
    bad = [str(tmp_path / "missing.png"), str(root / "test" / "c" / "01.png")]
    files = [good[0], bad[0], good[1], bad[1]]
    code, out, err = run_cli(["predict", str(run_dir), *files, "--top-k", "2"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert [line.split(":")[0] for line in out.splitlines()] == good  # both readable files predicted
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and bad[0] in errors[0] and bad[1] in errors[1]
    code, out, _ = run_cli(["predict", str(run_dir), *files, "--json"], capsys, monkeypatch)
    rows = json.loads(out)
    assert code == 2 and [r["image"] for r in rows] == files
    assert ["error" in r for r in rows] == [False, True, False, True]
    assert all(abs(sum(t["probability"] for t in r["top_k"]) - 1) < 1e-4 for r in rows if "error" not in r)
    code, out, err = run_cli(["predict", str(run_dir), *good], capsys, monkeypatch)
    assert code == 0 and len(out.splitlines()) == 2 and err == ""


# ------------------------------------------------------------------------------- checkpoints and weights files
class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_as_pretrained_file_is_refused(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": Exploit(marker)}, tmp_path / "weights.pt")
    code, _, err = run_cli(
        [
            "train",
            "model.backbone=timm:resnet18",
            f"model.pretrained_file={tmp_path / 'weights.pt'}",
            f"output.dir={tmp_path / 'runs'}",
        ],
        capsys,
        monkeypatch,
    )
    assert_one_line_error(code, err, "refused as unsafe", "not a plain-tensor checkpoint")
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_code_holding_checkpoint_is_refused(streamed_run, tmp_path, capsys, monkeypatch):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(streamed_run[0], run_dir)
    marker = tmp_path / "pwned"
    torch.save({"format": ckpt_io.FORMAT, "x": Exploit(marker)}, run_dir / "checkpoints" / "last.pt")
    code, _, err = run_cli(["evaluate", str(run_dir), "--checkpoint", "last"], capsys, monkeypatch)
    assert_one_line_error(code, err, "refused: not a plain-tensor checkpoint")
    assert not marker.exists()


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_io.atomic_save({"format": ckpt_io.FORMAT, "v": torch.ones(3)}, path)

    def full(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as info:
        ckpt_io.atomic_save({"format": ckpt_io.FORMAT, "v": torch.zeros(3)}, path)
    assert str(info.value) == (
        f"no space left on device at {path}; the file it replaces is intact (free some space and run the command again)"
    )
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_disk_full_inside_torchs_zip_writer_is_one_line_naming_the_resume(tmp_path, monkeypatch):
    """torch's writer, closing after an ENOSPC mid-record, raises its own RuntimeError ("unexpected pos") with the
    OSError only as its context: still a full disk, still one line, the previous checkpoint intact."""
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    ckpt_io.atomic_save({"format": ckpt_io.FORMAT, "v": torch.ones(3)}, path)
    real_save = torch.save

    def full_mid_record(obj, fh, *args, **kwargs):
        class Full:
            def __init__(self) -> None:
                self.written = 0

            def write(self, data) -> int:
                self.written += len(data)
                if self.written > 100:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return fh.write(data)

            def flush(self) -> None:
                fh.flush()

        return real_save(obj, Full(), *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_mid_record)
    with pytest.raises(CheckpointError) as info:
        ckpt_io.atomic_save({"format": ckpt_io.FORMAT, "v": torch.zeros(1000)}, path)
    assert str(info.value) == (
        f"no space left on device at {path}; the file it replaces is intact (free some space, then resume with "
        f"`imgcls train --resume {tmp_path / 'run'}`)"
    )
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_disk_full_while_writing_a_report_is_one_line(tmp_path, capsys, monkeypatch):
    from imgcls import api as api_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/report.md")

    monkeypatch.setattr(api_module, "evaluate", full)
    run_dir = tmp_path / "run"  # passes the CLI's RUN_DIR check; api.evaluate is replaced
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("")
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"")
    code, _, err = run_cli(["evaluate", str(run_dir)], capsys, monkeypatch)
    assert_one_line_error(code, err, "no space left on device at /runs/x/report.md")


# ------------------------------------------------------------------------------- offline
def test_offline_download_names_the_data_set_url_and_fix(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", offline)
    cfg = load_config(None, ["data.name=cifar10", "data.download=true", f"data.root={tmp_path}"])
    with pytest.raises(DataError) as info:
        prepare_data(cfg)
    message = str(info.value)
    assert "\n" not in message
    assert (
        "could not download cifar10 from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    )
    assert "cifar-10-batches-py" in message and "data.root" in message


def test_hub_weights_offline_fail_within_seconds(monkeypatch):
    from huggingface_hub import constants

    from imgcls.config import ModelConfig
    from imgcls.models.classifier import build_backbone

    monkeypatch.setattr(
        constants, "HF_HUB_OFFLINE", True
    )  # as with HF_HUB_OFFLINE=1, or when the probe fails
    start = time.perf_counter()
    with pytest.raises(
        DataError, match=r"could not fetch pretrained weights for timm:test_resnet.*pretrained_file"
    ):
        build_backbone(ModelConfig(backbone="timm:test_resnet.r160_in1k", pretrained=True), 3)
    assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------------- the Python API's arguments
def test_api_train_takes_a_dict_config_and_one_override_string(tmp_path):
    raw = {"data": {"name": "fashion_mnist", "train_subset": 300}, "train": {"epochs": 3}}
    cfg = api._as_config(raw, f"output.dir={tmp_path}")
    assert cfg.data.train_subset == 300 and cfg.train.epochs == 3 and cfg.output.dir == str(tmp_path)
    assert raw == {
        "data": {"name": "fashion_mnist", "train_subset": 300},
        "train": {"epochs": 3},
    }  # not mutated
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        api._as_config({"train": {"epochz": 1}}, None)
    with pytest.raises(UserError, match="overrides must be a list"):
        api._as_config(None, 3)


@requires_fashion_mnist
def test_api_checkpoint_names_and_evaluation_overrides_are_checked(tmp_path_factory):
    run_dir = shared_run(tmp_path_factory)
    with pytest.raises(CheckpointError, match="checkpoint must be one of best, last, ema, swa, not 'foo'"):
        api.load(run_dir, checkpoint="foo")
    with pytest.raises(
        ConfigError, match=r"evaluate --data takes data\.\* \(and eval\.\*\) keys.*'model\.head' is not one"
    ):
        api.evaluate(run_dir, data_overrides=["model.head=linear"])
    with pytest.raises(
        ConfigError, match=r"cannot change 'data\.image_size': the model was trained with its value"
    ):
        api.evaluate(run_dir, data_overrides=["data.image_size=32"])


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        OSError(errno.ENOMEM, "Cannot allocate memory"),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9000000000000 bytes."),
        MemoryError(),
    ],
)
def test_out_of_memory_is_one_line_naming_the_batch_size(tmp_path, capsys, monkeypatch, error):
    from imgcls import api as api_module

    def oom(*args, **kwargs):
        raise error

    monkeypatch.setattr(api_module, "train", oom)
    config = tmp_path / "c.yaml"
    config.write_text("data: {name: fashion_mnist}\n")
    code, _, err = run_cli(["train", str(config)], capsys, monkeypatch)
    assert_one_line_error(
        code, err, "out of memory", "lower train.batch_size", "checkpoints written before are intact"
    )


def test_an_unrelated_runtime_error_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    from imgcls import api as api_module

    def fault(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(api_module, "train", fault)
    config = tmp_path / "c.yaml"
    config.write_text("data: {name: fashion_mnist}\n")
    monkeypatch.setattr(sys, "argv", ["imgcls", "train", str(config)])
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main()

"""Seed 004's run tooling (issue 15), on tiny real Fashion-MNIST runs: the plateau schedule inside the real
training loop, periodic ``epoch_{n}.pt`` checkpoints, ``data.invert: auto`` from training to ``predict``,
``predict --explain`` for a CNN and a ViT, and the class-distribution figure with its counts.

One CNN run (5 epochs on 240 images) carries the plateau schedule, ``keep_every_epochs: 2`` and
``invert: auto``; a ViT run (1 epoch, no evaluation) only serves ``--explain``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.data.idx import read_idx
from imgcls.data.preprocess import Preprocess, invert_images
from imgcls.engine.callbacks import Checkpointer
from imgcls.evaluation.figures import split_class_counts
from tiny_runs import FASHION_MNIST_DIR, requires_fashion_mnist, single_thread

COMMON = [
    "data.name=fashion_mnist",
    "data.train_subset=240",
    "data.val_fraction=0.25",
    "data.test_subset=100",
    "data.num_workers=0",
    "train.batch_size=60",
    "train.progress=false",
    "train.precision=fp32",
    "output.tensorboard=false",
]
CNN = [
    *COMMON,
    "model.backbone=adaptive_cnn",
    "model.backbone_args={layout: mnist, width_mult: 0.25}",
    "model.head=linear",
    "optim.lr=0.003",
    "train.epochs=5",
    "data.invert=auto",
    "output.keep_every_epochs=2",
    # plateau on val_acc with an unreachable threshold: every epoch after the first is "bad"; patience 0
    "schedule.name=plateau",
    "schedule.plateau_monitor=val_acc",
    "schedule.plateau_threshold=10",
    "schedule.plateau_patience=0",
    "schedule.plateau_factor=0.5",
    "eval.embeddings_plot=false",
    "eval.gradcam=false",
]
VIT = [
    *COMMON,
    "model.backbone=timm:vit_tiny_patch16_224",
    "model.backbone_args={img_size: 28, patch_size: 7, embed_dim: 32, depth: 1, num_heads: 2}",
    "model.head=linear",
    "train.epochs=1",
]

pytestmark = requires_fashion_mnist


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    from imgcls import api

    out = tmp_path_factory.mktemp("seed004_cnn")
    with single_thread():
        result = api.train(None, [*CNN, f"output.dir={out}", "output.name=cnn"])
    return result.run_dir


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    from imgcls import api

    out = tmp_path_factory.mktemp("seed004_vit")
    with single_thread():
        result = api.train(None, [*VIT, f"output.dir={out}", "output.name=vit"], evaluate_after=False)
    return result.run_dir


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A Fashion-MNIST test image (dark background; the darkest of the first 50, so a thin object like a digit)
    and its negative (white background) as PNGs."""
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    image = images[int(np.argmin(images[:50].mean(axis=(1, 2))))]
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(image).save(folder / "dark.png")
    Image.fromarray(255 - image).save(folder / "white page.png")
    return folder / "dark.png", folder / "white page.png", image


def history(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "history.csv") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ schedules
def test_plateau_schedule_reduces_the_lr_in_the_training_loop(cnn_run):
    lrs = [float(row["lr"]) for row in history(cnn_run)]
    # epoch 1 sets the best; each later epoch is bad (patience 0) and halves the lr for the next epoch
    assert lrs == pytest.approx([3e-3, 3e-3, 1.5e-3, 7.5e-4, 3.75e-4])
    last = torch.load(cnn_run / "checkpoints" / "last.pt", weights_only=True)
    assert last["scheduler"]["plateau_state"]["scale"] == pytest.approx(1 / 16)


# ------------------------------------------------------------------------------------------ checkpoints
def test_periodic_checkpoints_are_kept_every_n_epochs(cnn_run):
    folder = cnn_run / "checkpoints"
    assert sorted(p.name for p in folder.glob("epoch_*.pt")) == ["epoch_2.pt", "epoch_4.pt"]
    two, four, last = (
        torch.load(folder / n, weights_only=True) for n in ("epoch_2.pt", "epoch_4.pt", "last.pt")
    )
    assert (two["metrics"]["epoch"], four["metrics"]["epoch"], last["metrics"]["epoch"]) == (2, 4, 5)
    assert "optimizer" not in four  # weights and metadata, like best.pt
    key = "head.fc.weight"
    assert not torch.equal(four["model"][key], last["model"][key])  # epoch 4's weights, not the final ones


def test_checkpointer_prunes_epoch_files_off_the_period(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for n in (2, 3, 7):  # epoch_3: another period; epoch_7: from after the epoch a run was resumed at
        (folder / f"epoch_{n}.pt").write_text("old")
    saved = []
    trainer = SimpleNamespace(
        dist=SimpleNamespace(is_main=True),
        save_checkpoint=lambda path, full, metrics: (saved.append((path.name, full)), path.write_text("new")),
    )
    keeper = Checkpointer(folder, "val_acc", keep_every=2)
    keeper.on_epoch_end(trainer, {"epoch": 4, "val_acc": 0.5})
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "epoch_2.pt", "epoch_4.pt", "last.pt"]
    assert ("epoch_4.pt", False) in saved and (folder / "epoch_2.pt").read_text() == "old"
    keeper.on_epoch_end(trainer, {"epoch": 5, "val_acc": 0.4})
    assert not (folder / "epoch_5.pt").exists()
    plain = tmp_path / "plain"
    plain.mkdir()
    Checkpointer(plain, "val_acc").on_epoch_end(trainer, {"epoch": 4, "val_acc": 0.5})
    assert sorted(p.name for p in plain.iterdir()) == ["best.pt", "last.pt"]


# ------------------------------------------------------------------------------------------ invert: auto
def test_invert_auto_flips_bright_images_and_leaves_dark_ones(digit_pngs):
    _, _, image = digit_pngs
    dark = torch.from_numpy(image)[None, None].float() / 255
    white = 1.0 - dark
    assert float(dark.mean()) < 127 / 255 < float(white.mean())
    out = invert_images(torch.cat([white, dark]), "auto")
    assert torch.allclose(out[0], dark[0], atol=1e-6)  # white background → dark background, pixel for pixel
    assert torch.equal(out[1], dark[0])  # already dark: untouched
    assert float(out[0, 0, 0, 0]) == pytest.approx(0.0, abs=1e-6)  # the corner pixel is background
    assert torch.allclose(invert_images(dark, "always"), white) and torch.equal(
        invert_images(white, "none"), white
    )
    prep = Preprocess([0.5], [0.5], torch.device("cpu"), image_size=28, invert="auto")
    uint8 = torch.from_numpy(255 - image)[None, None]
    assert torch.allclose(prep.to_unit(uint8), dark, atol=1e-6)


def test_invert_is_stored_in_the_checkpoint_and_applied_by_predict(cnn_run, digit_pngs):
    from imgcls import api

    dark_png, white_png, _ = digit_pngs
    for name in ("last.pt", "best.pt", "epoch_2.pt"):
        assert torch.load(cnn_run / "checkpoints" / name, weights_only=True)["preprocess"]["invert"] == "auto"
    predictor = api.load(cnn_run)
    assert predictor.prep.invert == "auto"
    dark, white = predictor.predict_proba([str(dark_png), str(white_png)])
    assert torch.allclose(dark, white, atol=1e-5)  # the white-page photo is seen as the dark original
    predictor.prep.invert = "none"  # control: without the inversion the two images differ for the model
    dark_raw, white_raw = predictor.predict_proba([str(dark_png), str(white_png)])
    assert torch.allclose(dark_raw, dark, atol=1e-5) and not torch.allclose(white_raw, dark, atol=1e-3)


# ------------------------------------------------------------------------------------------ --explain
def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_explain_cli_writes_gradcam_and_feature_maps_for_a_cnn(cnn_run, digit_pngs, tmp_path):
    from typer.testing import CliRunner

    from imgcls.cli import app

    _, white_png, _ = digit_pngs
    with single_thread():  # the command in this process (a subprocess would import torch once more)
        result = CliRunner().invoke(app, ["predict", str(cnn_run), str(white_png), "--explain", "--json"])
    assert result.exit_code == 0, result.output[-2000:]
    (row,) = json.loads(result.stdout)
    record = row["explain"]
    assert Path(record["gradcam"]) == cnn_run / "explain" / "white_page_gradcam.png"
    assert Path(record["feature_maps"]) == cnn_run / "explain" / "white_page_feature_maps.png"
    assert _is_png(Path(record["gradcam"])) and _is_png(Path(record["feature_maps"]))
    assert record["feature_maps_layer"].startswith("backbone.features.0")  # the stem convolution
    assert record["predicted"] == row["top_k"][0]["class"]


def test_predict_explain_api_for_a_vit(vit_run, digit_pngs, tmp_path):
    from imgcls import api

    dark_png, _, _ = digit_pngs
    with single_thread():
        (row,) = api.predict(vit_run, [str(dark_png)], top_k=2, explain_dir=tmp_path / "why")
    record = row["explain"]
    assert _is_png(tmp_path / "why" / "dark_gradcam.png") and _is_png(
        tmp_path / "why" / "dark_feature_maps.png"
    )
    assert record["gradcam_layer"].endswith("blocks.0.norm1")  # the ViT rule of evaluation/cam.py
    assert record["feature_maps_layer"].endswith("patch_embed.proj")  # the ViT's first convolution
    assert record["skipped"] == {}


# ------------------------------------------------------------------------------------------ report
def test_class_distribution_figure_and_counts_in_every_report(cnn_run):
    from imgcls.config import load_config
    from imgcls.data.prepare import prepare_data

    metrics = json.loads((cnn_run / "metrics.json").read_text())
    assert _is_png(cnn_run / "class_distribution.png")
    assert "class_distribution.png" in (cnn_run / "report.md").read_text()
    data = prepare_data(load_config(cnn_run / "config.yaml"))
    for split, part in (("train", data.train), ("val", data.val), ("test", data.test)):
        assert metrics["class_counts"][split] == torch.bincount(part.labels, minlength=10).tolist()
    # stratified subsets: 240 training images → 18 train + 6 validation per class; 100 test → 10 per class
    assert metrics["class_counts"]["train"] == [18] * 10 and metrics["class_counts"]["val"] == [6] * 10
    assert metrics["class_counts"]["test"] == [10] * 10
    assert {"accuracy", "top3_accuracy", "top5_accuracy"} <= set(metrics)  # top-3 by default


def test_split_class_counts():
    counts = split_class_counts({"train": torch.tensor([0, 2, 2]), "test": torch.tensor([1])}, 3)
    assert counts == {"train": [1, 0, 2], "test": [0, 1, 0]}

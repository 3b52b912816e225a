"""Evaluation metrics against scikit-learn and hand-made calibration cases, the figure helpers,
and a whole evaluation of a tiny model on synthetic images writing every figure and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, precision_recall_fscore_support, roc_auc_score, top_k_accuracy_score
from tests.tiny_runs import single_thread
from torchmetrics.functional.classification import multiclass_calibration_error

from imgcls.config import build_config
from imgcls.data.images import ImageData
from imgcls.data.prepare import PreparedData
from imgcls.evaluation import figures, plots, projection
from imgcls.evaluation.evaluate import evaluate_model
from imgcls.evaluation.metrics import classification_metrics, expected_calibration_error
from imgcls.models.classifier import build_model
from imgcls.runtime.distributed import DistInfo


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Single-threaded torch: on a shared 2-core machine spinning intra-op threads slow tiny models many-fold."""
    with single_thread():
        yield


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def _random_predictions(n: int = 400, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % c
    logits = torch.randn(n, c, generator=g) + 1.5 * torch.nn.functional.one_hot(targets, c)
    return logits.softmax(dim=1), targets


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_match_sklearn():
    probs, targets = _random_predictions()
    m = classification_metrics(
        probs, targets, [f"c{i}" for i in range(5)], top_k=[1, 3, 5], calibration_bins=10
    )
    p, y = probs.double().numpy(), targets.numpy()
    assert m["roc_auc_macro"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-5
    )
    assert m["roc_auc_weighted"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="weighted"), abs=1e-5
    )
    assert m["top3_accuracy"] == pytest.approx(top_k_accuracy_score(y, p, k=3))
    assert "top5_accuracy" not in m  # k = 5 of 5 classes is always 1.0: left out with a warning
    assert m["nll"] == pytest.approx(log_loss(y, p), abs=1e-5)
    prec, rec, f1, support = precision_recall_fscore_support(y, p.argmax(1), zero_division=0)
    assert m["macro_f1"] == pytest.approx(f1.mean(), abs=1e-6)
    for i in range(5):
        row = m["per_class"][f"c{i}"]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (prec[i], rec[i], f1[i]), abs=1e-6
        )
        assert row["support"] == support[i]
    assert m["ece_bins"] == 10


def test_ece_of_hand_made_calibrated_and_uncalibrated_predictions():
    names = ["a", "b"]
    # calibrated: every prediction says 0.8 for class a, and 8 of 10 are class a
    probs = torch.tensor([[0.8, 0.2]] * 10)
    calibrated = torch.tensor([0] * 8 + [1] * 2)
    assert classification_metrics(probs, calibrated, names, calibration_bins=10)["ece"] == pytest.approx(
        0.0, abs=1e-6
    )
    assert expected_calibration_error(probs, calibrated, 10) == pytest.approx(0.0, abs=1e-6)
    # over-confident: says 0.9, right half of the time → gap 0.4
    probs = torch.tensor([[0.9, 0.1]] * 10)
    half = torch.tensor([0] * 5 + [1] * 5)
    assert classification_metrics(probs, half, names, calibration_bins=10)["ece"] == pytest.approx(
        0.4, abs=1e-6
    )
    # two bins weighted by their counts: 4 samples at 0.6 all right (gap 0.4), 6 at 0.95 with 3 right (gap 0.45)
    probs = torch.tensor([[0.6, 0.4]] * 4 + [[0.95, 0.05]] * 6)
    y = torch.tensor([0] * 4 + [0, 0, 0, 1, 1, 1])
    expected = 0.4 * 0.4 + 0.6 * 0.45
    assert classification_metrics(probs, y, names, calibration_bins=10)["ece"] == pytest.approx(
        expected, abs=1e-6
    )
    assert expected_calibration_error(probs, y, 10) == pytest.approx(expected, abs=1e-6)


def test_reliability_bins_agree_with_the_reported_ece():
    """The diagram's bins (plots.reliability_bins) give the ECE the metrics report (torchmetrics)."""
    probs, targets = _random_predictions(seed=3)
    for bins in (5, 15):
        b = plots.reliability_bins(probs, targets, bins)
        used = b["count"] > 0
        from_bins = np.sum(
            b["count"][used] / len(targets) * np.abs(b["accuracy"][used] - b["confidence"][used])
        )
        ref = float(multiclass_calibration_error(probs, targets, num_classes=5, n_bins=bins, norm="l1"))
        assert expected_calibration_error(probs, targets, bins) == pytest.approx(ref, abs=1e-6)
        assert from_bins == pytest.approx(ref, abs=1e-6)
        assert b["count"].sum() == len(targets) and len(b["edges"]) == bins + 1


# ------------------------------------------------------------------------------------------------ selection helpers
def test_most_confident_mistakes_are_wrong_and_sorted():
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.55, 0.45]])
    targets = torch.tensor([1, 1, 1, 0, 0])  # wrong: rows 0 (0.9), 2 (0.6), 3 (0.8)
    assert figures.most_confident_mistakes(probs, targets, 10).tolist() == [0, 3, 2]
    assert figures.most_confident_mistakes(probs, targets, 2).tolist() == [0, 3]
    assert len(figures.most_confident_mistakes(probs, probs.argmax(1), 5)) == 0


def test_stratified_sample_keeps_class_proportions():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    rows = figures.stratified_sample(labels, 200, seed=1)
    assert len(rows) == 200 and len(set(rows.tolist())) == 200
    assert torch.bincount(labels[rows]).tolist() == [120, 60, 20]
    assert torch.equal(figures.stratified_sample(labels, 5000), torch.arange(1000))
    tiny = figures.stratified_sample(
        torch.tensor([0, 1, 1, 2, 2, 2]), 3
    )  # a class with one image: uniform fallback
    assert len(tiny) == 3


# ------------------------------------------------------------------------------------------------ plots
def test_every_plot_function_writes_a_png(tmp_path):
    probs, targets = _random_predictions(n=120, c=4)
    names = ["alpha", "beta", "gamma", "delta"]
    m = classification_metrics(probs, targets, names)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    coords = np.random.default_rng(0).normal(size=(120, 2))
    written = [
        plots.plot_roc(probs, targets, names, tmp_path / "roc.png"),
        plots.plot_reliability(probs, targets, 10, tmp_path / "rel.png"),
        plots.plot_per_class(m["per_class"], tmp_path / "pc.png"),
        plots.plot_misclassified(images, [0] * 6, [1] * 6, [0.9] * 6, names, tmp_path / "mis.png"),
        plots.plot_embeddings([("a", coords), ("b", coords)], targets, names, tmp_path / "emb.png", "tsne"),
        plots.plot_gradcam(
            images[:3].float() / 255, np.random.rand(3, 16, 16), ["x", "y", "z"], tmp_path / "cam.png", "l"
        ),
        plots.plot_feature_maps(images[0], torch.randn(12, 8, 8), tmp_path / "fm.png", "conv"),
    ]
    assert all(_is_png(Path(p)) for p in written)


def test_plots_handle_many_classes(tmp_path):
    probs, targets = _random_predictions(n=300, c=50)
    names = [f"class {i}" for i in range(50)]
    m = classification_metrics(probs, targets, names)
    assert _is_png(plots.plot_roc(probs, targets, names, tmp_path / "roc.png"))
    assert _is_png(plots.plot_per_class(m["per_class"], tmp_path / "pc.png"))
    coords = np.random.default_rng(0).normal(size=(300, 2))
    assert _is_png(plots.plot_embeddings([("e", coords)], targets, names, tmp_path / "e.png", "umap"))


def test_embed_2d_shapes_and_bad_method():
    x = torch.randn(60, 70)
    assert projection.embed_2d(x, "tsne").shape == (60, 2)
    assert projection.embed_2d(x, "umap").shape == (60, 2)
    with pytest.raises(ValueError, match="unknown embedding method"):
        projection.embed_2d(x, "pca")


# ------------------------------------------------------------------------------------------------ a whole evaluation
ALL_FILES = [
    "curves.png",
    "class_distribution.png",
    "confusion.png",
    "per_class.png",
    "roc.png",
    "reliability.png",
    "misclassified.png",
    "embeddings_tsne.png",
    "embeddings_umap.png",
    "gradcam.png",
    "feature_maps.png",
]


def _synthetic_data(n_per_class: int = 30, classes: int = 3, seed: int = 0) -> PreparedData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = torch.randint(0, 60, (len(labels), 1, 28, 28), dtype=torch.uint8, generator=g)
    for c in range(classes):  # a bright bar whose position depends on the class
        images[labels == c, :, 4 + 7 * c : 9 + 7 * c, :] = 220
    names = [f"class_{c}" for c in range(classes)]
    data = ImageData(labels, names, images)
    empty = ImageData(labels[:0], names, images[:0])
    return PreparedData(empty, empty, data, names, 28, 1, [0.2], [0.3])


def _evaluate(tmp_path: Path, **eval_overrides) -> tuple[dict, Path]:
    eval_cfg = {"batch_size": 32, "max_plot_samples": 60, **eval_overrides}
    cfg = build_config(
        {
            "model": {
                "backbone": "adaptive_cnn",
                "backbone_args": {"layout": "mnist", "width_mult": 0.25},
                "head": "mlp",
                "head_args": {"hidden": [16]},
            },
            "train": {"device": "cpu", "precision": "fp32"},
            "eval": eval_cfg,
            "output": {"name": "synthetic"},
        }
    )
    data = _synthetic_data()
    torch.manual_seed(0)
    model = build_model(cfg.model, 3, 1)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "history.csv").write_text(
        "epoch,stage,lr,train_loss,train_acc,val_loss,val_acc\n1,main,0.001,1.1,0.4,1.0,0.5\n2,main,0.0005,0.9,0.6,0.8,0.7\n"
    )
    metrics = evaluate_model(
        model,
        cfg,
        data,
        run_dir,
        device=torch.device("cpu"),
        dist=DistInfo(),
        taxonomy=None,
        checkpoint="last",
        checkpoint_detail="last epoch (2)",
        preprocess=data.preprocess,
        class_names=data.class_names,
        train_time_s=1.5,
    )
    return metrics, run_dir


def test_evaluation_writes_every_figure_metrics_and_report(tmp_path):
    metrics, run_dir = _evaluate(tmp_path)
    for name in ALL_FILES:
        assert _is_png(run_dir / name), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["accuracy"] == pytest.approx(metrics["accuracy"])
    assert set(saved["figure_time_s"]) == set(ALL_FILES)
    assert "top3_accuracy" not in saved and "top5_accuracy" not in saved  # 3 classes: top-3/5 are always 1.0
    for key in (
        "roc_auc_macro",
        "roc_auc_weighted",
        "nll",
        "ece",
        "ece_bins",
        "per_class",
        "params",
        "flops",
        "gflops",
        "flops_convention",
        "inference_img_per_s",
    ):
        assert key in saved, key
    assert saved["params"] == saved["params_backbone"] + saved["params_head"]
    assert saved["flops"] > saved["flops_head"] > 0
    assert set(saved["embedding_geometry"]) == {
        "features",
        "head_embeddings",
    }  # mlp head: 32-d features → 16-d embeddings
    report = (run_dir / "report.md").read_text()
    for name in ALL_FILES:
        assert f"]({name})" in report, name
    for section in (
        "## Test metrics",
        "## Embedding geometry",
        "## Complexity and speed",
        "## Training history",
        "## Evaluation timing",
        "## Configuration",
        "ECE (15 equal-width bins)",
    ):
        assert section in report, section


def test_heavy_figures_are_optional_and_noted(tmp_path):
    _, run_dir = _evaluate(tmp_path, embeddings_plot=False, gradcam=False)
    for name in ("embeddings_tsne.png", "embeddings_umap.png", "gradcam.png"):
        assert not (run_dir / name).exists()
    assert _is_png(run_dir / "roc.png")
    report = (run_dir / "report.md").read_text()
    assert "eval.embeddings_plot=false" in report and "eval.gradcam=false" in report


def test_evaluated_images_decode_file_backed_sets(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    files = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(path)
        files.append(str(path))
    test = ImageData(torch.tensor([0, 1, 2]), ["a", "b", "c"], images=None, files=files)
    ctx = SimpleNamespace(data=SimpleNamespace(test=test, image_size=16, channels=1))
    images = figures.evaluated_images(ctx, torch.tensor([2, 0]))
    assert images.shape == (2, 1, 16, 16) and images.dtype == torch.uint8
    assert images[0].float().mean() == pytest.approx(80, abs=1) and int(images[1].max()) == 0

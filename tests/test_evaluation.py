"""Tests of evaluation (evaluation/metrics.py, plots.py, report.py, evaluate.py; DESIGN "Evaluation
outputs"): metrics against scikit-learn on toy predictions, ECE on hand-made calibrated and over-confident
cases, and the files a run directory holds after its one test-set evaluation."""

from __future__ import annotations

import contextlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from imgcls import api
from imgcls.evaluation.metrics import classification_metrics, topk_accuracy
from imgcls.evaluation.plots import plot_confusion, plot_curves, read_history
from imgcls.runtime import checkpoint as ckpt_io
from tiny_runs import requires_fashion_mnist, shared_run, single_thread


@pytest.fixture(scope="module")
def toy():
    """60 samples, 4 classes, probabilities that are right about 60 % of the time."""
    g = torch.Generator().manual_seed(0)
    targets = torch.arange(60) % 4
    logits = torch.randn(60, 4, generator=g)
    logits[torch.arange(60), targets] += 1.0
    return logits.softmax(-1), targets


def test_metrics_match_sklearn(toy):
    probs, targets = toy
    m = classification_metrics(probs, targets, list("abcd"), top_k=[1, 2, 3])
    y, p = targets.numpy(), probs.numpy()
    pred = p.argmax(1)
    assert m["num_samples"] == 60
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    assert m["macro_precision"] == pytest.approx(precision.mean(), abs=1e-6)
    assert m["macro_recall"] == pytest.approx(recall.mean(), abs=1e-6)
    assert m["macro_f1"] == pytest.approx(f1.mean(), abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(recall.mean(), abs=1e-6)
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"), abs=1e-6)
    assert m["roc_auc_macro"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-6
    )
    assert m["roc_auc_weighted"] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="weighted"), abs=1e-6
    )
    assert m["top2_accuracy"] == pytest.approx(top_k_accuracy_score(y, p, k=2))
    assert m["top3_accuracy"] == pytest.approx(top_k_accuracy_score(y, p, k=3))
    assert m["nll"] == pytest.approx(log_loss(y, p), rel=1e-5)
    for i, name in enumerate("abcd"):
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i], abs=1e-6)
        assert row["recall"] == pytest.approx(recall[i], abs=1e-6)
        assert row["support"] == support[i]
    confusion = np.zeros((4, 4), dtype=int)
    np.add.at(confusion, (y, pred), 1)
    assert m["confusion_matrix"] == confusion.tolist()
    json.dumps(m)  # JSON-serialisable


def test_accuracy_is_not_a_perfect_score_on_toy_data(toy):
    probs, targets = toy
    accuracy = classification_metrics(probs, targets, list("abcd"))["accuracy"]
    assert 0.3 < accuracy < 0.95  # a meaningful toy case, neither trivial nor perfect


def test_topk_hand_computed():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.4, 0.35, 0.25]])
    targets = torch.tensor([1, 0, 2])
    assert topk_accuracy(probs, targets, 1) == 0.0
    assert topk_accuracy(probs, targets, 2) == pytest.approx(1 / 3)
    assert topk_accuracy(probs, targets, 3) == 1.0
    assert topk_accuracy(probs, targets, 10) == 1.0  # k capped at the number of classes


def test_roc_auc_is_left_out_when_a_class_is_absent():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]])
    m = classification_metrics(probs, torch.tensor([0, 1]), ["a", "b", "c"], top_k=[1])
    assert "roc_auc_macro" not in m
    assert m["macro_recall"] == 1.0  # averaged over the classes that occur
    assert m["per_class"]["c"]["support"] == 0


def probs_with_confidence(confidence: float, n: int) -> torch.Tensor:
    return torch.tensor([[confidence, 1.0 - confidence]]).repeat(n, 1)


def test_ece_of_a_perfectly_calibrated_model_is_zero():
    # confidence 0.75 and exactly 3 of 4 right; confidence 1.0 and all right
    probs = torch.cat([probs_with_confidence(0.75, 8), probs_with_confidence(1.0, 4)])
    targets = torch.tensor([0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0])
    m = classification_metrics(probs, targets, ["a", "b"], top_k=[1], calibration_bins=10)
    assert m["ece"] == pytest.approx(0.0, abs=1e-6)
    assert m["ece_bins"] == 10


def test_ece_of_an_over_confident_model_hand_computed():
    # 5 samples at confidence 0.9 with 3 right (gap 0.3), 5 at 0.6 with 3 right (gap 0): ECE = ½·0.3 + ½·0
    probs = torch.cat([probs_with_confidence(0.9, 5), probs_with_confidence(0.6, 5)])
    targets = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0, 1, 1])
    m = classification_metrics(probs, targets, ["a", "b"], top_k=[1], calibration_bins=15)
    assert m["ece"] == pytest.approx(0.15, abs=1e-6)
    # NLL by hand: −(3 log 0.9 + 2 log 0.1 + 3 log 0.6 + 2 log 0.4) / 10
    expected = -(3 * math.log(0.9) + 2 * math.log(0.1) + 3 * math.log(0.6) + 2 * math.log(0.4)) / 10
    assert m["nll"] == pytest.approx(expected, rel=1e-5)


def test_ece_of_a_completely_wrong_confident_model():
    probs = probs_with_confidence(0.95, 6)
    m = classification_metrics(probs, torch.ones(6, dtype=torch.long), ["a", "b"], top_k=[1])
    assert m["accuracy"] == 0.0
    assert m["ece"] == pytest.approx(0.95, abs=1e-6)


# ------------------------------------------------------------------------------- plots
def test_inference_throughput_is_timed_for_the_configured_seconds_and_at_least_one_batch():
    """``eval.throughput_s``: the model is timed for that long after one warm-up batch; 0 times one batch."""
    import time

    from imgcls.data.preprocess import Preprocess
    from imgcls.evaluation import evaluate

    timed = (
        evaluate.inference_throughput.timed
    )  # tests/conftest.py shortens the function the evaluations call
    calls = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            time.sleep(0.01)
            return x.flatten(1)

    prep = Preprocess(mean=[0.5], std=[0.5], device=torch.device("cpu"))
    ips = timed(Counting(), prep, torch.device("cpu"), (1, 4, 4), 8, contextlib.nullcontext, seconds=0.0)
    assert calls == [8, 8] and 0 < ips <= 8 / 0.01  # warm-up + one timed batch
    calls.clear()
    start = time.perf_counter()
    timed(Counting(), prep, torch.device("cpu"), (1, 4, 4), 8, contextlib.nullcontext, seconds=0.2)
    assert time.perf_counter() - start >= 0.2 and len(calls) >= 1 + 0.2 / 0.05
    from imgcls.config import load_config
    from imgcls.errors import ConfigError

    assert load_config(None, []).eval.throughput_s == 1.5
    with pytest.raises(ConfigError, match=r"eval\.throughput_s"):
        load_config(None, ["eval.throughput_s=-1"])


def test_plot_functions_write_pngs(tmp_path):
    history = [
        {"epoch": 1.0, "train_loss": 1.0, "val_loss": 1.2, "train_acc": 0.5, "val_acc": 0.4, "lr": 0.1},
        {"epoch": 2.0, "train_loss": 0.8, "val_loss": 1.0, "train_acc": 0.6, "val_acc": 0.5, "lr": 0.05},
    ]
    path = plot_curves(history, tmp_path / "curves.png")
    assert Image.open(path).size[0] > 100
    assert plot_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    path = plot_confusion([[5, 1], [0, 4]], ["a", "b"], tmp_path / "confusion.png")
    assert Image.open(path).format == "PNG"


def test_read_history_parses_numbers(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,stage,val_acc,ema_val_acc\n1,main,0.5,\n2,main,0.6,0.55\n")
    rows = read_history(tmp_path / "history.csv")
    assert rows[0] == {"epoch": 1.0, "stage": "main", "val_acc": 0.5, "ema_val_acc": ""}
    assert rows[1]["ema_val_acc"] == 0.55
    assert read_history(tmp_path / "absent.csv") == []


# ------------------------------------------------------------------------------- a run directory
@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with single_thread():
        return shared_run(tmp_path_factory)


@requires_fashion_mnist
def test_metrics_json_has_the_documented_keys(shared):
    metrics = json.loads((shared / "metrics.json").read_text())
    expected = {
        "accuracy",
        "top5_accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "weighted_f1",
        "roc_auc_macro",
        "nll",
        "ece",
        "ece_bins",
        "per_class",
        "confusion_matrix",
        "checkpoint",
        "checkpoint_detail",
        "params",
        "trainable_params",
        "train_time_s",
        "eval_time_s",
        "inference_img_per_s",
        "num_samples",
    }
    assert expected <= set(metrics)
    assert metrics["checkpoint"] == "best"
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["num_samples"] == 1000
    assert metrics["params"] == metrics["trainable_params"] > 0
    assert metrics["inference_img_per_s"] > 0 and metrics["train_time_s"] > 0
    assert set(metrics["per_class"]) == set(
        ckpt_io.load_checkpoint(shared / "checkpoints" / "best.pt")["class_names"]
    )


@requires_fashion_mnist
def test_run_directory_holds_plots_report_and_weights(shared):
    for name in ("confusion.png", "curves.png"):
        path = shared / name
        assert path.is_file() and path.stat().st_size > 1000
        with Image.open(path) as image:
            assert image.format == "PNG"
    assert (shared / "config.yaml").is_file() and (shared / "train_summary.json").is_file()
    report = (shared / "report.md").read_text()
    assert "evaluated weights: `best`" in report
    assert "best validation val_acc" in report
    assert "](confusion.png)" in report and "](curves.png)" in report
    metrics = json.loads((shared / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.4f}" in report


@requires_fashion_mnist
def test_model_safetensors_holds_the_evaluated_weights(shared):
    weights = load_file(str(shared / "model.safetensors"))
    best = ckpt_io.load_checkpoint(shared / "checkpoints" / "best.pt")["model"]
    assert weights.keys() == best.keys()
    for key, value in best.items():
        assert torch.equal(weights[key], value), key


@requires_fashion_mnist
def test_evaluating_another_checkpoint_says_so(shared, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(shared, run_dir)
    with single_thread():
        metrics = api.evaluate(run_dir, "last")
    assert metrics["checkpoint"] == "last"
    assert "evaluated weights: `last`" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["checkpoint"] == "last"
    last = ckpt_io.load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    weights = load_file(str(run_dir / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in last.items())


@requires_fashion_mnist
def test_reevaluation_reproduces_the_metrics(shared, tmp_path):
    run_dir = tmp_path / "again"
    shutil.copytree(shared, run_dir)
    first = json.loads((shared / "metrics.json").read_text())
    with single_thread():
        again = api.evaluate(run_dir)
    assert again["confusion_matrix"] == first["confusion_matrix"]
    for key in ("accuracy", "macro_f1", "nll", "ece", "roc_auc_macro"):
        assert again[key] == pytest.approx(first[key], abs=1e-6), key

"""ONNX / TorchScript export: parity with PyTorch on the quickstart model (at a quarter width), a
dynamic batch, normalisation inside the graph, a loud failure when outputs diverge, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.tiny_runs import requires_fashion_mnist, shared_run, single_thread
from torch import nn

from imgcls.config import load_config
from imgcls.errors import UserError
from imgcls.export import ExportParityError, export_model
from imgcls.models.classifier import Classifier, build_model
from imgcls.models.heads.linear import LinearHead


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Single-threaded torch: on a shared 2-core machine spinning intra-op threads slow tiny models many-fold."""
    with single_thread():
        yield


PREPROCESS = {"image_size": 28, "channels": 1, "mean": [0.2860], "std": [0.3530]}
CLASSES = [f"c{i}" for i in range(10)]


def _quickstart_model() -> nn.Module:
    cfg = load_config("configs/quickstart.yaml", ["model.backbone_args.width_mult=0.25"])
    torch.manual_seed(0)
    return build_model(cfg.model, len(CLASSES), 1, cfg.train.label_smoothing).eval()


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_onnx_parity_dynamic_batch_and_normalisation_inside(tmp_path, exporter):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    model = _quickstart_model()
    record = export_model(
        model,
        PREPROCESS,
        CLASSES,
        tmp_path,
        onnx=True,
        torchscript=exporter == "torchscript",
        exporter=exporter,
    )
    assert record["onnx"]["exporter"] == exporter
    assert record["onnx"]["max_abs_difference"] <= 1e-4
    assert json.loads((tmp_path / "export.json").read_text())["input"]["range"] == [0.0, 1.0]

    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and not isinstance(inp.shape[0], int)  # symbolic batch dimension
    images = torch.rand(
        7, 1, 28, 28, generator=torch.Generator().manual_seed(5)
    )  # a batch size never exported
    (probs,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model.head.predict(
            model((images - 0.2860) / 0.3530)
        ).numpy()  # normalisation done by the graph
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    if exporter == "torchscript":
        assert record["torchscript"]["max_abs_difference"] <= 1e-4


class _CallCounter(nn.Module):
    """A backbone whose output depends on a Python counter: tracing freezes it, so exports diverge from eager."""

    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.calls = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x).mean(dim=(2, 3)) * self.calls


def test_divergent_export_fails_loudly(tmp_path):
    model = Classifier(_CallCounter(), LinearHead(4, 3)).eval()
    with pytest.raises(ExportParityError, match="differ from PyTorch"):
        export_model(model, PREPROCESS, ["a", "b", "c"], tmp_path, exporter="torchscript")
    assert issubclass(ExportParityError, UserError)


def test_nothing_to_export_and_bad_exporter_are_user_errors(tmp_path):
    model = _quickstart_model()
    with pytest.raises(UserError, match="nothing to export"):
        export_model(model, PREPROCESS, CLASSES, tmp_path, onnx=False, torchscript=False)
    with pytest.raises(UserError, match="exporter must be one of"):
        export_model(model, PREPROCESS, CLASSES, tmp_path, exporter="tf")


@requires_fashion_mnist
def test_cli_export_of_a_tiny_run(tmp_path_factory, tmp_path):
    run = shared_run(tmp_path_factory)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgcls",
            "export",
            str(run),
            "--onnx",
            "--torchscript",
            "-o",
            str(tmp_path),
            "--exporter",
            "torchscript",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model.onnx").stat().st_size > 0 and (
        tmp_path / "model.torchscript.pt"
    ).stat().st_size > 0
    record = json.loads((tmp_path / "export.json").read_text())
    assert record["source"]["checkpoint"] == "best" and len(record["class_names"]) == 10
    assert "max |Δp|" in proc.stdout


def test_batch_graph_heads_are_refused_and_exporter_failures_are_one_line(tmp_path):
    cfg = load_config("configs/fashion_mnist/fch_knn.yaml", ["model.backbone_args.width_mult=0.25"])
    model = build_model(cfg.model, len(CLASSES), 1, cfg.train.label_smoothing).eval()
    assert model.head.inference_mode == "batch"
    with pytest.raises(UserError, match=r"predicts each image from the whole batch \(eval_graph=batch\)"):
        export_model(model, PREPROCESS, CLASSES, tmp_path)
    assert not (tmp_path / "model.onnx").exists()

    class Untraceable(nn.Module):
        num_features = 4

        def forward_features(self, x):
            raise RuntimeError("We don't have an op for aten::scatter_\nsecond line")

    plain = Classifier(Untraceable(), LinearHead(4, 3)).eval()
    with pytest.raises(UserError) as info:
        export_model(plain, PREPROCESS, ["a", "b", "c"], tmp_path, exporter="torchscript")
    assert str(info.value).startswith(
        "cannot export this model to ONNX: the exporter failed (RuntimeError: We don't"
    )
    assert "\n" not in str(info.value)

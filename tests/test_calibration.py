"""Temperature scaling (issue 13): the fit recovers a known temperature, never raises the validation NLL
above T = 1, scales every logit a head predicts from, and is applied in evaluate, predict and
predict --threshold of a real run (stored per checkpoint, ignored when it belongs to other weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imgcls.config import load_config
from imgcls.data.sources import FASHION_MNIST_CLASSES
from imgcls.errors import ConfigError
from imgcls.evaluation.calibration import (
    CALIBRATION_FILE,
    fit_head_temperature,
    fit_log_temperature,
    fit_temperature,
)
from imgcls.evaluation.hierarchical import threshold_decode
from imgcls.evaluation.predict import predict_views
from imgcls.models.classifier import build_head, build_model
from imgcls.taxonomy import build_taxonomy
from tiny_runs import requires_fashion_mnist, single_thread

CONFIGS = Path(__file__).parent.parent / "configs"
FASHION_TREE = CONFIGS / "taxonomies" / "fashion_mnist.yaml"
FASHION_CLASSES = FASHION_MNIST_CLASSES


def miscalibrated(
    true_t: float, n: int = 8000, c: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(u), logits reported as u·T_true: the right temperature is T_true."""
    g = torch.Generator().manual_seed(seed)
    u = 2.5 * torch.randn(n, c, generator=g)
    y = torch.multinomial(u.softmax(dim=1), 1, generator=g).squeeze(1)
    return u * true_t, y


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_recovers_a_known_temperature(true_t):
    logits, y = miscalibrated(true_t)
    fit = fit_temperature(logits, y)
    assert fit.temperature == pytest.approx(true_t, rel=0.05)
    assert fit.nll_after < fit.nll_before
    assert fit.nll_after == pytest.approx(float(F.cross_entropy(logits / fit.temperature, y)), abs=1e-5)


def test_fit_never_raises_the_validation_nll_above_temperature_one():
    for seed in range(5):
        logits, y = miscalibrated(1.0, n=300, seed=seed)  # already calibrated: T ≈ 1
        fit = fit_temperature(logits, y)
        assert fit.nll_after <= fit.nll_before
        assert fit.nll_after <= float(F.cross_entropy(logits, y)) + 1e-7
    # constant logits: the NLL does not depend on T, so T stays exactly 1
    fit = fit_temperature(torch.zeros(50, 4), torch.arange(50) % 4)
    assert fit.temperature == 1.0 and fit.nll_after == fit.nll_before
    # an objective whose only minima lie outside the search interval, or that is non-finite there
    t, before, after = fit_log_temperature(lambda lt: (lt - 10.0) ** 2)
    assert after <= before and t == pytest.approx(torch.e**4, rel=1e-4)  # clamped to the interval's edge
    t, before, after = fit_log_temperature(
        lambda lt: torch.where(lt.abs() > 0.1, lt * float("nan"), lt**2 + 1)
    )
    assert t == 1.0 and after == before == 1.0


def test_head_scaling_reaches_every_logit_it_predicts_from():
    torch.manual_seed(0)
    taxonomy = build_taxonomy(str(FASHION_TREE), FASHION_CLASSES)
    head = build_head("arcface_multihead", {}, 16, 10, 0.0, taxonomy).eval()
    out = head(torch.randn(32, 16))
    scaled = head.scale_logits(out, 4.0)
    for key, value in out.extras.items():
        assert torch.allclose(scaled.extras[key], value / 4.0), key
    assert not torch.allclose(head.predict(scaled), head.predict(out))
    # the per-level head gets a temperature of its own, fitted through its own predict
    y = torch.randint(0, 10, (32,))
    fit = fit_head_temperature(head, out, y)
    nll = lambda t: float(F.nll_loss(head.predict(head.scale_logits(out, t)).clamp_min(1e-12).log(), y))  # noqa: E731
    assert fit.nll_after == pytest.approx(nll(fit.temperature), abs=1e-5) and fit.nll_after <= nll(1.0)


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():  # a shared 2-core machine: intra-op threads mostly spin
        yield


def tiny_model(taxonomy=None):
    cfg = load_config(
        None, ["model.backbone=adaptive_cnn", "model.backbone_args={layout: mnist, width_mult: 0.25}"]
    )
    torch.manual_seed(0)
    return build_model(cfg.model, 10, 1, 0.0, taxonomy).eval()


def test_predict_views_applies_the_temperature_and_keeps_the_raw_probabilities():
    from contextlib import nullcontext

    from imgcls.data.preprocess import Preprocess

    model = tiny_model()
    prep = Preprocess.from_meta(
        {"image_size": 28, "channels": 1, "mean": [0.5], "std": [0.25]}, torch.device("cpu")
    )
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    pred = predict_views(model, images, prep, nullcontext, temperature=0.25)
    logits = pred.output.logits
    assert torch.allclose(pred.probs, (logits / 0.25).softmax(dim=1), atol=1e-6)
    assert torch.allclose(pred.uncalibrated_probs, logits.softmax(dim=1), atol=1e-6)
    assert predict_views(model, images, prep, nullcontext).uncalibrated_probs is None


def test_threshold_prediction_uses_calibrated_node_probabilities():
    from imgcls.api import Predictor

    taxonomy = build_taxonomy(str(FASHION_TREE), FASHION_CLASSES)
    meta = {"image_size": 28, "channels": 1, "mean": [0.5], "std": [0.25]}
    images = [
        torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        for i in range(3)
    ]
    plain = Predictor(tiny_model(taxonomy), meta, FASHION_CLASSES, taxonomy)
    hot = Predictor(tiny_model(taxonomy), meta, FASHION_CLASSES, taxonomy, temperature=0.05)  # sharpened
    probs, hot_probs = plain.predict_proba(images), hot.predict_proba(images)
    logits = torch.log(probs)  # softmax logits up to a constant per row
    assert torch.allclose(hot_probs, (logits / 0.05).softmax(dim=1), atol=1e-4)
    nodes = taxonomy.class_to_node_probs((logits / 0.05).softmax(dim=1))
    decoded = threshold_decode(nodes, taxonomy, 0.5)
    for i, row in enumerate(hot.predict(images, threshold=0.5)):
        assert row["hierarchy"]["path"] == taxonomy.path_names(int(decoded[i]))
        expected = float(nodes[i, int(decoded[i])]) if decoded[i] >= 0 else 1.0
        assert row["hierarchy"]["probability"] == pytest.approx(expected, abs=1e-4)


def test_calibration_needs_a_validation_split():
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(None, ["eval.calibration=temperature", "data.val_fraction=0"])


@requires_fashion_mnist
def test_evaluate_fits_on_validation_stores_per_checkpoint_and_predict_applies_it(tmp_path):
    from imgcls import api

    overrides = [
        "data.train_subset=600",
        "data.test_subset=300",
        "data.val_fraction=0.25",
        f"data.taxonomy={FASHION_TREE}",
        "model.backbone=adaptive_cnn",
        "model.backbone_args={layout: mnist, width_mult: 0.25}",
        "model.head=linear",
        "train.epochs=2",
        "train.batch_size=50",
        "train.progress=false",
        "optim.lr=3e-3",
        "eval.plots=false",
        "eval.checkpoint=last",
        "eval.calibration=temperature",
        "output.tensorboard=false",
        f"output.dir={tmp_path}",
        "output.name=cal",
    ]
    result = api.train(None, overrides)
    cal = result.metrics["calibration"]
    stored = json.loads((result.run_dir / CALIBRATION_FILE).read_text())["last"]
    assert stored["temperature"] == cal["temperature"] != 1.0 and cal["num_samples"] == 150
    assert cal["nll_after"] <= cal["nll_before"]
    test = cal["test"]
    assert test["ece_after"] == result.metrics["ece"] and test["accuracy_after"] == test["accuracy_before"]
    assert "coverage_at_99_precision_before" in test and "coverage_at_99_precision_after" in test
    report = (result.run_dir / "report.md").read_text()
    assert "Calibration (temperature scaling)" in report and "coverage at 99 % precision" in report

    predictor = api.load(result.run_dir)
    assert predictor.temperature == cal["temperature"]
    assert api.load(result.run_dir, calibrated=False).temperature == 1.0
    image = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    raw = api.load(result.run_dir, calibrated=False).predict_proba([image])
    assert torch.allclose(
        predictor.predict_proba([image]), (raw.log() / cal["temperature"]).softmax(dim=1), atol=1e-4
    )
    # a temperature fitted for other weights is not applied
    stored_all = json.loads((result.run_dir / CALIBRATION_FILE).read_text())
    stored_all["last"]["checkpoint"]["step"] += 1
    (result.run_dir / CALIBRATION_FILE).write_text(json.dumps(stored_all))
    with pytest.warns(UserWarning, match="other 'last' weights"):
        assert api.load(result.run_dir).temperature == 1.0

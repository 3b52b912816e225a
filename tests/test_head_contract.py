"""The head contract of models/heads/base.py, for every registered head (new heads included automatically):
``output.logits`` are what the head predicts from, whether or not the forward saw targets, so the training
accuracy the trainer logs (``head.predict`` on the training forward) equals the accuracy of the same weights
at evaluation. Margin heads used to put their margin logits there and logged ``train_acc 0.0000``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imgcls.data.sources import FASHION_MNIST_CLASSES
from imgcls.models.classifier import build_head
from imgcls.registry import HEADS
from imgcls.runtime.batch import Batch
from imgcls.taxonomy import build_taxonomy

REPO = Path(__file__).resolve().parents[1]
FASHION_CLASSES = FASHION_MNIST_CLASSES


@pytest.fixture(scope="module")
def taxonomy():
    return build_taxonomy(str(REPO / "configs" / "taxonomies" / "fashion_mnist.yaml"), FASHION_CLASSES)


def no_dropout_args(name: str) -> dict:
    """Default arguments with every dropout off, so that training and evaluation forwards are comparable."""
    model = HEADS.args_model(name)
    return {k: 0.0 for k in (model.model_fields if model else {}) if "dropout" in k}


@pytest.mark.parametrize("name", HEADS.names())
def test_training_accuracy_is_the_accuracy_of_the_prediction(name, taxonomy):
    torch.manual_seed(0)
    head = build_head(name, no_dropout_args(name), 16, 10, 0.0, taxonomy)
    features = torch.randn(24, 16)
    with torch.no_grad():
        evaluated = head.eval().predict(head(features))
        # targets = the evaluation prediction: evaluation accuracy is 1, and a margin applied to the
        # predicting logits would lower the target scores and show up as a lower training accuracy
        targets = evaluated.argmax(-1)
        output = head.train()(features, targets)
        trained = head.predict(output)
    assert (trained.argmax(-1) == targets).float().mean().item() == 1.0, name
    assert torch.allclose(trained, evaluated, atol=1e-5), name
    # the loss still sees the targets (margin heads: through extras), and is finite
    terms = head.loss(output, Batch(images=features, targets=targets))
    assert terms and all(torch.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("name", ["arcface", "arcface_multihead", "sphere_multi", "sphere_multi_hier"])
def test_margin_heads_keep_the_margin_in_the_loss(name, taxonomy):
    """The margin still trains: the loss with targets is larger than the same loss on margin-free logits."""
    torch.manual_seed(0)
    head = build_head(name, no_dropout_args(name), 16, 10, 0.0, taxonomy).train()
    features, targets = torch.randn(24, 16), torch.randint(0, 10, (24,))
    batch = Batch(images=features, targets=targets)
    with_margin = head(features, targets)
    without = head(features)
    assert sum(head.loss(with_margin, batch).values()) > sum(head.loss(without, batch).values())


def test_predictor_moved_to_evaluation_and_still_importable_from_the_api():
    from imgcls import api
    from imgcls.evaluation.predict import Predictor

    assert api.Predictor is Predictor

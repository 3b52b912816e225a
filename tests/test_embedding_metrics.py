"""Compactness / separation (SPEC §4.2) against hand-computed cases, their invariances, and the
metric extension on backbone features and head embeddings."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from imgcls.evaluation.embedding_metrics import (
    compactness,
    embedding_geometry,
    embedding_metrics_extension,
    separation,
)


def test_compactness_hand_computed():
    # class 0: points at distance 1 and 1 from their mean (0, 0); class 1: distances 0, 2, 2 from mean (10, 0)
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [10.0, 0.0], [10.0, 2.0], [10.0, -2.0]])
    y = torch.tensor([0, 0, 1, 1, 1])
    # per class mean distance: 1 and (0 + 2 + 2) / 3; mean over classes (not over samples)
    assert compactness(x, y) == pytest.approx((1.0 + 4.0 / 3.0) / 2)


def test_separation_hand_computed():
    # class means (1, 0), (0, 1), (-1, 0): cosines 0, -1, 0 → 1 − cos = 1, 2, 1
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1, 2, 2])
    assert separation(x, y) == pytest.approx(4.0 / 3.0)


def test_identical_class_directions_have_zero_separation():
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]])
    assert separation(x, torch.tensor([0, 1, 2])) == pytest.approx(0.0, abs=1e-12)


def test_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = torch.randint(0, 5, (200,), generator=g)
    base = embedding_geometry(x, y)
    scaled = embedding_geometry(3.0 * x, y)
    assert scaled["compactness"] == pytest.approx(3.0 * base["compactness"])
    assert scaled["separation"] == pytest.approx(base["separation"])  # cosine: scale-free
    assert scaled["relative_compactness"] == pytest.approx(base["relative_compactness"])
    perm = torch.randperm(200, generator=g)
    assert embedding_geometry(x[perm], y[perm])["compactness"] == pytest.approx(base["compactness"])
    # relabelling classes does not change anything
    assert embedding_geometry(x, (y + 2) % 5)["separation"] == pytest.approx(base["separation"])


def test_tighter_clusters_are_more_compact():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(4) * 10
    y = torch.arange(4).repeat_interleave(50)
    noise = torch.randn(200, 4, generator=g)
    loose = embedding_geometry(centres[y] + noise, y)
    tight = embedding_geometry(centres[y] + 0.1 * noise, y)
    assert tight["compactness"] < 0.2 * loose["compactness"]
    assert tight["separation"] == pytest.approx(1.0, abs=0.01)  # orthogonal class centres


def test_single_class_has_undefined_separation():
    geo = embedding_geometry(torch.randn(10, 3), torch.zeros(10, dtype=torch.long))
    assert math.isnan(geo["separation"]) and math.isnan(geo["relative_compactness"])


def test_extension_reports_features_and_embeddings_as_json():
    y = torch.tensor([0, 0, 1, 1])
    preds = SimpleNamespace(
        features=torch.tensor([[1.0, 0.0], [1.0, 2.0], [0.0, 1.0], [2.0, 1.0]]),
        embeddings=torch.tensor([[1.0], [1.0], [1.0], [1.0]]),  # one class centre direction: separation 0
        targets=y,
        features_name="backbone features",
    )
    ctx = SimpleNamespace(preds=preds, metrics={})
    embedding_metrics_extension(ctx)
    geo = ctx.metrics["embedding_geometry"]
    assert set(geo) == {"features", "head_embeddings"}
    assert geo["features"]["dim"] == 2 and geo["head_embeddings"]["dim"] == 1
    assert geo["features"]["name"] == "backbone features"
    assert geo["features"]["compactness"] == pytest.approx(1.0)
    assert geo["head_embeddings"]["relative_compactness"] is None  # 0/0 → null, not NaN
    json.loads(json.dumps(ctx.metrics, allow_nan=False))


def test_extension_reports_identical_features_once():
    x = torch.randn(6, 3)
    ctx = SimpleNamespace(
        preds=SimpleNamespace(features=x, embeddings=x.clone(), targets=torch.tensor([0, 1] * 3)), metrics={}
    )
    embedding_metrics_extension(ctx)
    assert set(ctx.metrics["embedding_geometry"]) == {"head_embeddings"}

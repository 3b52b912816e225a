"""Hierarchical metrics and thresholded decoding on hand-made predictions (SPEC §3.4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imgcls.evaluation.hierarchical import (
    DEFAULT_TAUS,
    coverage_at_precision,
    depth_at_precision,
    exact_path_match,
    hierarchical_distance_at_k,
    hierarchical_metrics,
    hierarchical_prf,
    leaf_accuracy,
    mistake_severity,
    node_mean_average_precision,
    per_level_accuracy,
    plot_risk_coverage,
    risk_coverage_curve,
    threshold_decode,
    thresholded_summary,
    violation_rate,
)
from imgcls.taxonomy import taxonomy_from_parent_map


@pytest.fixture(scope="module")
def tax():
    # root → {A → {a1, a2}, b}; node order A, b, a1, a2 (0..3); classes a1, a2, b → nodes 2, 3, 1
    t = taxonomy_from_parent_map({"A": None, "b": None, "a1": "A", "a2": "A"}, ["a1", "a2", "b"])
    assert t.nodes == ["A", "b", "a1", "a2"]
    return t


def test_threshold_decode_walks_a_consistent_path(tax):
    probs = np.array(
        [
            [0.9, 0.1, 0.6, 0.3],  # A confident, a1 moderately
            [0.4, 0.6, 0.35, 0.05],  # b
            [0.2, 0.1, 0.7, 0.0],  # inconsistent: child a1 high, parent A low
        ]
    )
    assert threshold_decode(probs, tax, 0.0).tolist() == [2, 1, 2]  # τ = 0 always reaches a leaf
    assert all(tax.is_leaf(int(v)) for v in threshold_decode(probs, tax, 0.0))
    assert threshold_decode(probs, tax, 0.6).tolist() == [2, 1, -1]  # ≥ τ; a1 is never reached via A
    assert threshold_decode(probs, tax, 0.7).tolist() == [0, -1, -1]  # stops at A
    assert threshold_decode(probs, tax, 0.95).tolist() == [-1, -1, -1]  # τ > max → root
    assert threshold_decode(torch.tensor(probs), tax, 0.7).tolist() == [0, -1, -1]
    with pytest.raises(ValueError):
        threshold_decode(probs[:, :3], tax, 0.5)


def test_leaf_and_per_level_accuracy(tax):
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.1, 0.2, 0.7]])
    y = np.array([0, 1, 2, 0])
    assert leaf_accuracy(probs, y) == pytest.approx(0.5)
    # predicted a1, a1, b, b; level 1: A=A, A=A, b=b, b≠A → 3/4; level 2 (b padded): 2/4
    assert per_level_accuracy(probs.argmax(1), y, tax) == {"level_1": 0.75, "level_2": 0.5}


def test_hierarchical_precision_recall_f1(tax):
    # true a1 (path {A, a1}) for all; predicted a2 → P={A,a2}; A → {A}; root → {}; b → {b}
    pred = np.array([3, 0, -1, 1])
    y = np.zeros(4, dtype=int)
    out = hierarchical_prf(pred, y, tax)
    common, n_pred, n_true = 1 + 1 + 0 + 0, 2 + 1 + 0 + 1, 2 * 4
    assert out["hierarchical_precision"] == pytest.approx(common / n_pred)
    assert out["hierarchical_recall"] == pytest.approx(common / n_true)
    hp, hr = common / n_pred, common / n_true
    assert out["hierarchical_f1"] == pytest.approx(2 * hp * hr / (hp + hr))
    perfect = hierarchical_prf(np.array([2, 3, 1]), np.array([0, 1, 2]), tax)
    assert perfect == {"hierarchical_precision": 1.0, "hierarchical_recall": 1.0, "hierarchical_f1": 1.0}
    nothing = hierarchical_prf(np.array([-1]), np.array([0]), tax)
    assert nothing["hierarchical_precision"] == 1.0 and nothing["hierarchical_recall"] == 0.0


def test_exact_path_and_violation_rate(tax):
    nodes = np.array([[0.9, 0.1, 0.8, 0.1], [0.9, 0.1, 0.4, 0.4], [0.3, 0.2, 0.6, 0.1]])
    y = np.array([0, 0, 0])
    assert exact_path_match(nodes, y, tax) == pytest.approx(1 / 3)  # only row 0 is exactly {A, a1}
    assert violation_rate(nodes, tax) == pytest.approx(1 / 3)  # row 2: a1 on, A off
    derived = tax.class_to_node_probs(np.random.default_rng(0).dirichlet(np.ones(3), size=50))
    assert violation_rate(derived, tax) == 0.0


def test_mistake_severity_and_hierarchical_distance_at_k(tax):
    pred = np.array([1, 2, 2, 0])  # a2 for a1 (sibling), b for a1, b for b (right), a1 for a1
    y = np.array([0, 0, 2, 0])
    out = mistake_severity(pred, y, tax)
    # a2 vs a1: LCA A, height 2 − 1 = 1, distance 2; b vs a1: LCA root, height 2, distance 3
    assert out == {"num_mistakes": 2, "mistake_severity": 1.5, "mistake_distance": 2.5}
    assert mistake_severity(np.array([0]), np.array([0]), tax)["mistake_severity"] is None
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])  # top-2: [a2, b] and [a1, a2]
    targets = np.array([0, 0])
    assert hierarchical_distance_at_k(probs, targets, tax, 1) == pytest.approx((1 + 0) / 2)
    assert hierarchical_distance_at_k(probs, targets, tax, 2) == pytest.approx((1 + 2 + 0 + 1) / 4)
    assert hierarchical_distance_at_k(probs, targets, tax, 10) == pytest.approx((1 + 2 + 0 + 0 + 1 + 2) / 6)


def test_thresholded_summary_and_curve(tax):
    nodes = np.array([[0.9, 0.1, 0.8, 0.1], [0.9, 0.1, 0.45, 0.55], [0.3, 0.7, 0.2, 0.1]])
    y = np.array([0, 0, 0])  # all a1
    s = thresholded_summary(nodes, y, tax, 0.5)
    # decoded: a1 (right), a2 (wrong), b (wrong)
    assert s["coverage"] == 1.0 and s["risk"] == pytest.approx(2 / 3)
    assert s["node_precision"] == pytest.approx(1 / 3) and s["abstain_rate"] == 0.0
    s = thresholded_summary(nodes, y, tax, 0.6)
    # decoded: a1, A (on path, not covered), b (wrong)
    assert s["coverage"] == pytest.approx(2 / 3) and s["risk"] == pytest.approx(0.5)
    assert s["node_precision"] == pytest.approx(2 / 3)
    assert s["mean_depth"] == pytest.approx((2 + 1 + 1) / 3)
    assert s["mean_relative_depth"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    top = thresholded_summary(nodes, y, tax, 0.95)
    assert (
        top["coverage"] == 0 and top["abstain_rate"] == 1 and top["node_precision"] == 1 and top["risk"] == 0
    )
    curve = risk_coverage_curve(nodes, y, tax, taus=[0.0, 0.6, 0.85, 0.95])
    assert [p["coverage"] for p in curve] == pytest.approx([1.0, 2 / 3, 0.0, 0.0])
    hand = [
        {"coverage": 1.0, "risk": 0.2, "node_precision": 0.8, "mean_relative_depth": 1.0},
        {"coverage": 0.6, "risk": 0.005, "node_precision": 0.995, "mean_relative_depth": 0.7},
        {"coverage": 0.3, "risk": 0.0, "node_precision": 1.0, "mean_relative_depth": 0.4},
    ]
    assert coverage_at_precision(hand, 0.99) == 0.6
    assert depth_at_precision(hand, 0.99) == 0.7
    assert coverage_at_precision(hand[:1], 0.99) == 0.0


def test_node_map(tax):
    y = np.array([0, 1, 2, 0])
    perfect = tax.lineage_matrix().numpy()[y]
    assert node_mean_average_precision(perfect, y, tax) == pytest.approx(1.0)


def test_hierarchical_metrics_entry_point_is_json_and_plots(tax, tmp_path):
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    logits = rng.normal(size=(60, 3)) + 2.5 * np.eye(3)[y]
    probs = torch.tensor(logits).softmax(1)
    m = hierarchical_metrics(probs, torch.tensor(y), tax)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text)["leaf_accuracy"] == pytest.approx(leaf_accuracy(probs, y))
    for key in (
        "per_level_accuracy",
        "hierarchical_f1",
        "exact_path_match",
        "violation_rate",
        "mistake_severity",
        "hier_distance@1",
        "hier_distance@5",
        "node_map",
        "thresholded",
        "coverage_at_99_precision",
        "depth_at_99_precision",
        "risk_coverage",
    ):
        assert key in m, key
    assert m["node_probs_source"] == "classes" and m["violation_rate"] == 0.0
    assert len(m["risk_coverage"]) == len(DEFAULT_TAUS)
    nodes = rng.uniform(size=(60, tax.num_nodes))
    with_nodes = hierarchical_metrics(probs, y, tax, node_probs=nodes, threshold=0.7)
    assert with_nodes["node_probs_source"] == "head" and with_nodes["thresholded"]["tau"] == 0.7
    assert with_nodes["violation_rate"] == pytest.approx(violation_rate(nodes, tax))
    png = plot_risk_coverage(m["risk_coverage"], tmp_path / "plots" / "risk_coverage.png", title="test run")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(ValueError):
        hierarchical_metrics(probs[:, :2], y, tax)

"""Asymmetric Loss and HBCE against hand-computed cases; gradients of the soft vs hard penalties
(SPEC §3.3, §6.4, §6.5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from imgcls.errors import ConfigError
from imgcls.losses.asymmetric import AsymmetricLoss, asymmetric_loss
from imgcls.losses.hierarchical import (
    HierarchicalBCELoss,
    class_log_likelihood,
    data_driven_edge_penalties,
    deepest_on_node,
    hard_violations,
    soft_violations,
)
from imgcls.taxonomy import taxonomy_from_parent_map


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture
def tax():
    # root → {A → {a1, a2}, b}; node order A, b, a1, a2; classes a1, a2, b
    t = taxonomy_from_parent_map({"A": None, "b": None, "a1": "A", "a2": "A"}, ["a1", "a2", "b"])
    assert t.nodes == ["A", "b", "a1", "a2"] and t.class_nodes == [2, 3, 1]
    return t


# --------------------------------------------------------------------------------------------- ASL


def test_asymmetric_loss_hand_computed():
    logits = torch.tensor([[0.0, 2.0]])
    y = torch.tensor([[1.0, 0.0]])
    p0, p1 = 0.5, sig(2.0)
    pos = (1 - p0) ** 1 * math.log(p0)
    p_neg = min(1 - p1 + 0.05, 1.0)
    neg = (1 - p_neg) ** 4 * math.log(p_neg)
    expected = -(pos + neg)
    assert asymmetric_loss(logits, y).item() == pytest.approx(expected, rel=1e-5)
    assert AsymmetricLoss()(logits, y).item() == pytest.approx(expected, rel=1e-5)


def test_asymmetric_loss_is_batch_normalised_sum_and_reduces_to_bce():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 6), (torch.rand(4, 6) > 0.5).float()
    plain = asymmetric_loss(logits, y, gamma_neg=0, gamma_pos=0, clip=0)
    bce_sum_over_b = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / 4
    assert plain.item() == pytest.approx(bce_sum_over_b.item(), rel=1e-5)
    doubled = asymmetric_loss(torch.cat([logits, logits]), torch.cat([y, y]))
    assert doubled.item() == pytest.approx(asymmetric_loss(logits, y).item(), rel=1e-6)
    weight = torch.tensor([2.0, 0, 0, 0, 0, 0])
    weighted = asymmetric_loss(logits, y, weight=weight)
    only0 = asymmetric_loss(logits[:, :1], y[:, :1])
    assert weighted.item() == pytest.approx(2 * only0.item(), rel=1e-5)
    with pytest.raises(ConfigError):
        AsymmetricLoss(clip=1.5)


def test_asymmetric_focal_weight_gradient_switch():
    logits = torch.tensor([[0.3, -0.2]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0]])
    g_detached = torch.autograd.grad(asymmetric_loss(logits, y), logits)[0]
    g_full = torch.autograd.grad(asymmetric_loss(logits, y, detach_focal_weight=False), logits)[0]
    assert not torch.allclose(g_detached, g_full)


# --------------------------------------------------------------------------------------------- helpers


def test_class_log_likelihood_hand_computed(tax):
    z = torch.tensor([[1.0, -1.0, 2.0, -2.0]])
    ll = class_log_likelihood(z, tax.lineage_matrix())
    lsig = lambda v: math.log(sig(v))  # noqa: E731
    # class a1: A on, b off, a1 on, a2 off
    a1 = lsig(1) + lsig(1) + lsig(2) + lsig(2)
    b = lsig(-1) + lsig(-1) + lsig(-2) + lsig(2)
    assert ll[0, 0].item() == pytest.approx(a1, rel=1e-5)
    assert ll[0, 2].item() == pytest.approx(b, rel=1e-5)


def test_data_driven_edge_penalties():
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    edges = torch.tensor([[0, 1]])
    pen = data_driven_edge_penalties(labels, edges, eps=1e-6)
    # parent off in rows 1, 2; child on in one of them → 1 − (1 + ε)/(2 + 2ε) = 0.5
    assert pen.item() == pytest.approx(0.5, abs=1e-6)
    weighted = data_driven_edge_penalties(labels, edges, sample_weight=torch.tensor([1.0, 3.0, 1.0, 1.0]))
    assert weighted.item() == pytest.approx(1 - 3 / 4, abs=1e-6)
    consistent = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    assert data_driven_edge_penalties(consistent, edges).item() == pytest.approx(1.0, abs=1e-5)


def test_violations_and_deepest_node(tax):
    probs = torch.tensor([[0.3, 0.1, 0.8, 0.2], [0.9, 0.1, 0.8, 0.6]])
    edges = tax.edge_index()  # (A, a1), (A, a2)
    assert torch.allclose(soft_violations(probs, edges, "diff"), torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    assert torch.allclose(
        soft_violations(probs, edges, "product"), torch.tensor([[0.56, 0.14], [0.08, 0.06]])
    )
    assert torch.equal(hard_violations(probs, edges), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    depths = torch.tensor(tax.depths)
    on = torch.tensor([[False, True, False, False], [True, False, True, True], [False] * 4])
    assert deepest_on_node(on, depths).tolist() == [1, 2, -1]  # tie a1/a2 → lower index; none → root


# --------------------------------------------------------------------------------------------- HBCE


def hand_terms(z: list[float], target: int, penalty: float = 0.1) -> dict[str, float]:
    """Soft HBCE by hand for one sample on the fixture tree (level weights all 1 here)."""
    lineage = [[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 0, 0]]
    y = lineage[target]
    p = [sig(v) for v in z]
    bce = -sum(yi * math.log(pi) + (1 - yi) * math.log(1 - pi) for yi, pi in zip(y, p, strict=True)) / 4
    viol = max(p[2] - p[0], 0) + max(p[3] - p[0], 0)
    ll = [sum(math.log(p[j]) if row[j] else math.log(1 - p[j]) for j in range(4)) for row in lineage]
    q = [math.exp(v - max(ll)) for v in ll]
    q = [v / sum(q) for v in q]
    dist = [[0, 2, 3], [2, 0, 3], [3, 3, 0]]
    return {
        "bce": bce,
        "hier_penalty": penalty * viol,
        "distance_penalty": sum(qc * dist[c][target] for c, qc in enumerate(q)),
    }


def test_hbce_soft_hand_computed(tax):
    assert torch.allclose(tax.level_weights(), torch.ones(4))  # 2 nodes on each level
    loss = HierarchicalBCELoss(tax, hier_penalty=0.1, distance_weight=1.0)
    z = [-1.0, -2.0, 1.0, -3.0]
    terms = loss(torch.tensor([z]), torch.tensor([0]))
    for name, value in hand_terms(z, 0).items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5), name


def test_hbce_hard_hand_computed(tax):
    loss = HierarchicalBCELoss(tax, penalty_mode="hard", hier_penalty=0.1, distance_weight=1.0)
    z = torch.tensor([[-1.0, -2.0, 1.0, -3.0], [-1.0, -2.0, -1.0, -3.0]])
    terms = loss(z, torch.tensor([0, 2]))
    # sample 0: a1 on while A off → one violation; deepest on = a1 = target → distance 0
    # sample 1: nothing on → deepest = root; distance(root, b) = 1; no violation
    assert terms["hier_penalty"].item() == pytest.approx(0.1 / 2)
    assert terms["distance_penalty"].item() == pytest.approx((0 + 1) / 2)
    assert terms["bce"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(z, tax.lineage_matrix()[[0, 2]]).item(), rel=1e-6
    )


def test_soft_penalty_has_gradient_where_child_outranks_parent_and_hard_has_none(tax):
    z0 = torch.tensor([[-1.0, -2.0, 1.0, -3.0]])  # child a1 (0.73) outranks its parent A (0.27)
    target = torch.tensor([0])
    grads = {}
    for mode in ("soft", "hard"):
        z = z0.clone().requires_grad_(True)
        terms = HierarchicalBCELoss(tax, penalty_mode=mode, hier_penalty=1.0, distance_weight=1.0)(z, target)
        total = sum(terms.values())
        base = torch.autograd.grad(terms["bce"], z, retain_graph=True)[0]
        if mode == "soft":
            hier = torch.autograd.grad(terms["hier_penalty"], z, retain_graph=True)[0][0]
            # d relu(p_a1 − p_A) = σ'(z_a1) at a1, −σ'(z_A) at A: raise the parent, lower the child
            ds = sig(1.0) * (1 - sig(1.0))
            assert torch.allclose(hier, torch.tensor([-ds, 0.0, ds, 0.0]), atol=1e-6)
        grads[mode] = torch.autograd.grad(total, z)[0] - base  # gradient of both penalties
    assert torch.count_nonzero(grads["soft"]) == 4  # the expected distance touches every node
    assert torch.count_nonzero(grads["hard"]) == 0  # thresholded penalties: zero gradient


def test_hbce_accepts_soft_targets_and_asl_and_data_penalties(tax):
    z = torch.tensor([[0.5, -1.0, 0.2, 0.1]])
    soft = torch.tensor([[0.5, 0.5, 0.0]])  # mixed a1 / a2
    loss = HierarchicalBCELoss(tax, distance_weight=1.0)
    terms = loss(z, soft)
    y = torch.tensor([[1.0, 0.0, 0.5, 0.5]])
    assert terms["bce"].item() == pytest.approx(F.binary_cross_entropy_with_logits(z, y).item(), rel=1e-6)
    asl = HierarchicalBCELoss(tax, base="asl")(z, torch.tensor([1]))
    assert "asl" in asl and asl["asl"].item() == pytest.approx(
        asymmetric_loss(z, tax.lineage_matrix()[[1]]).item(), rel=1e-6
    )
    data = HierarchicalBCELoss(tax, penalties="data", penalty_scale=0.3)
    assert torch.allclose(data.edge_penalty, torch.full((2,), 0.3), atol=1e-5)  # consistent labels → 1·scale
    with pytest.raises(ConfigError):
        HierarchicalBCELoss(tax, penalty_mode="fuzzy")
    with pytest.raises(ConfigError):
        HierarchicalBCELoss(tax, penalties="data", class_counts=[1, 2])

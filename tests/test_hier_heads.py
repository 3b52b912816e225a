"""Hierarchical-classification heads: embedding MLP, ArcFace margin, SphereMulti(Hier),
ArcFaceMultiHead decoding, and a short optimisation per head on clustered features (SPEC §3.2–3.3)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from imgcls.errors import ConfigError
from imgcls.models.heads.arcface import ArcFaceHead, additive_angular_margin, default_scale
from imgcls.models.heads.base import HeadOutput
from imgcls.models.heads.embedding import EmbeddingMLP
from imgcls.models.heads.multihead import ArcFaceMultiHead
from imgcls.models.heads.sphere import SphereMultiHead, SphereMultiHierHead
from imgcls.registry import HEADS
from imgcls.runtime.batch import Batch
from imgcls.taxonomy import taxonomy_from_parent_map

TREE = {
    "A": None,
    "B": None,
    "c": None,
    "a1": "A",
    "a2": "A",
    "a3": "A",
    "b1": "B",
    "b2": "B",
    "b21": "b2",
    "b22": "b2",
}
CLASSES = ["a1", "a2", "a3", "b1", "b21", "b22", "c"]


@pytest.fixture(scope="module")
def tax():
    return taxonomy_from_parent_map(TREE, CLASSES)


def clustered(tax, n=200, dim=16, seed=0):
    """Features whose class centres share the vectors of their ancestors (hierarchical clusters)."""
    g = torch.Generator().manual_seed(seed)
    node_vec = torch.randn(tax.num_nodes, dim, generator=g)
    centres = tax.lineage_matrix() @ node_vec
    y = torch.arange(n) % tax.num_classes
    return centres[y] + 0.5 * torch.randn(n, dim, generator=g), y


# --------------------------------------------------------------------------------------------- building blocks


def test_embedding_mlp_layers_and_final_activation():
    m = EmbeddingMLP(8, [16, 4], dropout=0.2, final_act="relu")
    kinds = [type(layer).__name__ for layer in m.net]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Dropout"] and m.out_features == 4
    m.eval()
    assert (m(torch.randn(32, 8)) >= 0).all()
    none = EmbeddingMLP(8, [16, 4], final_act="none").eval()
    assert [type(layer).__name__ for layer in none.net] == ["Linear", "ReLU", "Linear", "Dropout"]
    assert (none(torch.randn(64, 8)) < 0).any()
    ident = EmbeddingMLP(8, None)
    x = torch.randn(3, 8)
    assert ident.out_features == 8 and torch.equal(ident(x), x)
    for bad in ({"hidden": [0]}, {"dropout": 1.0}, {"final_act": "gelu"}):
        with pytest.raises(ConfigError):
            EmbeddingMLP(8, **{"hidden": [4], **bad})


def test_additive_angular_margin_values_and_fallback():
    m = 0.5
    cos = torch.tensor([[0.5, 0.5, -0.99]])
    mask = torch.tensor([[True, False, True]])
    out = additive_angular_margin(cos, mask, m)
    assert out[0, 0].item() == pytest.approx(math.cos(math.pi / 3 + m), abs=1e-6)
    assert out[0, 1].item() == pytest.approx(0.5)  # no margin where the mask is off
    # θ = arccos(−0.99) ≈ 3.0 > π − m → monotone fallback cos θ − m·sin m
    assert out[0, 2].item() == pytest.approx(-0.99 - m * math.sin(m), abs=1e-6)
    edge = torch.tensor([[1.0, -1.0]], requires_grad=True)
    additive_angular_margin(edge, torch.ones(1, 2, dtype=torch.bool), m).sum().backward()
    assert torch.isfinite(edge.grad).all()  # clamped arccos: no NaN at ±1


def test_arcface_margin_only_when_targets_given():
    torch.manual_seed(0)
    head = ArcFaceHead(8, 5, embedding=None)
    assert head.scale == default_scale(5) == 16.0 and ArcFaceHead(8, 50).scale == 30.0
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    plain = head(x).logits
    trained = head(x, y)
    margin = trained.extras["loss_logits"]
    assert torch.equal(trained.logits, plain)  # predicting logits never carry the margin
    rows = torch.arange(4)
    assert torch.all(margin[rows, y] < plain[rows, y])  # target logits lowered by the margin
    off = torch.ones_like(plain, dtype=torch.bool)
    off[rows, y] = False
    assert torch.allclose(margin[off], plain[off])
    cos = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(head.weight).T
    assert torch.allclose(plain, 16.0 * cos, atol=1e-5)  # inference: s·cos θ
    assert torch.allclose(head.predict(head(x)).sum(1), torch.ones(4))
    assert "ce" in head.loss(head(x, y), Batch(images=x, targets=y))


def test_sphere_multi_margin_on_positives_or_all_and_none_at_inference(tax):
    torch.manual_seed(0)
    x, y = torch.randn(3, 8), torch.tensor([0, 4, 6])
    pos = SphereMultiHead(8, 7, taxonomy=tax)
    every = SphereMultiHead(8, 7, taxonomy=tax, margin_on="all")
    every.load_state_dict(pos.state_dict())
    plain, with_pos, with_all = (
        pos(x).logits,
        pos(x, y).extras["loss_logits"],
        every(x, y).extras["loss_logits"],
    )
    assert torch.equal(pos(x, y).logits, plain) and torch.equal(every(x, y).logits, plain)
    positive = tax.lineage_matrix()[y].bool()
    assert torch.all(with_pos[positive] < plain[positive])
    assert torch.allclose(with_pos[~positive], plain[~positive])
    assert torch.all(with_all < plain)
    assert torch.allclose(every(x).logits, plain)  # no margin at inference in either mode
    out = pos(x)
    assert pos.output_space == "nodes"
    assert pos.predict_nodes(out).shape == (3, tax.num_nodes)
    assert torch.allclose(pos.predict(out).sum(1), torch.ones(3))
    with pytest.raises(ConfigError, match="needs a taxonomy"):
        SphereMultiHead(8, 7)
    with pytest.raises(ConfigError, match="taxonomy has 7 classes"):
        SphereMultiHead(8, 5, taxonomy=tax)
    with pytest.raises(ConfigError):
        SphereMultiHead(8, 7, taxonomy=tax, margin_on="negatives")


def test_heads_are_registered_and_declare_taxonomy():
    for name, cls, hier in [
        ("arcface", ArcFaceHead, False),
        ("sphere_multi", SphereMultiHead, True),
        ("sphere_multi_hier", SphereMultiHierHead, True),
        ("arcface_multihead", ArcFaceMultiHead, True),
    ]:
        assert HEADS.get(name) is cls
        assert ("taxonomy" in inspect.signature(cls).parameters) is hier


# --------------------------------------------------------------------------------------------- multihead


def test_multihead_levels_logits_and_loss_terms(tax):
    head = ArcFaceMultiHead(16, 7, taxonomy=tax, embedding=[32])
    assert head.level_sizes == [3, 6, 7] and head.scales == [16.0, 16.0, 16.0]
    x, y = clustered(tax, n=10)
    torch.manual_seed(1)
    out = head(x, y)
    assert set(out.extras) == {
        "level_1",
        "level_2",
        "level_3",
        "loss_level_1",
        "loss_level_2",
        "loss_level_3",
    }
    assert out.logits.shape == (10, 7)
    torch.manual_seed(1)  # the same dropout mask
    assert torch.equal(out.logits, head(x).logits)  # margin-free: the logits the prediction uses
    terms = head.loss(out, Batch(images=x, targets=y))
    assert set(terms) == {"ce_level_1", "ce_level_2", "ce_level_3"}
    soft = torch.nn.functional.one_hot(y, 7).float()
    soft_terms = head.loss(out, Batch(images=x, targets=y, soft_targets=soft))
    for k in terms:  # one-hot soft targets give the same per-level CE
        assert soft_terms[k].item() == pytest.approx(terms[k].item(), rel=1e-5)


def test_multihead_decoding_leaf_top_down_joint():
    t = taxonomy_from_parent_map(
        {"A": None, "B": None, "a1": "A", "a2": "A", "b1": "B", "b2": "B"}, ["a1", "a2", "b1", "b2"]
    )
    level1 = torch.tensor([[2.0, 0.0]])  # A strongly
    level2 = torch.tensor([[0.0, 0.1, 3.0, 0.0]])  # b1 strongest leaf
    out = HeadOutput(
        logits=level2, embeddings=torch.zeros(1, 2), extras={"level_1": level1, "level_2": level2}
    )
    probs = {}
    for decode in ("leaf", "top_down", "joint"):
        head = ArcFaceMultiHead(2, 4, taxonomy=t, decode=decode)
        probs[decode] = head.predict(out)[0]
        assert probs[decode].sum().item() == pytest.approx(1.0)
    assert probs["leaf"].argmax() == 2  # b1
    assert torch.allclose(probs["leaf"], level2.softmax(1)[0])
    assert probs["top_down"].argmax() == 1  # A chosen at level 1 → best of its children: a2
    assert probs["top_down"][2:].sum() == 0
    joint = level1.log_softmax(1)[0][[0, 0, 1, 1]] + level2.log_softmax(1)[0]
    assert torch.allclose(probs["joint"], joint.softmax(0), atol=1e-6)
    with pytest.raises(ConfigError):
        ArcFaceMultiHead(2, 4, taxonomy=t, decode="beam")
    with pytest.raises(ConfigError):
        ArcFaceMultiHead(2, 4, taxonomy=t, level_weights=[1.0])


# --------------------------------------------------------------------------------------------- optimisation


HEAD_CASES = [
    ("arcface", {}),
    ("sphere_multi", {}),
    ("sphere_multi", {"loss": "asl", "margin_on": "all"}),
    ("sphere_multi_hier", {}),
    ("sphere_multi_hier", {"penalty_mode": "hard", "loss": "asl", "penalties": "data"}),
    ("arcface_multihead", {"decode": "top_down"}),
]


@pytest.mark.parametrize(("name", "args"), HEAD_CASES)
def test_short_optimisation_lowers_loss(tax, name, args):
    torch.manual_seed(0)
    x, y = clustered(tax)
    cls = HEADS.get(name)
    kwargs = {"taxonomy": tax} if "taxonomy" in inspect.signature(cls).parameters else {}
    head = cls(in_features=16, num_classes=7, embedding=[32], **kwargs, **args)
    batch = Batch(images=x, targets=y)

    def total() -> float:
        head.eval()
        with torch.no_grad():
            return float(sum(head.loss(head(x, y), batch).values()))

    before = total()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for step in range(50):
        head.train()
        idx = torch.randperm(200)[:64] if step % 2 else torch.arange(step % 4 * 50, step % 4 * 50 + 50)
        b = Batch(images=x[idx], targets=y[idx])
        loss = sum(head.loss(head(b.images, b.targets), b).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = total()
    assert after < 0.7 * before, (before, after)
    head.eval()
    with torch.no_grad():
        probs = head.predict(head(x))
    assert probs.shape == (200, 7) and torch.allclose(probs.sum(1), torch.ones(200), atol=1e-5)
    assert (probs.argmax(1) == y).float().mean() > 0.8


# --------------------------------------------------------------------------------------------- thresholded prediction


def tiny_predictor(tax, head: str):
    from imgcls.config import ModelConfig
    from imgcls.evaluation.predict import Predictor
    from imgcls.models.classifier import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone="adaptive_cnn", backbone_args={"layout": "mnist", "width_mult": 0.25}, head=head
    )
    model = build_model(cfg, tax.num_classes, 1, taxonomy=tax)
    meta = {"image_size": 28, "channels": 1, "mean": [0.5], "std": [0.5], "model_size": 28}
    return Predictor(model, meta, list(tax.class_names), tax)


def test_threshold_prediction_uses_the_node_space_heads_own_node_probabilities(tax, monkeypatch):
    predictor = tiny_predictor(tax, "sphere_multi")
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    node = {name: i for i, name in enumerate(tax.nodes)}
    fixed = torch.zeros(2, tax.num_nodes)
    fixed[:, node["B"]], fixed[:, node["b2"]], fixed[:, node["b21"]] = 0.95, 0.85, 0.5
    monkeypatch.setattr(predictor.model.head, "predict_nodes", lambda out: fixed[: out.logits.shape[0]])
    rows = predictor.predict(list(images), top_k=2, threshold=0.8)
    for row in rows:
        assert row["hierarchy"]["path"] == [tax.root, "B", "b2"]  # b21 (0.5) is below τ: stop at b2
        assert row["hierarchy"]["probability"] == pytest.approx(0.85)


def test_threshold_prediction_of_a_flat_head_sums_class_probabilities(tax):
    predictor = tiny_predictor(tax, "linear")
    images = list(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8))
    probs = predictor.predict_proba(images)
    rows = predictor.predict(images, threshold=0.0)  # τ = 0: always down to a leaf class
    for p, row in zip(probs, rows, strict=True):
        leaf = row["hierarchy"]["path"][-1]
        assert leaf in tax.class_names
        # a flat head's node probability is its summed class probabilities: for a leaf, the class's own
        assert row["hierarchy"]["probability"] == pytest.approx(
            float(p[tax.class_names.index(leaf)]), abs=1e-6
        )
    top = predictor.predict(images, threshold=1.0)  # τ = 1: no node below the root is that sure
    assert all(r["hierarchy"]["path"] == [tax.root] for r in top)

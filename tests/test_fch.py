"""Tests of the FCH head (seed 000, SPEC §1.4–1.5): adjacency builders, Chebyshev filter, inference modes,
structure loss, gradients, mixed precision and a short optimisation on synthetic clusters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgcls.errors import ConfigError
from imgcls.models.heads import graph
from imgcls.models.heads.fch import (
    FCHHead,
    embedding_relations,
    relation_targets,
    structure_loss,
)
from imgcls.registry import HEADS
from imgcls.runtime.batch import Batch

ADJACENCIES = ["rbf", "knn", "attention", "class_label", "cosine_topk"]
#: the seed's p per variant (RBF p=1, NN p=4, Att p=5, CL p=1); the public code's graph with p=1
SEED_ORDER = {"rbf": 1, "knn": 4, "attention": 5, "class_label": 1, "cosine_topk": 1}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: intra-op threads only add contention on a shared machine (≈100× slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def clustered(n: int, dim: int = 16, classes: int = 4, seed: int = 0, spread: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234))
    y = torch.arange(n) % classes
    x = centres[y] + spread * torch.randn(n, dim, generator=g)
    return x, y


def make_head(adjacency: str, dim: int = 16, classes: int = 4, **kw) -> FCHHead:
    torch.manual_seed(0)
    kw.setdefault("order", SEED_ORDER[adjacency])
    kw.setdefault("graph_dropout", 0.0)
    kw.setdefault("dropout", 0.0)
    kw.setdefault("knn_k", 3)
    kw.setdefault("memory_size", 32)
    return FCHHead(dim, classes, adjacency=adjacency, **kw)


def batch_of(y: torch.Tensor, soft: torch.Tensor | None = None) -> Batch:
    return Batch(images=torch.zeros(len(y), 1, 2, 2), targets=y, soft_targets=soft)


def square_adjacency(kind: str, x: torch.Tensor, y: torch.Tensor, k: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    if kind == "rbf":
        return graph.rbf_adjacency(x)
    if kind == "knn":
        return graph.knn_adjacency(x, k)
    if kind == "attention":
        wq, wk = 0.05 * torch.randn(x.shape[1], 8), 0.05 * torch.randn(x.shape[1], 8)
        return graph.attention_adjacency(x, x @ wq, x @ wk, k)
    if kind == "class_label":
        return graph.class_label_adjacency(y)
    return graph.cosine_topk_adjacency(x, k=1, threshold=0.2)


# ------------------------------------------------------------------------------------------- adjacency


@pytest.mark.parametrize("kind", ADJACENCIES)
def test_adjacency_is_symmetric_nonnegative_with_zero_diagonal(kind):
    x, y = clustered(12)
    a = square_adjacency(kind, x, y)
    assert a.shape == (12, 12)
    assert torch.allclose(a, a.T, atol=1e-7)
    assert (a >= 0).all()
    assert torch.all(a.diagonal() == 0)
    assert a.sum() > 0


@pytest.mark.parametrize("kind", ["knn", "attention"])
def test_knn_and_attention_zero_outside_the_neighbourhood(kind):
    x, y = clustered(12)
    k = 3
    a = square_adjacency(kind, x, y, k=k)
    nearest = graph.topk_mask(graph.pairwise_sq_dists(x), k, largest=False, exclude_diagonal=True)
    allowed = nearest | nearest.T
    assert torch.all(a[~allowed] == 0)
    assert torch.all(a[allowed] > 0)
    assert torch.equal(nearest.sum(dim=1), torch.full((12,), k))


def test_attention_rows_are_softmax_before_symmetrisation():
    x, y = clustered(10)
    a = square_adjacency("attention", x, y, k=3)
    # each row-softmax sums to 1, and (P + Pᵀ)/2 keeps the total mass
    assert torch.isclose(a.sum(), torch.tensor(10.0), atol=1e-5)


def test_rbf_adjacency_hand_computed():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    # squared distances 9, 16, 25 → median 16 = σ²
    a01, a02, a12 = math.exp(-9 / 32), math.exp(-16 / 32), math.exp(-25 / 32)
    expected = torch.tensor([[0.0, a01, a02], [a01, 0.0, a12], [a02, a12, 0.0]])
    assert torch.allclose(graph.rbf_adjacency(x), expected, atol=1e-6)
    assert torch.allclose(graph.rbf_adjacency(x, sigma=1.0)[0, 1], torch.tensor(math.exp(-4.5)))


@pytest.mark.parametrize("kind", ["rbf", "knn"])
def test_median_bandwidth_is_scale_invariant_and_detached(kind):
    x, y = clustered(16)
    a = square_adjacency(kind, x, y)
    assert torch.allclose(square_adjacency(kind, 10.0 * x, y), a, atol=1e-5)
    x.requires_grad_(True)
    sigma_sq = graph.median_sq_distance(graph.pairwise_sq_dists(x))
    assert not sigma_sq.requires_grad


def test_class_label_adjacency_exact():
    a = graph.class_label_adjacency(torch.tensor([0, 1, 0, 2, 1]))
    expected = torch.tensor(
        [
            [0, 0, 1, 0, 0],
            [0, 0, 0, 0, 1],
            [1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 1, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(a, expected)


def test_cosine_topk_matches_hand_computed_public_code_graph():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.8], [0.0, 1.0], [-1.0, 0.1]])
    c01 = 1.0 / math.sqrt(1.64)  # node 0 and 1 pick each other
    c12 = 0.8 / math.sqrt(1.64)  # node 2 picks 1; max-symmetrised
    # node 3's best neighbour is node 2 with cos 0.0995 < threshold 0.2 → isolated
    expected = torch.tensor([[0, c01, 0, 0], [c01, 0, c12, 0], [0, c12, 0, 0], [0, 0, 0, 0]])
    assert torch.allclose(graph.cosine_topk_adjacency(x, k=1, threshold=0.2), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ADJACENCIES)
def test_single_node_graph_is_identity_after_self_loops(kind):
    x, y = clustered(1)
    a = square_adjacency(kind, x, y)
    assert torch.equal(a, torch.zeros(1, 1))
    a_hat, _ = graph.normalize_adjacency(a, add_self_loops=True)
    assert torch.equal(a_hat, torch.ones(1, 1))


def test_isolated_node_without_self_loops_has_zero_row_and_finite_gradient():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [50.0, 50.0]], requires_grad=True)
    a = graph.knn_adjacency(x, k=1, sigma=1.0)  # node 2's nearest is node 1 with weight ≈ 0
    a_hat, _ = graph.normalize_adjacency(a * (a > 1e-6), add_self_loops=False)
    assert torch.all(a_hat[2] == 0)
    a_hat.sum().backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------- Chebyshev

# weighted path 0 -1- 1 -3- 2 -1- 3: degrees 1, 4, 4, 1 → Â = D^-1/2 A D^-1/2 below; L̃ = −Â
PATH_A = torch.tensor(
    [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 3.0, 0.0], [0.0, 3.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]]
)
PATH_T1 = -torch.tensor(
    [[0.0, 0.5, 0.0, 0.0], [0.5, 0.0, 0.75, 0.0], [0.0, 0.75, 0.0, 0.5], [0.0, 0.0, 0.5, 0.0]]
)
# T2 = 2 L̃² − I, worked out by hand
PATH_T2 = torch.tensor(
    [[-0.5, 0.0, 0.75, 0.0], [0.0, 0.625, 0.0, 0.75], [0.75, 0.0, 0.625, 0.0], [0.0, 0.75, 0.0, -0.5]]
)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_chebyshev_terms_on_hand_computed_4_node_graph(order):
    a_hat, _ = graph.normalize_adjacency(PATH_A, add_self_loops=False)
    assert torch.allclose(a_hat, -PATH_T1)
    terms = graph.chebyshev_terms(a_hat, torch.eye(4), order)  # X = I → T_k(L̃) itself
    expected = [torch.eye(4), PATH_T1, PATH_T2][: order + 1]
    assert len(terms) == order + 1
    for got, want in zip(terms, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    # with features: T_k(L̃) X
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5], [-2.0, 1.0]])
    for got, want in zip(graph.chebyshev_terms(a_hat, x, order), expected, strict=True):
        assert torch.allclose(got, want @ x, atol=1e-6)


def test_chebyshev_on_4_cycle_with_self_loops():
    cycle = torch.tensor([[0.0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]])
    a_hat, _ = graph.normalize_adjacency(cycle, add_self_loops=True)  # (A + I)/3
    _, t1, t2 = graph.chebyshev_terms(a_hat, torch.eye(4), 2)
    assert torch.allclose(t1, -(cycle + torch.eye(4)) / 3)
    # (A + I)² = 2J + I  →  T2 = 2(2J + I)/9 − I = 4J/9 − 7I/9
    assert torch.allclose(t2, 4 * torch.ones(4, 4) / 9 - 7 * torch.eye(4) / 9, atol=1e-6)


def test_order_zero_head_ignores_the_graph():
    x, _ = clustered(8)
    head = make_head("rbf", order=0).eval()
    alone = torch.cat([head(x[i : i + 1]).logits for i in range(8)])
    assert torch.allclose(head(x).logits, alone, atol=1e-5)


# ------------------------------------------------------------------------------------------- inference modes


@pytest.mark.parametrize("add_self_loops", [True, False])
@pytest.mark.parametrize("order", [1, 3])
def test_self_mode_is_the_per_sample_linear_map(order, add_self_loops):
    x, _ = clustered(6)
    head = make_head("knn", order=order, add_self_loops=add_self_loops, eval_graph="self").eval()
    w, b, e = head.graph_conv.weight, head.graph_conv.bias, head.embedding_dim
    xe = F.gelu(x)
    # with self-loops L̃ = −I → T_k = (−1)^k X; without, L̃ = 0 → T_k = T_k(0) X = cos(kπ/2) X
    coef = [(-1) ** k if add_self_loops else round(math.cos(k * math.pi / 2)) for k in range(order + 1)]
    refined = sum(c * xe @ w[:, k * e : (k + 1) * e].T for k, c in enumerate(coef)) + b
    out = head(x)
    assert head.inference_mode == "self"
    assert torch.allclose(out.embeddings, F.gelu(refined), atol=1e-5)
    assert torch.allclose(out.logits, head.classifier(F.gelu(refined)), atol=1e-5)


@pytest.mark.parametrize("kind", ADJACENCIES)
def test_memory_mode_prediction_independent_of_the_rest_of_the_batch(kind):
    head = make_head(kind, order=2, memory_size=24)
    head.train()
    for seed in range(3):  # 3 × 12 samples through a 24-slot FIFO
        x, y = clustered(12, seed=seed)
        head(x, y)
    assert int(head.memory_filled) == 24 and int(head.memory_ptr) == 36 % 24
    head.eval()
    head.eval_graph = "memory"
    assert head.inference_mode == "memory"
    x, _ = clustered(9, seed=7)
    probe = x[:1]
    together = head(x).logits[0]
    other = head(torch.cat([probe, clustered(5, seed=8)[0]])).logits[0]
    alone = head(probe).logits[0]
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(other, alone, atol=1e-5)
    # the bank lives in the state_dict: a fresh head predicts the same
    fresh = make_head(kind, order=2, memory_size=24, eval_graph="memory")
    fresh.load_state_dict(head.state_dict())
    assert torch.allclose(fresh.eval()(probe).logits[0], alone, atol=1e-6)
    # and the bank changes the prediction compared with the identity graph
    head.eval_graph = "self"
    assert not torch.allclose(head(probe).logits[0], alone, atol=1e-4)


def test_memory_with_empty_bank_equals_self_mode():
    x, _ = clustered(5)
    head = make_head("rbf", order=2).eval()
    head.eval_graph = "memory"
    memory = head(x).logits
    head.eval_graph = "self"
    assert torch.allclose(memory, head(x).logits, atol=1e-6)


def test_memory_fifo_keeps_the_newest_samples():
    head = make_head("rbf", memory_size=4, embed_activation="identity")
    head.update_memory(torch.arange(6.0)[:, None].expand(6, 16), torch.arange(6))
    assert torch.equal(head.memory_labels, torch.tensor([2, 3, 4, 5]))
    assert torch.equal(head.memory_features[:, 0], torch.tensor([2.0, 3.0, 4.0, 5.0]))
    assert int(head.memory_filled) == 4 and int(head.memory_ptr) == 0
    head.update_memory(torch.full((1, 16), 6.0), torch.tensor([6]))  # replaces the oldest
    assert torch.equal(head.memory_labels, torch.tensor([6, 3, 4, 5]))
    head.reset_memory()
    assert int(head.memory_filled) == 0


def test_batch_mode_prediction_depends_on_the_batch():
    x, _ = clustered(12)
    head = make_head("rbf").eval()
    assert head.inference_mode == "batch"
    assert not torch.allclose(head(x).logits[:1], head(x[:1]).logits, atol=1e-4)


@pytest.mark.parametrize("mode", ["batch", "self", "memory"])
@pytest.mark.parametrize("kind", ADJACENCIES)
def test_batch_of_one_works_in_every_mode(kind, mode):
    head = make_head(kind)
    x, y = clustered(8)
    head.train()
    out = head(x[:1], y[:1])  # a training batch of one sample too
    terms = head.loss(out, batch_of(y[:1]))
    assert all(torch.isfinite(t) for t in terms.values())
    head(x, y)
    head.eval()
    head.eval_graph = mode
    out = head(x[:1])
    assert out.logits.shape == (1, 4) and torch.isfinite(out.logits).all()
    assert torch.allclose(head.predict(out).sum(), torch.tensor(1.0))
    if mode != "memory":  # a single node's graph is A = I: the same as the identity graph
        head.eval_graph = "self"
        assert torch.allclose(head(x[:1]).logits, out.logits, atol=1e-6)


# ------------------------------------------------------------------------------------------- CL-FCH


def test_cl_fch_refuses_labels_at_evaluation():
    x, y = clustered(8)
    head = make_head("class_label").eval()
    with pytest.raises(ValueError, match="must not see labels"):
        head(x, y)
    head.train()
    head(x, y)  # training uses the true labels


def test_cl_fch_eval_graph_comes_from_auxiliary_pseudo_labels():
    x, y = clustered(12)
    head = make_head("class_label", memory_size=0).eval()
    out = head(x)
    pseudo = out.extras["aux_logits"].argmax(dim=-1)
    assert not torch.equal(pseudo, y)  # the untrained auxiliary head disagrees with the labels
    head.train()  # dropout is 0, so train/eval differ only in where the labels come from
    assert torch.allclose(out.logits, head(x, pseudo).logits, atol=1e-6)
    assert not torch.allclose(out.logits, head(x, y).logits, atol=1e-3)


def test_cl_fch_rbf_fallback_uses_the_rbf_graph():
    x, _ = clustered(10)
    cl = make_head("class_label", cl_test_graph="rbf").eval()
    assert cl.aux_head is None
    rbf = make_head("rbf", order=1)
    rbf.load_state_dict(cl.state_dict())
    assert torch.allclose(cl(x).logits, rbf.eval()(x).logits, atol=1e-6)


def test_cl_fch_memory_test_graph_defaults_to_memory_mode():
    head = make_head("class_label", cl_test_graph="memory")
    assert head.inference_mode == "memory"
    with pytest.raises(ConfigError, match="eval_graph: memory"):
        make_head("class_label", cl_test_graph="memory", eval_graph="batch")


def test_cl_fch_aux_loss_is_a_named_term():
    x, y = clustered(8)
    head = make_head("class_label")
    terms = head.loss(head(x, y), batch_of(y))
    assert set(terms) == {"ce", "structure", "aux_ce"}
    expected = F.cross_entropy(head.aux_head(F.gelu(x)), y)
    assert torch.allclose(terms["aux_ce"], expected, atol=1e-6)


# ------------------------------------------------------------------------------------------- structure loss


@pytest.mark.parametrize("distance", ["mse", "bce"])
def test_structure_loss_zero_when_relations_match_labels(distance):
    y = torch.tensor([0, 1, 0, 2, 1, 1])
    target = relation_targets(y)
    assert structure_loss(target.clone(), target, distance).item() == pytest.approx(0.0, abs=1e-5)
    wrong = 1.0 - target
    assert structure_loss(wrong, target, distance) > 0.5


def test_structure_loss_zero_for_embeddings_that_encode_the_labels():
    v = torch.tensor([1.0, 2.0, -0.5])
    y = torch.tensor([0, 1, 1, 0])
    h = torch.stack([v, -v, -v, v])  # same class: cos 1 → 1; different: cos −1 → 0
    relations = embedding_relations(h, "cosine")
    assert structure_loss(relations, relation_targets(y)).item() == pytest.approx(0.0, abs=1e-7)
    # and the head's term is λ times it
    head = make_head("rbf", structure_weight=0.5, sp_similarity="cosine")
    out = head(torch.randn(4, 16), y)
    out.embeddings = h
    assert head.loss(out, batch_of(y))["structure"].item() == pytest.approx(0.0, abs=1e-7)


def test_structure_loss_mse_value_and_bce_pos_weight():
    relations = torch.tensor([[1.0, 0.5, 0.2], [0.5, 1.0, 0.9], [0.2, 0.9, 1.0]])
    y = torch.tensor([0, 0, 1])
    target = relation_targets(y)
    # pairs (0,1) same, (0,2) and (1,2) different: ((0.5−1)² + 0.2² + 0.9²)·2 / 6
    assert structure_loss(relations, target).item() == pytest.approx((0.25 + 0.04 + 0.81) / 3)
    # BCE with pos-weight #neg/#pos = 4/2 = 2
    bce = -(2 * math.log(0.5) + math.log(0.8) + math.log(0.1)) / 3
    assert structure_loss(relations, target, "bce").item() == pytest.approx(bce, rel=1e-5)


def test_soft_relation_targets_after_mixup():
    soft = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]])
    expected = torch.tensor([[0.58, 0.3, 0.35], [0.3, 1.0, 0.0], [0.35, 0.0, 0.5]])
    assert torch.allclose(relation_targets(soft.argmax(1), soft), expected)
    head = make_head("rbf")
    x, _ = clustered(3)
    out = head(x, soft.argmax(1))
    hard = head.loss(out, batch_of(soft.argmax(1)))["structure"]
    mixed = head.loss(out, batch_of(soft.argmax(1), soft))["structure"]
    assert torch.isfinite(mixed) and not torch.isclose(hard, mixed)


def test_structure_weight_zero_gives_ce_only():
    x, y = clustered(8)
    head = make_head("rbf", structure_weight=0.0)
    terms = head.loss(head(x, y), batch_of(y))
    assert set(terms) == {"ce"}


# ------------------------------------------------------------------------------------------- gradients & training


@pytest.mark.parametrize("kind", ADJACENCIES)
def test_gradients_reach_input_features_and_a_backbone(kind):
    torch.manual_seed(0)
    backbone = nn.Linear(8, 16)
    head = make_head(kind)
    images = torch.randn(10, 8, requires_grad=True)
    y = torch.arange(10) % 4
    out = head(backbone(images), y)
    sum(head.loss(out, batch_of(y)).values()).backward()
    for grad in (images.grad, backbone.weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert head.graph_conv.weight.grad.abs().sum() > 0
    if kind == "attention":  # the attention graph itself is learned
        assert head.query.weight.grad.abs().sum() > 0 and head.key.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ADJACENCIES)
def test_short_optimisation_on_clusters_lowers_the_loss(kind):
    head = make_head(kind)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    x_eval, y_eval = clustered(32, seed=100, spread=2.0)

    def total() -> float:
        with torch.no_grad():
            return float(sum(head.loss(head(x_eval, y_eval), batch_of(y_eval)).values()))

    before = total()
    for step in range(30):
        x, y = clustered(32, seed=step, spread=2.0)
        loss = sum(head.loss(head(x, y), batch_of(y)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert total() < 0.6 * before
    accuracy = (head.eval()(x_eval).logits.argmax(1) == y_eval).float().mean()
    assert accuracy >= 0.75


def test_fp32_graph_under_bf16_autocast():
    x, y = clustered(16)
    head = make_head("attention", order=2)
    reference = head(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x, y)
        terms = head.loss(out, batch_of(y))
    assert out.embeddings.dtype == torch.float32
    assert out.extras["unrefined"].dtype == torch.float32
    assert torch.allclose(out.embeddings, reference.embeddings, atol=1e-5)
    assert torch.allclose(out.logits.float(), reference.logits, atol=0.1)
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values())
    projected = make_head("rbf", proj=True, proj_dim=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert projected(x, y).embeddings.dtype == torch.float32


# ------------------------------------------------------------------------------------------- plumbing


def test_registered_and_output_contract():
    head = HEADS.build("fch", in_features=16, num_classes=4, adjacency="nn", order=4)
    assert isinstance(head, FCHHead) and head.adjacency == "knn" and head.knn_k == 8
    x, y = clustered(6)
    out = head(x, y)
    assert out.logits.shape == (6, 4) and out.embeddings.shape == (6, 16)
    assert torch.equal(out.extras["unrefined"], F.gelu(x))
    assert head.graph_conv.in_features == 5 * 16  # p = 4 → 5 Chebyshev terms


def test_gcn_conv_is_the_public_code_layer():
    x, _ = clustered(6)
    head = make_head(
        "cosine_topk", conv="gcn", order=1, embed_activation="identity", graph_activation="identity"
    )
    a = graph.cosine_topk_adjacency(x, k=1, threshold=0.2)
    a_hat, _ = graph.normalize_adjacency(a, add_self_loops=True)
    assert torch.allclose(head.eval()(x).embeddings, head.graph_conv(a_hat @ x), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adjacency": "cosine"}, "adjacency"),
        ({"conv": "gcn", "order": 3}, "order: 1"),
        ({"order": -1}, "order"),
        ({"eval_graph": "memory", "memory_size": 0}, "memory_size"),
        ({"eval_graph": "test"}, "eval_graph"),
        ({"sp_distance": "l1"}, "sp_distance"),
        ({"proj_dim": 8}, "proj: true"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FCHHead(16, 4, **kwargs)


def test_memory_bank_state_dict_and_checkpoints_written_before_the_bank_module():
    head = make_head("rbf", memory_size=4)
    head.update_memory(torch.randn(3, 16), torch.tensor([1, 2, 3]))
    state = head.state_dict()
    assert {"memory.features", "memory.labels", "memory.ptr", "memory.filled"} <= set(state)
    legacy = {k.replace("memory.", "memory_"): v for k, v in state.items()}  # the former buffer names
    fresh = make_head("rbf", memory_size=4)
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh.memory_features, head.memory_features) and int(fresh.memory_filled) == 3
    # and through the run loader's checked load
    from imgcls.models.classifier import Classifier
    from imgcls.runs import load_weights

    model, again = Classifier(nn.Identity(), make_head("rbf", memory_size=4)), Classifier(nn.Identity(), head)
    load_weights(model, {f"head.{k}": v for k, v in legacy.items()}, "checkpoint")
    assert torch.equal(model.head.memory_labels[:3], again.head.memory_labels[:3])

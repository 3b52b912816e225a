"""Hand-computed exact values where property tests (symmetry, batch independence, resume consistency) let a
realistic one-line bug through (issue 16): the memory-mode Chebyshev terms with a filled bank, the kNN and
attention adjacencies' edge values after symmetrisation, FCH's structure term times its weight, the EMA
update, and the number of ECE bins."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from imgcls.engine.averaging import EMACallback
from imgcls.evaluation.metrics import classification_metrics
from imgcls.losses.structure import relation_targets, structure_loss
from imgcls.models.heads import graph
from imgcls.models.heads.fch import FCHHead
from imgcls.runtime.batch import Batch


# ------------------------------------------------------------------------------- (1) memory-mode Chebyshev terms
def test_bank_chebyshev_terms_with_a_filled_bank_hand_computed():
    # bank: 2 nodes, features 1 and 3, one edge of weight 1; with self-loops Â_bank = [[.5, .5], [.5, .5]]
    bank = torch.tensor([[1.0], [3.0]])
    bank_hat, bank_inv_sqrt = graph.normalize_adjacency(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert torch.allclose(bank_inv_sqrt, torch.full((2,), 2**-0.5))
    bank_terms = graph.chebyshev_terms(bank_hat, bank, 2)
    # T1 = −Â B = [−2, −2]; T2 = −2 Â T1 − T0 = [4 − 1, 4 − 3]
    assert torch.allclose(torch.cat(bank_terms, 1), torch.tensor([[1.0, -2.0, 3.0], [3.0, -2.0, 1.0]]))
    # query a = 2 with an edge of weight 1 to bank node 0; query b = −1 with edges 0.5 to both
    x = torch.tensor([[2.0], [-1.0]])
    rows = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    terms = graph.bank_chebyshev_terms(x, rows, bank_terms, bank_inv_sqrt, add_self_loops=True)
    # both queries have degree 1 + 1 = 2: self weight 1/2; cross weights (1/√2)·r·(1/√2) = r/2
    # a: T1 = −(½·2 + ½·1) = −1.5;  T2 = 2·(−(½·(−1.5) + ½·(−2))) − 2 = 1.5
    # b: T1 = −(½·(−1) + ¼·(1 + 3)) = −0.5;  T2 = 2·(−(½·(−0.5) + ¼·(−2 − 2))) + 1 = 3.5
    expected = torch.tensor([[2.0, -1.5, 1.5], [-1.0, -0.5, 3.5]])
    assert torch.allclose(torch.cat(terms, 1), expected, atol=1e-6)


def test_fch_memory_mode_refines_with_the_filled_bank_hand_computed():
    """The head's memory mode end to end: a 1-D embedding, fixed σ, the bank filled through ``update_memory``,
    and a graph convolution whose weights read the Chebyshev terms off one by one."""
    sigma_sq = 2 / math.log(2)  # bank distance² 4 → weight exp(−4/(2σ²)) = 1/2
    head = FCHHead(1, 2, order=2, sigma=math.sqrt(sigma_sq), embed_activation="identity", graph_activation="identity",
                   graph_dropout=0.0, dropout=0.0, eval_graph="memory", memory_size=4)  # fmt: skip
    with torch.no_grad():
        head.graph_conv.weight.copy_(torch.tensor([[1.0, 10.0, 100.0]]))  # refined = T0 + 10·T1 + 100·T2
        head.graph_conv.bias.zero_()
    head.update_memory(torch.tensor([[1.0], [3.0]]), torch.tensor([0, 1]))
    refined = head.eval()(torch.tensor([[2.0]])).embeddings.item()
    # bank graph: A = [[0, ½], [½, 0]] + I → degrees 3/2, Â = (A + I)/(3/2)
    d_bank = 1.5
    t1_bank = [-(1.0 * 1 + 0.5 * 3) / d_bank, -(0.5 * 1 + 1.0 * 3) / d_bank]
    # the query (2) is at distance 1 from both bank nodes: weight w = exp(−1/(2σ²)) to each; degree 1 + 2w
    w = math.exp(-1 / (2 * sigma_sq))
    inv_q, inv_b = (1 + 2 * w) ** -0.5, d_bank**-0.5
    self_weight, cross = inv_q**2, inv_q * w * inv_b

    def laplacian(own: float, bank: list[float]) -> float:
        return -(self_weight * own + cross * sum(bank))

    t0 = 2.0
    t1 = laplacian(t0, [1.0, 3.0])
    t2 = 2 * laplacian(t1, t1_bank) - t0
    assert refined == pytest.approx(t0 + 10 * t1 + 100 * t2, rel=1e-5)


# ------------------------------------------------------------------------------- (2) adjacency edge values
def test_knn_adjacency_edge_values_after_max_symmetrisation():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # k = 1 nearest: 0→1 (d² 1), 1→0 (1), 2→1 (4), 3→2 (16); an edge chosen by one end keeps its full weight
    e = math.exp
    expected = torch.tensor(
        [
            [0.0, e(-1 / 2), 0.0, 0.0],
            [e(-1 / 2), 0.0, e(-4 / 2), 0.0],
            [0.0, e(-4 / 2), 0.0, e(-16 / 2)],
            [0.0, 0.0, e(-16 / 2), 0.0],
        ]
    )
    assert torch.allclose(graph.knn_adjacency(x, k=1, sigma=1.0), expected, atol=1e-7)
    # median heuristic: off-diagonal d² are 1, 9, 49, 4, 36, 16 (twice each); torch's median of an even count
    # is the lower middle value, 9 → weights exp(−d²/18)
    expected_median = expected.clone()
    nz = expected > 0
    d2 = torch.tensor([[0, 1, 9, 49], [1, 0, 4, 36], [9, 4, 0, 16], [49, 36, 16, 0]], dtype=torch.float32)
    expected_median[nz] = torch.exp(-d2[nz] / 18)
    assert torch.allclose(graph.knn_adjacency(x, k=1), expected_median, atol=1e-7)


def test_attention_adjacency_edge_values_after_mean_symmetrisation():
    x = torch.tensor([[0.0], [1.0], [3.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    k = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # k = 2 neighbours each (all others); scores q_i·k_j/√2, row softmax, then (P + Pᵀ)/2
    s = (q @ k.T) / math.sqrt(2)
    p = torch.zeros(3, 3)
    for i in range(3):
        others = [j for j in range(3) if j != i]
        z = sum(math.exp(s[i, j]) for j in others)
        for j in others:
            p[i, j] = math.exp(s[i, j]) / z
    assert p[0, 1] == pytest.approx(1 / (1 + math.exp(1 / math.sqrt(2))))  # row 0: scores 0 and 1/√2
    assert torch.allclose(graph.attention_adjacency(x, q, k, 2), (p + p.T) / 2, atol=1e-6)
    # k = 1: node 0 and 1 choose each other, node 2 chooses 1 — P = one-hot rows, mean-symmetrised
    one = graph.attention_adjacency(x, q, k, 1)
    assert torch.allclose(one, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.5, 0.0]]))


# ------------------------------------------------------------------------------- (3) FCH structure term
def test_fch_structure_term_is_weight_times_the_loss_hand_computed():
    y = torch.tensor([0, 0, 1])
    batch = Batch(images=torch.zeros(3, 1, 1, 1), targets=y)
    head = FCHHead(4, 2, structure_weight=0.5, sp_similarity="cosine", graph_dropout=0.0, dropout=0.0)
    out = head(torch.randn(3, 4), y)
    # cosine relations (1 + cos)/2 of h: pairs (0,1) cos 0 → ½ (same class), (0,2) cos 1 → 1, (1,2) → ½
    out.embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    mse = ((0.5 - 1) ** 2 + (1 - 0) ** 2 + (0.5 - 0) ** 2) / 3
    assert head.loss(out, batch)["structure"].item() == pytest.approx(0.5 * mse)
    # RBF relations with the (lower) median bandwidth: d² 1, 9, 4 → σ² = 4, S = exp(−d²/8)
    head.sp_similarity = "rbf"
    out.embeddings = torch.tensor([[0.0], [1.0], [3.0]])
    mse = ((math.exp(-1 / 8) - 1) ** 2 + math.exp(-9 / 8) ** 2 + math.exp(-4 / 8) ** 2) / 3
    assert head.loss(out, batch)["structure"].item() == pytest.approx(0.5 * mse, rel=1e-6)
    # bce: pos-weight #neg/#pos = 4/2 over the same relations
    head.sp_distance = "bce"
    s01, s02, s12 = math.exp(-1 / 8), math.exp(-9 / 8), math.exp(-4 / 8)
    bce = -(2 * math.log(s01) + math.log(1 - s02) + math.log(1 - s12)) / 3
    assert head.loss(out, batch)["structure"].item() == pytest.approx(0.5 * bce, rel=1e-5)
    assert structure_loss(torch.eye(2), relation_targets(torch.tensor([0, 1]))).item() == 0.0


# ------------------------------------------------------------------------------- (5) EMA update
@pytest.mark.parametrize("warmup", [False, True])
def test_ema_update_after_one_step_hand_computed(warmup):
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.5)
    trainer = SimpleNamespace(model=model, state=SimpleNamespace(step=0))
    callback = EMACallback(decay=0.9, warmup=warmup)
    callback.on_fit_start(trainer)
    trainer.state.step = 1  # timm's ModelEmaV3: the first update copies the weights
    callback.on_train_step_end(trainer)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, -2.0]]))
        model.bias.fill_(1.5)
    trainer.state.step = 2  # one step after the copy: ema = d·ema + (1 − d)·w
    callback.on_train_step_end(trainer)
    # d = 0.9; with warm-up d = min(0.9, 1 − (1 + 1)^(−2/3)) ≈ 0.370
    d = 1 - 2 ** (-2 / 3) if warmup else 0.9
    ema = callback.averaged_state_dict()
    assert torch.allclose(ema["weight"], torch.tensor([[d * 1 + (1 - d) * 3, d * 2 + (1 - d) * -2]]))
    assert ema["bias"].item() == pytest.approx(d * 0.5 + (1 - d) * 1.5)
    assert torch.equal(model.weight, torch.tensor([[3.0, -2.0]]))  # the live model is untouched


# ------------------------------------------------------------------------------- (6) ECE bin count
def test_ece_depends_on_the_number_of_bins():
    # confidences 0.62 (right) and 0.68 (wrong): one bin [0.6, 0.7) at 10 bins, two bins at 15 (edge 0.667)
    probs = torch.tensor([[0.62, 0.38], [0.68, 0.32]])
    targets = torch.tensor([0, 1])
    ten = classification_metrics(probs, targets, ["a", "b"], top_k=[1], calibration_bins=10)
    fifteen = classification_metrics(probs, targets, ["a", "b"], top_k=[1], calibration_bins=15)
    assert ten["ece"] == pytest.approx(abs(0.5 - 0.65), abs=1e-6)  # one bin: accuracy ½, confidence 0.65
    assert fifteen["ece"] == pytest.approx(0.5 * (1 - 0.62) + 0.5 * 0.68, abs=1e-6)
    assert (ten["ece_bins"], fifteen["ece_bins"]) == (10, 15)

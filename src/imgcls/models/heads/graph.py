"""Batch-graph building blocks of the FCH head (seed 000, SPEC §1.4–1.5): adjacency builders and the
Chebyshev graph filter, as pure functions on dense matrices.

Nodes are the samples of a mini-batch (``x`` is ``(B, E)``). Square builders return a ``(B, B)``
adjacency that is non-negative, symmetric and has a zero diagonal (self-loops are added later, by
:func:`normalize_adjacency`). *Row* builders return the ``(B, M)`` edge weights between B query nodes and
a bank of M nodes (the ``memory`` inference mode); they never connect two query nodes.

Everything here is meant to run in fp32 (the caller disables autocast): the RBF kernel's ``exp`` and the
degree normalisation lose too much in bf16/fp16 (SPEC §1.8 item 7). The graphs are dense: for the batch
sizes FCH uses (B ≤ 512) a dense ``(B, B)`` matmul is faster than any sparse format, and PyG's ``ChebConv``
(which we do not depend on) would need ``K = p + 1`` (SPEC §1.8 item 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------------
# Primitives
# --------------------------------------------------------------------------------------------------------


def pairwise_sq_dists(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances ``(B, N)`` between the rows of ``x`` and of ``y`` (default: ``x``).

    Gram form ``|x|² + |y|² − 2 x·y`` (O(B·N) memory, unlike broadcasting differences), clamped at 0;
    for ``y=None`` the diagonal is exactly 0. No square root, so gradients stay finite at zero distance.
    """
    other = x if y is None else y
    sq = (x * x).sum(-1, keepdim=True) + (other * other).sum(-1)[None, :] - 2.0 * (x @ other.T)
    sq = sq.clamp_min(0.0)
    if y is None:
        sq = sq.masked_fill(_eye_mask(x.shape[0], x.device), 0.0)
    return sq


def median_sq_distance(sq_dists: torch.Tensor) -> torch.Tensor:
    """Median-heuristic bandwidth σ² of a square distance matrix: the median of its off-diagonal squared
    distances (= (median distance)², the square root being monotone), **detached**.

    Falls back to the mean when more than half the pairs coincide, and to 1 when there is no pair (B = 1)
    or all points coincide, so the kernel is always defined.
    """
    with torch.no_grad():
        n = sq_dists.shape[0]
        one = torch.ones((), dtype=sq_dists.dtype, device=sq_dists.device)
        if n < 2:
            return one
        values = sq_dists[~_eye_mask(n, sq_dists.device)]
        median, mean = values.median(), values.mean()
        return torch.where(median > 0, median, torch.where(mean > 0, mean, one))


def rbf_weights(sq_dists: torch.Tensor, sigma_sq: torch.Tensor | float) -> torch.Tensor:
    """Gaussian kernel ``exp(−d² / (2σ²))`` applied elementwise."""
    return torch.exp(-sq_dists / (2.0 * sigma_sq))


def topk_mask(scores: torch.Tensor, k: int, *, largest: bool, exclude_diagonal: bool) -> torch.Tensor:
    """Boolean ``(B, N)`` mask of the ``k`` largest (or smallest) entries of each row.

    With ``exclude_diagonal`` (square matrices) a node never selects itself; ``k`` is capped at the number
    of candidates, so a single node (B = 1) gets an empty row. Indices are chosen on detached scores.
    """
    rows, cols = scores.shape
    k = min(int(k), cols - (1 if exclude_diagonal else 0))
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    if k <= 0:
        return mask
    s = scores.detach()
    if exclude_diagonal:
        s = s.masked_fill(_eye_mask(rows, s.device), -math.inf if largest else math.inf)
    index = s.topk(k, dim=1, largest=largest).indices
    return mask.scatter_(1, index, True)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row softmax over the entries where ``mask`` is True; other entries (and all-masked rows) are 0.

    Masked scores are filled with the most negative finite value rather than −inf, so an all-masked row
    gives a finite uniform softmax that the mask then zeroes, and the backward pass stays NaN-free.
    """
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return filled.softmax(dim=-1) * mask


def symmetrize_max(a: torch.Tensor) -> torch.Tensor:
    return torch.maximum(a, a.T)


def symmetrize_mean(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + a.T)


def zero_diagonal(a: torch.Tensor) -> torch.Tensor:
    return a.masked_fill(_eye_mask(a.shape[0], a.device), 0.0)


def apply_threshold(a: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Drop edges lighter than ``threshold`` (the public code's ``tau``); ``None`` keeps all."""
    if threshold is None:
        return a
    return torch.where(a >= threshold, a, torch.zeros_like(a))


def clamped_cosine(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity of L2-normalised rows, negatives clamped to 0 (as in the public code)."""
    xn = F.normalize(x, dim=-1)
    yn = xn if y is None else F.normalize(y, dim=-1)
    return (xn @ yn.T).clamp_min(0.0)


def _eye_mask(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(n, dtype=torch.bool, device=device)


# --------------------------------------------------------------------------------------------------------
# Square (batch) adjacencies: non-negative, symmetric, zero diagonal
# --------------------------------------------------------------------------------------------------------


def rbf_adjacency(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """RBF-FCH: ``A_ij = exp(−|x_i − x_j|² / 2σ²)``, σ by the detached median heuristic unless fixed.

    With the median heuristic A is invariant to a global rescaling of ``x`` (SPEC §1.8 item 4).
    """
    sq = pairwise_sq_dists(x)
    sigma_sq = median_sq_distance(sq) if sigma is None else sigma**2
    return zero_diagonal(rbf_weights(sq, sigma_sq))


def knn_adjacency(x: torch.Tensor, k: int, sigma: float | None = None) -> torch.Tensor:
    """NN-FCH: RBF weights kept for the ``k`` nearest neighbours of each node (self excluded), then
    symmetrised with ``max(A, Aᵀ)`` (an edge survives if either end chose it)."""
    sq = pairwise_sq_dists(x)
    sigma_sq = median_sq_distance(sq) if sigma is None else sigma**2
    nearest = topk_mask(sq, k, largest=False, exclude_diagonal=True)
    return symmetrize_max(rbf_weights(sq, sigma_sq) * nearest)


def attention_adjacency(x: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """Att-FCH: scaled dot-product scores ``q_i·k_j/√d``, restricted to the ``k`` nearest neighbours of
    node i in ``x`` (Euclidean, self excluded), row-softmax, then ``(A + Aᵀ)/2`` so the Laplacian is
    symmetric."""
    nearest = topk_mask(pairwise_sq_dists(x), k, largest=False, exclude_diagonal=True)
    scores = queries @ keys.T / math.sqrt(queries.shape[-1])
    return symmetrize_mean(masked_softmax(scores, nearest))


def class_label_adjacency(labels: torch.Tensor) -> torch.Tensor:
    """CL-FCH: ``A_ij = 1[y_i = y_j]`` for i ≠ j."""
    return zero_diagonal((labels[:, None] == labels[None, :]).float())


def cosine_topk_adjacency(x: torch.Tensor, k: int = 1, threshold: float | None = 0.2) -> torch.Tensor:
    """The public code's graph (``build_adj_from_embeddings``, SPEC §1.2 step 2): clamped cosine
    similarity, top-``k`` per row (self excluded), edges below ``threshold`` dropped, ``max``-symmetrised.
    Values stay differentiable; the choice of neighbours does not."""
    sim = clamped_cosine(x)
    chosen = topk_mask(sim, k, largest=True, exclude_diagonal=True)
    return symmetrize_max(apply_threshold(sim * chosen, threshold))


# --------------------------------------------------------------------------------------------------------
# Row adjacencies to a bank of M nodes (memory mode): (B, M), no symmetrisation, no query–query edges
# --------------------------------------------------------------------------------------------------------


def rbf_rows(x: torch.Tensor, bank: torch.Tensor, sigma_sq: torch.Tensor | float) -> torch.Tensor:
    return rbf_weights(pairwise_sq_dists(x, bank), sigma_sq)


def knn_rows(x: torch.Tensor, bank: torch.Tensor, k: int, sigma_sq: torch.Tensor | float) -> torch.Tensor:
    sq = pairwise_sq_dists(x, bank)
    return rbf_weights(sq, sigma_sq) * topk_mask(sq, k, largest=False, exclude_diagonal=False)


def attention_rows(
    x: torch.Tensor, bank: torch.Tensor, queries: torch.Tensor, bank_keys: torch.Tensor, k: int
) -> torch.Tensor:
    nearest = topk_mask(pairwise_sq_dists(x, bank), k, largest=False, exclude_diagonal=False)
    scores = queries @ bank_keys.T / math.sqrt(queries.shape[-1])
    return masked_softmax(scores, nearest)


def class_label_rows(labels: torch.Tensor, bank_labels: torch.Tensor) -> torch.Tensor:
    return (labels[:, None] == bank_labels[None, :]).float()


def cosine_topk_rows(x: torch.Tensor, bank: torch.Tensor, k: int, threshold: float | None) -> torch.Tensor:
    sim = clamped_cosine(x, bank)
    return apply_threshold(sim * topk_mask(sim, k, largest=True, exclude_diagonal=False), threshold)


# --------------------------------------------------------------------------------------------------------
# Normalisation and the Chebyshev filter (Defferrard et al. 2016; SPEC §1.4, §6.2)
# --------------------------------------------------------------------------------------------------------


def inverse_sqrt_degree(degree: torch.Tensor) -> torch.Tensor:
    """``d^{-1/2}``, 0 for isolated nodes (clamped first so the backward pass never sees ``0^{-3/2}``)."""
    return torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))


def normalize_adjacency(
    adjacency: torch.Tensor, add_self_loops: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Â = D^{-1/2} (A + I) D^{-1/2}`` (``A`` alone without self-loops); returns ``(Â, d^{-1/2})``."""
    if add_self_loops:
        adjacency = adjacency + torch.eye(adjacency.shape[0], dtype=adjacency.dtype, device=adjacency.device)
    inv_sqrt = inverse_sqrt_degree(adjacency.sum(dim=1))
    return inv_sqrt[:, None] * adjacency * inv_sqrt[None, :], inv_sqrt


def chebyshev_terms(a_hat: torch.Tensor, x: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``[T_0 X, …, T_p X]`` for the scaled Laplacian ``L̃ = 2L/λ_max − I`` with ``L = I − Â``, λ_max = 2,
    i.e. ``L̃ = −Â``: ``T_0 = X``, ``T_1 = L̃X``, ``T_k = 2L̃T_{k−1} − T_{k−2}``.

    ``order`` = p = the polynomial degree = number of hops: p = 0 gives only ``T_0`` (no graph),
    p = 1 gives ``T_0`` and ``T_1`` (SPEC §1.8 item 1).
    """
    if order < 0:
        raise ValueError(f"Chebyshev order must be >= 0, got {order}")
    terms = [x]
    if order >= 1:
        terms.append(-(a_hat @ x))
    for _ in range(2, order + 1):
        terms.append(-2.0 * (a_hat @ terms[-1]) - terms[-2])
    return terms


def bank_chebyshev_terms(
    x: torch.Tensor,
    rows: torch.Tensor,
    bank_terms: list[torch.Tensor],
    bank_inv_sqrt_degree: torch.Tensor,
    add_self_loops: bool = True,
) -> list[torch.Tensor]:
    """Chebyshev terms of query nodes attached to a fixed bank graph (memory mode).

    Each query node i is a node of the graph ``bank ∪ {i}`` with edges ``rows[i]`` to the bank (and its
    self-loop); it never sees another query node, so its output depends only on itself and the bank.
    The bank is *not updated* by the query: bank nodes keep their own degrees and their Chebyshev terms
    ``bank_terms`` computed on the bank graph alone, so the recursion for node i is
    ``T_k(i) = 2·L̃[T_{k−1}(i), T^bank_{k−1}] − T_{k−2}(i)`` with ``L̃ = −Â``. With an empty bank this is the
    ``self`` mode.
    """
    loop = 1.0 if add_self_loops else 0.0
    inv_sqrt = inverse_sqrt_degree(loop + rows.sum(dim=1))
    self_weight = (loop * inv_sqrt * inv_sqrt)[:, None]
    cross = inv_sqrt[:, None] * rows * bank_inv_sqrt_degree[None, :]

    def laplacian_times(own: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
        return -(self_weight * own + cross @ bank)

    order = len(bank_terms) - 1
    terms = [x]
    if order >= 1:
        terms.append(laplacian_times(x, bank_terms[0]))
    for k in range(2, order + 1):
        terms.append(2.0 * laplacian_times(terms[-1], bank_terms[k - 1]) - terms[-2])
    return terms

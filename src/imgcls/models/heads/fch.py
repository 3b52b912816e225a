"""FCH — Feature-refinement Classification Head (seed 000, Kim et al., J.UCS 2026; SPEC §1.4–1.8, §7 items 1–3).

The mini-batch is a graph: backbone embeddings are the nodes, an adjacency is built per batch (RBF,
kNN+RBF, neighbourhood-restricted attention, class-label equality, or the public code's cosine top-k), one
Chebyshev graph convolution of order p refines the embeddings, and a two-layer MLP classifies. The loss is
cross-entropy plus a structure-preserving term that pulls the relations of the refined embeddings towards
the label relation matrix ``1[y_i = y_j]`` (SPEC §1.4; an [INFERRED] reading of the seed, whose public code
has no such term).

Predictions of a batch graph depend on the rest of the batch; ``eval_graph`` chooses how evaluation
builds the graph (SPEC §1.5): ``batch`` (the eval batch, faithful), ``self`` (no edges between samples: a
per-sample linear map) or ``memory`` (each test sample joins a FIFO bank of training embeddings, never
another test sample). CL-FCH never reads labels at evaluation: its test graph comes from the pseudo-labels
of an auxiliary linear head on the unrefined embeddings (``cl_test_graph: pseudo``), or falls back to RBF.

Under DDP, ``global_graph: true`` builds the training graph over the **global** batch: the node embeddings
(and labels) of every rank are all-gathered — differentiably, so each rank's loss also reaches the other
ranks' rows — the graph and the structure-preserving term span all of them, and each rank classifies its
own rows. A run of 4 processes × 64 then sees the graph of one process × 256 (same gradient step, up to
float rounding). Evaluation graphs stay per process (``eval_graph``).

The graph part (adjacency, normalisation, Chebyshev recursion and its weights) always runs in fp32 with
autocast disabled (SPEC §1.8 item 7). Design choices are documented in ``docs/fch.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from imgcls.errors import ConfigError
from imgcls.models.heads.base import Head, HeadOutput, cross_entropy
from imgcls.models.heads.graph import (
    apply_threshold,
    attention_adjacency,
    attention_rows,
    bank_chebyshev_terms,
    chebyshev_terms,
    class_label_adjacency,
    class_label_rows,
    cosine_topk_adjacency,
    cosine_topk_rows,
    knn_adjacency,
    knn_rows,
    median_sq_distance,
    normalize_adjacency,
    pairwise_sq_dists,
    rbf_adjacency,
    rbf_rows,
    rbf_weights,
)
from imgcls.registry import HEADS
from imgcls.runtime.distributed import gather_rows, gather_rows_with_grad, world_size

if TYPE_CHECKING:
    from imgcls.runtime.batch import Batch

ADJACENCIES = ("rbf", "knn", "attention", "class_label", "cosine_topk")
#: the seed's variant names (RBF-FCH, NN-FCH, Att-FCH, CL-FCH) and its documented ``--fch_type`` values
ADJACENCY_ALIASES = {"nn": "knn", "att": "attention", "cl": "class_label"}
CONVOLUTIONS = ("chebyshev", "gcn")
EVAL_GRAPHS = ("batch", "self", "memory")
CL_TEST_GRAPHS = ("pseudo", "rbf", "memory")
SP_SIMILARITIES = ("rbf", "cosine")
SP_DISTANCES = ("mse", "bce")
ACTIVATIONS = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


# --------------------------------------------------------------------------------------------------------
# Structure-preserving loss (SPEC §1.4)
# --------------------------------------------------------------------------------------------------------


def relation_targets(targets: torch.Tensor, soft_targets: torch.Tensor | None = None) -> torch.Tensor:
    """Label relation matrix ``Y_ij = 1[y_i = y_j]``; after MixUp/CutMix ``Y_ij = ⟨ỹ_i, ỹ_j⟩``."""
    if soft_targets is not None:
        soft = soft_targets.float()
        return soft @ soft.T
    return (targets[:, None] == targets[None, :]).float()


def embedding_relations(embeddings: torch.Tensor, similarity: str = "rbf") -> torch.Tensor:
    """Pairwise relations in [0, 1] of embeddings: RBF with the detached median-heuristic bandwidth, or
    cosine similarity mapped to [0, 1] by ``(1 + cos)/2``."""
    h = embeddings.float()
    if similarity == "rbf":
        sq = pairwise_sq_dists(h)
        return rbf_weights(sq, median_sq_distance(sq))
    if similarity == "cosine":
        unit = F.normalize(h, dim=-1)
        return 0.5 * (1.0 + unit @ unit.T)
    raise ValueError(f"unknown relation similarity '{similarity}'; use one of {SP_SIMILARITIES}")


def structure_loss(
    relations: torch.Tensor, targets: torch.Tensor, distance: str = "mse", eps: float = 1e-6
) -> torch.Tensor:
    """Mean over pairs i ≠ j of ``(S_ij − Y_ij)²`` (``mse``) or of the binary cross-entropy of ``S_ij``
    against ``Y_ij`` with positive weight ``#neg/#pos`` (``bce``; counters the ≈(C−1)/C share of
    different-class pairs). A batch of one sample has no pair: the loss is 0."""
    n = relations.shape[0]
    if n < 2:
        return relations.sum() * 0.0
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=relations.device)
    s, y = relations[off_diagonal], targets[off_diagonal].to(relations.dtype)
    if distance == "mse":
        return (s - y).pow(2).mean()
    if distance == "bce":
        positives, negatives = y.sum(), (1.0 - y).sum()
        pos_weight = torch.where(
            positives > 0, negatives / positives.clamp_min(eps), torch.ones_like(positives)
        )
        s = s.clamp(eps, 1.0 - eps)
        return -(pos_weight * y * s.log() + (1.0 - y) * (1.0 - s).log()).mean()
    raise ValueError(f"unknown structure-loss distance '{distance}'; use one of {SP_DISTANCES}")


# --------------------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------------------


@HEADS.register("fch")
class FCHHead(Head):
    """Feature-refinement classification head over a batch graph.

    Args (``model.head_args``; defaults are SPEC §1.4's, [INFERRED] where the seed is silent):
        adjacency: ``rbf`` | ``knn`` | ``attention`` | ``class_label`` | ``cosine_topk`` (aliases: the
            seed's ``nn``, ``att``, ``cl``).
        order: Chebyshev order p = number of hops (p = 1: ``T_0`` and ``T_1``; p = 0: no graph).
        conv: ``chebyshev`` (``Σ_k T_k Θ_k + b``) or ``gcn`` (``Â X W + b``, the public code's layer; one hop).
        embed_activation: activation on the (optionally projected) backbone features (GELU; the seed's
            figure shows an S-curve, so ``sigmoid`` is offered).
        proj, proj_dim: a ``Linear(D, proj_dim or D)`` before the activation (the public code's replaced
            ``fc``, initialised N(0, 0.02)).
        sigma: fixed RBF bandwidth; ``None`` = detached median heuristic per batch.
        knn_k: neighbours per node for ``knn``/``attention`` (default 8) and ``cosine_topk`` (default 1).
        threshold: drop edges lighter than this (default 0.2 for ``cosine_topk``, as in the public code;
            none for the others; 0 keeps every edge).
        attention_dim: width d_k of the attention queries/keys.
        add_self_loops: add ``I`` before the degree normalisation.
        graph_activation, graph_dropout: after the graph convolution.
        residual: refined ``H = X + act(conv(X))`` instead of ``act(conv(X))``.
        hidden_dim, activation, dropout: the two-layer MLP classifier ``Linear → act → Dropout → Linear``.
        structure_weight: λ of the structure-preserving term (0 = CE only, like the public code).
        sp_similarity: ``rbf`` | ``cosine`` relations of the refined embeddings.
        sp_distance: ``mse`` | ``bce`` (with pos-weight #neg/#pos).
        eval_graph: ``batch`` | ``self`` | ``memory`` (default ``batch``; ``memory`` when CL-FCH uses
            ``cl_test_graph: memory``).
        cl_test_graph: CL-FCH's label-free test graph: ``pseudo`` (pseudo-label equality), ``rbf`` (RBF
            graph) or ``memory`` (pseudo-labels against the labelled training bank).
        aux_weight: weight of the auxiliary head's CE (``aux_ce``; CL-FCH with pseudo-labels only).
        memory_size: FIFO bank size M for ``memory`` mode (0 disables the bank).
        global_graph: under DDP, build the training graph (and the structure term) over the all-gathered
            global batch instead of each process's share (no effect in a single process or at evaluation).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        label_smoothing: float = 0.0,
        *,
        adjacency: str = "rbf",
        order: int = 1,
        conv: str = "chebyshev",
        embed_activation: str = "gelu",
        proj: bool = False,
        proj_dim: int | None = None,
        sigma: float | None = None,
        knn_k: int | None = None,
        threshold: float | None = None,
        attention_dim: int = 64,
        add_self_loops: bool = True,
        graph_activation: str = "gelu",
        graph_dropout: float = 0.1,
        residual: bool = False,
        hidden_dim: int | None = None,
        activation: str = "gelu",
        dropout: float = 0.1,
        structure_weight: float = 0.1,
        sp_similarity: str = "rbf",
        sp_distance: str = "mse",
        eval_graph: str | None = None,
        cl_test_graph: str = "pseudo",
        aux_weight: float = 1.0,
        memory_size: int = 1024,
        global_graph: bool = False,
    ) -> None:
        super().__init__(in_features, num_classes, label_smoothing)
        adjacency = ADJACENCY_ALIASES.get(adjacency, adjacency)
        _check_choice("adjacency", adjacency, ADJACENCIES + tuple(ADJACENCY_ALIASES))
        _check_choice("conv", conv, CONVOLUTIONS)
        for key, value in (
            ("embed_activation", embed_activation),
            ("graph_activation", graph_activation),
            ("activation", activation),
        ):
            _check_choice(key, value, tuple(ACTIVATIONS))
        _check_choice("sp_similarity", sp_similarity, SP_SIMILARITIES)
        _check_choice("sp_distance", sp_distance, SP_DISTANCES)
        _check_choice("cl_test_graph", cl_test_graph, CL_TEST_GRAPHS)
        if eval_graph is not None:
            _check_choice("eval_graph", eval_graph, EVAL_GRAPHS)
        if not isinstance(order, int) or order < 0:
            raise ConfigError(
                f"fch order must be an integer >= 0 (the Chebyshev degree = hops), got {order!r}"
            )
        if conv == "gcn" and order != 1:
            raise ConfigError(
                f"fch conv=gcn is a one-hop layer; set order: 1 (got {order}) or use conv: chebyshev"
            )
        if sigma is not None and sigma <= 0:
            raise ConfigError(f"fch sigma must be > 0 or null (median heuristic), got {sigma}")
        if knn_k is not None and knn_k < 1:
            raise ConfigError(f"fch knn_k must be >= 1, got {knn_k}")
        if threshold is not None and threshold < 0:
            raise ConfigError(f"fch threshold must be >= 0 or null, got {threshold}")
        if (
            attention_dim < 1
            or (proj_dim is not None and proj_dim < 1)
            or (hidden_dim is not None and hidden_dim < 1)
        ):
            raise ConfigError("fch attention_dim, proj_dim and hidden_dim must be >= 1")
        for key, value in (("graph_dropout", graph_dropout), ("dropout", dropout)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"fch {key} must be in [0, 1), got {value}")
        if structure_weight < 0 or aux_weight < 0:
            raise ConfigError("fch structure_weight and aux_weight must be >= 0")
        if memory_size < 0:
            raise ConfigError(f"fch memory_size must be >= 0, got {memory_size}")
        is_cl = adjacency == "class_label"
        if eval_graph is None:
            eval_graph = "memory" if is_cl and cl_test_graph == "memory" else "batch"
        elif is_cl and cl_test_graph == "memory" and eval_graph != "memory":
            raise ConfigError(f"fch cl_test_graph=memory needs eval_graph: memory (got '{eval_graph}')")

        self.adjacency = adjacency
        self.order = order
        self.conv = conv
        self.sigma = sigma
        self.knn_k = knn_k if knn_k is not None else (1 if adjacency == "cosine_topk" else 8)
        self.threshold = threshold if threshold is not None or adjacency != "cosine_topk" else 0.2
        self.add_self_loops = add_self_loops
        self.residual = residual
        self.structure_weight = float(structure_weight)
        self.sp_similarity = sp_similarity
        self.sp_distance = sp_distance
        self.cl_test_graph = cl_test_graph
        self.aux_weight = float(aux_weight)
        self.global_graph = bool(global_graph)

        width = proj_dim or in_features
        self.embedding_dim = width
        self.proj = nn.Linear(in_features, width) if proj else nn.Identity()
        if proj:
            nn.init.normal_(self.proj.weight, std=0.02)
            nn.init.zeros_(self.proj.bias)
        if not proj and proj_dim not in (None, in_features):
            raise ConfigError(
                f"fch proj_dim={proj_dim} needs proj: true (without it the width is in_features)"
            )
        self.embed_activation = ACTIVATIONS[embed_activation]()
        self.query = nn.Linear(width, attention_dim, bias=False) if adjacency == "attention" else None
        self.key = nn.Linear(width, attention_dim, bias=False) if adjacency == "attention" else None
        terms = order + 1 if conv == "chebyshev" else 1
        self.graph_conv = nn.Linear(terms * width, width)
        self.graph_activation = ACTIVATIONS[graph_activation]()
        self.graph_dropout = nn.Dropout(graph_dropout)
        hidden = hidden_dim or width
        self.classifier = nn.Sequential(
            nn.Linear(width, hidden),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        needs_pseudo = is_cl and cl_test_graph in ("pseudo", "memory")
        self.aux_head = nn.Linear(width, num_classes) if needs_pseudo else None

        self.register_buffer("memory_features", torch.zeros(memory_size, width))
        self.register_buffer("memory_labels", torch.zeros(memory_size, dtype=torch.long))
        self.register_buffer("memory_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("memory_filled", torch.zeros((), dtype=torch.long))
        self.eval_graph = eval_graph

    # ---------------------------------------------------------------------------------------- settings

    @property
    def eval_graph(self) -> str:
        """How evaluation builds the graph: ``batch``, ``self`` or ``memory`` (settable after training)."""
        return self._eval_graph

    @eval_graph.setter
    def eval_graph(self, mode: str) -> None:
        _check_choice("eval_graph", mode, EVAL_GRAPHS)
        if mode == "memory" and self.memory_features.shape[0] == 0:
            raise ConfigError("fch eval_graph=memory needs a memory bank; set memory_size > 0 (e.g. 1024)")
        self._eval_graph = mode

    @property
    def inference_mode(self) -> str:
        return self._eval_graph

    def extra_repr(self) -> str:
        return (
            f"adjacency={self.adjacency}, order={self.order}, conv={self.conv}, eval_graph={self._eval_graph}, "
            f"structure_weight={self.structure_weight}, memory_size={self.memory_features.shape[0]}"
        )

    # ---------------------------------------------------------------------------------------- forward

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The unrefined node embeddings X: activation of the (optionally projected) backbone features."""
        return self.embed_activation(self.proj(features))

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        is_cl = self.adjacency == "class_label"
        if is_cl and targets is not None and not self.training:
            raise ValueError(
                "CL-FCH must not see labels at evaluation (label leakage): call the head without targets; "
                "its test graph comes from cl_test_graph"
            )
        x = self.embed(features)
        aux_logits = self.aux_head(x) if self.aux_head is not None else None
        extras: dict[str, torch.Tensor] = {}
        with torch.autocast(device_type=features.device.type, enabled=False):
            xf = x.float()
            nodes, node_targets, node_aux, rows = xf, targets, aux_logits, None
            if self.global_graph and self.training and world_size() > 1:
                nodes, start = gather_rows_with_grad(xf)
                node_targets = gather_rows(targets) if targets is not None else None
                node_aux = gather_rows(aux_logits) if aux_logits is not None else None
                rows = slice(start, start + xf.shape[0])
            refined = self._convolve(self._graph_terms(nodes, node_targets, node_aux))
        if self.training and targets is not None:
            self._enqueue(xf.detach(), targets)
        h = self.graph_activation(refined)
        if self.residual:
            h = nodes + h
        if rows is not None:  # global graph: the structure term spans every rank's rows
            if node_targets is not None:
                extras.update(global_embeddings=h, global_targets=node_targets)
            h = h[rows]
        logits = self.classifier(self.graph_dropout(h))
        extras["unrefined"] = xf
        if aux_logits is not None:
            extras["aux_logits"] = aux_logits
        return HeadOutput(logits=logits, embeddings=h, extras=extras)

    def _terms_order(self) -> int:
        return self.order if self.conv == "chebyshev" else 1

    def _graph_terms(
        self, x: torch.Tensor, targets: torch.Tensor | None, aux_logits: torch.Tensor | None
    ) -> list[torch.Tensor]:
        mode = "batch" if self.training else self._eval_graph
        kind, labels = self.adjacency, None
        if kind == "class_label":
            if targets is not None:  # training only: forward refuses labels at evaluation
                labels = targets
            elif self.cl_test_graph == "rbf" or aux_logits is None:
                kind = "rbf"
            else:
                labels = aux_logits.argmax(dim=-1)
        if mode == "memory":
            return self._memory_terms(x, kind, labels)
        if mode == "self":
            adjacency = x.new_zeros(x.shape[0], x.shape[0])
        else:
            adjacency = self._square_adjacency(kind, x, labels)
        a_hat, _ = normalize_adjacency(adjacency, self.add_self_loops)
        return chebyshev_terms(a_hat, x, self._terms_order())

    def _square_adjacency(self, kind: str, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if kind == "class_label":
            return class_label_adjacency(labels)
        if kind == "cosine_topk":
            return cosine_topk_adjacency(x, self.knn_k, self.threshold)
        if kind == "rbf":
            adjacency = rbf_adjacency(x, self.sigma)
        elif kind == "knn":
            adjacency = knn_adjacency(x, self.knn_k, self.sigma)
        else:
            adjacency = attention_adjacency(x, _linear32(self.query, x), _linear32(self.key, x), self.knn_k)
        return apply_threshold(adjacency, self.threshold)

    def _memory_terms(self, x: torch.Tensor, kind: str, labels: torch.Tensor | None) -> list[torch.Tensor]:
        """Each query node joins the bank graph alone (see :func:`graph.bank_chebyshev_terms`)."""
        filled = int(self.memory_filled)
        bank = self.memory_features[:filled].float()
        bank_labels = self.memory_labels[:filled]
        bank_adjacency = self._square_adjacency(kind, bank, bank_labels)
        bank_hat, bank_inv_sqrt = normalize_adjacency(bank_adjacency, self.add_self_loops)
        bank_terms = chebyshev_terms(bank_hat, bank, self._terms_order())
        sigma_sq = median_sq_distance(pairwise_sq_dists(bank)) if self.sigma is None else self.sigma**2
        if kind == "class_label":
            rows = class_label_rows(labels, bank_labels)
        elif kind == "cosine_topk":
            rows = cosine_topk_rows(x, bank, self.knn_k, self.threshold)
        else:
            if kind == "rbf":
                rows = rbf_rows(x, bank, sigma_sq)
            elif kind == "knn":
                rows = knn_rows(x, bank, self.knn_k, sigma_sq)
            else:
                rows = attention_rows(
                    x, bank, _linear32(self.query, x), _linear32(self.key, bank), self.knn_k
                )
            rows = apply_threshold(rows, self.threshold)
        return bank_chebyshev_terms(x, rows, bank_terms, bank_inv_sqrt, self.add_self_loops)

    def _convolve(self, terms: list[torch.Tensor]) -> torch.Tensor:
        """Chebyshev: ``Σ_k T_k Θ_k + b`` as one matmul over the concatenated terms; GCN: ``(ÂX) W + b``
        with ``ÂX = −T_1``."""
        stacked = torch.cat(terms, dim=-1) if self.conv == "chebyshev" else -terms[1]
        return _linear32(self.graph_conv, stacked)

    # ---------------------------------------------------------------------------------------- memory bank

    @torch.no_grad()
    def update_memory(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Push backbone ``features`` (B, D) of labelled *training* images into the FIFO bank (e.g. to
        refill it with clean, eval-mode embeddings before a ``memory`` evaluation)."""
        self._enqueue(self.embed(features).float(), targets)

    @torch.no_grad()
    def reset_memory(self) -> None:
        self.memory_ptr.zero_()
        self.memory_filled.zero_()

    @torch.no_grad()
    def _enqueue(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        size = self.memory_features.shape[0]
        if size == 0:
            return
        x, labels = x[-size:], labels[-size:]
        n = x.shape[0]
        index = (self.memory_ptr + torch.arange(n, device=x.device)) % size
        self.memory_features[index] = x.to(self.memory_features.dtype)
        self.memory_labels[index] = labels.to(self.memory_labels.device, torch.long)
        self.memory_ptr.copy_((self.memory_ptr + n) % size)
        self.memory_filled.copy_((self.memory_filled + n).clamp_max(size))

    # ---------------------------------------------------------------------------------------- loss

    def loss(self, output: HeadOutput, batch: Batch) -> dict[str, torch.Tensor]:
        terms = {"ce": cross_entropy(output.logits, batch, self.label_smoothing)}
        if self.structure_weight > 0:
            embeddings, targets, soft = output.embeddings, batch.targets, batch.soft_targets
            if "global_embeddings" in output.extras:  # global_graph under DDP
                embeddings, targets = output.extras["global_embeddings"], output.extras["global_targets"]
                soft = gather_rows(soft) if soft is not None else None
            with torch.autocast(device_type=output.embeddings.device.type, enabled=False):
                relations = embedding_relations(embeddings, self.sp_similarity)
                target = relation_targets(targets, soft)
                terms["structure"] = self.structure_weight * structure_loss(
                    relations, target, self.sp_distance
                )
        if "aux_logits" in output.extras and self.aux_weight > 0:
            terms["aux_ce"] = self.aux_weight * cross_entropy(
                output.extras["aux_logits"], batch, self.label_smoothing
            )
        return terms


def _linear32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in fp32 whatever the parameters' dtype (the graph path never runs in low precision)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"fch {key} '{value}' is not valid; use one of {', '.join(allowed)}")

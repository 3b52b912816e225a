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

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from imgcls.errors import ConfigError
from imgcls.losses.structure import SP_DISTANCES, relation_targets, structure_loss
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
from imgcls.models.heads.memory_bank import MemoryBank
from imgcls.registry import HEADS, ComponentArgs
from imgcls.runtime.distributed import gather_rows, gather_rows_with_grad, world_size

if TYPE_CHECKING:
    from imgcls.runtime.batch import Batch

#: the structure loss lives in imgcls.losses.structure; its names stay importable from here
__all__ = ["SP_DISTANCES", "FCHArgs", "FCHHead", "embedding_relations", "relation_targets", "structure_loss"]

ADJACENCIES = ("rbf", "knn", "attention", "class_label", "cosine_topk")
#: the seed's variant names (RBF-FCH, NN-FCH, Att-FCH, CL-FCH) and its documented ``--fch_type`` values
ADJACENCY_ALIASES = {"nn": "knn", "att": "attention", "cl": "class_label"}
CONVOLUTIONS = ("chebyshev", "gcn")
EVAL_GRAPHS = ("batch", "self", "memory")
CL_TEST_GRAPHS = ("pseudo", "rbf", "memory")
SP_SIMILARITIES = ("rbf", "cosine")
ACTIVATIONS = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


# --------------------------------------------------------------------------------------------------------
# Relations of the refined embeddings for the structure-preserving loss (imgcls.losses.structure)
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------

Activation = Literal["gelu", "relu", "sigmoid", "tanh", "identity"]


class FCHArgs(ComponentArgs):
    """``model.head_args`` of ``fch`` (defaults are SPEC §1.4's, [INFERRED] where the seed is silent)."""

    adjacency: Literal["rbf", "knn", "attention", "class_label", "cosine_topk", "nn", "att", "cl"] = Field(
        "rbf",
        description="batch graph: rbf | knn | attention | class_label | cosine_topk (seed aliases nn, att, cl)",
    )
    order: int = Field(1, ge=0, description="Chebyshev order p = number of hops (0: no graph)")
    conv: Literal["chebyshev", "gcn"] = Field(
        "chebyshev",
        description="chebyshev: sum_k T_k Θ_k + b; gcn: Â X W + b (the public code's one-hop layer)",
    )
    embed_activation: Activation = Field(
        "gelu", description="activation on the (projected) backbone features"
    )
    proj: bool = Field(False, description="a Linear(D, proj_dim or D) before the embedding activation")
    proj_dim: int | None = Field(None, ge=1, description="width of the projection (needs proj: true)")
    sigma: float | None = Field(
        None, gt=0, description="fixed RBF bandwidth (None: detached median heuristic)"
    )
    knn_k: int | None = Field(
        None, ge=1, description="neighbours per node (None: 8 for knn/attention, 1 for cosine_topk)"
    )
    threshold: float | None = Field(
        None, ge=0, description="drop edges lighter than this (None: 0.2 for cosine_topk, else keep all)"
    )
    attention_dim: int = Field(64, ge=1, description="width d_k of the attention queries/keys")
    add_self_loops: bool = Field(True, description="add I before the degree normalisation")
    graph_activation: Activation = Field("gelu", description="activation after the graph convolution")
    graph_dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout after the graph convolution")
    residual: bool = Field(False, description="refined H = X + act(conv(X)) instead of act(conv(X))")
    hidden_dim: int | None = Field(
        None, ge=1, description="hidden width of the MLP classifier (None: the embedding width)"
    )
    activation: Activation = Field("gelu", description="activation of the MLP classifier")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout of the MLP classifier")
    structure_weight: float = Field(
        0.1, ge=0.0, description="λ of the structure-preserving loss (0: CE only)"
    )
    sp_similarity: Literal["rbf", "cosine"] = Field("rbf", description="relations of the refined embeddings")
    sp_distance: Literal["mse", "bce"] = Field(
        "mse", description="structure-loss distance (bce: pos-weighted)"
    )
    eval_graph: Literal["batch", "self", "memory"] | None = Field(
        None, description="evaluation graph (None: batch, or memory for CL-FCH with cl_test_graph: memory)"
    )
    cl_test_graph: Literal["pseudo", "rbf", "memory"] = Field(
        "pseudo",
        description="CL-FCH's label-free test graph: pseudo-labels, rbf, or pseudo-labels vs the bank",
    )
    aux_weight: float = Field(
        1.0, ge=0.0, description="weight of the auxiliary head's CE (CL-FCH, pseudo-labels)"
    )
    memory_size: int = Field(1024, ge=0, description="FIFO bank size for eval_graph: memory (0: no bank)")
    global_graph: bool = Field(
        False,
        description="DDP: build the training graph and structure term over the all-gathered global batch",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FCHArgs:
        if self.conv == "gcn" and self.order != 1:
            raise ValueError(
                f"fch conv=gcn is a one-hop layer; set order: 1 (got {self.order}) or use conv: chebyshev"
            )
        cl_memory = ADJACENCY_ALIASES.get(self.adjacency, self.adjacency) == "class_label" and (
            self.cl_test_graph == "memory"
        )
        if cl_memory and self.eval_graph not in (None, "memory"):
            raise ValueError(f"fch cl_test_graph=memory needs eval_graph: memory (got '{self.eval_graph}')")
        if (self.eval_graph == "memory" or (cl_memory and self.eval_graph is None)) and self.memory_size == 0:
            raise ValueError("fch eval_graph=memory needs a memory bank; set memory_size > 0 (e.g. 1024)")
        return self


# --------------------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------------------


@HEADS.register("fch", args=FCHArgs)
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
        FCHArgs.from_init("fch", locals())
        adjacency = ADJACENCY_ALIASES.get(adjacency, adjacency)
        is_cl = adjacency == "class_label"
        if eval_graph is None:
            eval_graph = "memory" if is_cl and cl_test_graph == "memory" else "batch"

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

        self.memory = MemoryBank(memory_size, width)
        self._register_load_state_dict_pre_hook(_rename_legacy_memory_keys)
        self.eval_graph = eval_graph

    # ---------------------------------------------------------------------------------------- settings

    @property
    def eval_graph(self) -> str:
        """How evaluation builds the graph: ``batch``, ``self`` or ``memory`` (settable after training)."""
        return self._eval_graph

    @eval_graph.setter
    def eval_graph(self, mode: str) -> None:
        _check_choice("eval_graph", mode, EVAL_GRAPHS)
        if mode == "memory" and self.memory.size == 0:
            raise ConfigError("fch eval_graph=memory needs a memory bank; set memory_size > 0 (e.g. 1024)")
        self._eval_graph = mode

    @property
    def inference_mode(self) -> str:
        return self._eval_graph

    def extra_repr(self) -> str:
        return (
            f"adjacency={self.adjacency}, order={self.order}, conv={self.conv}, eval_graph={self._eval_graph}, "
            f"structure_weight={self.structure_weight}, memory_size={self.memory.size}"
        )

    # the bank's buffers under their former names (read-only views of ``self.memory``)
    memory_features = property(lambda self: self.memory.features)
    memory_labels = property(lambda self: self.memory.labels)
    memory_ptr = property(lambda self: self.memory.ptr)
    memory_filled = property(lambda self: self.memory.filled)

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
            self.memory.push(xf.detach(), targets)
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
            adjacency = self._adjacency(kind, x, labels)
        a_hat, _ = normalize_adjacency(adjacency, self.add_self_loops)
        return chebyshev_terms(a_hat, x, self._terms_order())

    def _adjacency(
        self,
        kind: str,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        bank: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The edges of kind ``kind``: the square ``(B, B)`` batch adjacency of ``x``, or with ``bank =
        (features, labels)`` the ``(B, M)`` rows from each node of ``x`` to the bank (memory mode)."""
        if bank is not None:
            other, other_labels = bank
            sigma_sq = median_sq_distance(pairwise_sq_dists(other)) if self.sigma is None else self.sigma**2
        if kind == "class_label":
            return class_label_adjacency(labels) if bank is None else class_label_rows(labels, other_labels)
        if kind == "cosine_topk":  # thresholds by itself (the public code's order: top-k, then tau)
            if bank is None:
                return cosine_topk_adjacency(x, self.knn_k, self.threshold)
            return cosine_topk_rows(x, other, self.knn_k, self.threshold)
        if kind == "rbf":
            edges = rbf_adjacency(x, self.sigma) if bank is None else rbf_rows(x, other, sigma_sq)
        elif kind == "knn":
            edges = (
                knn_adjacency(x, self.knn_k, self.sigma)
                if bank is None
                else knn_rows(x, other, self.knn_k, sigma_sq)
            )
        else:
            queries = _linear32(self.query, x)
            if bank is None:
                edges = attention_adjacency(x, queries, _linear32(self.key, x), self.knn_k)
            else:
                edges = attention_rows(x, other, queries, _linear32(self.key, other), self.knn_k)
        return apply_threshold(edges, self.threshold)

    def _memory_terms(self, x: torch.Tensor, kind: str, labels: torch.Tensor | None) -> list[torch.Tensor]:
        """Each query node joins the bank graph alone (see :func:`graph.bank_chebyshev_terms`)."""
        bank, bank_labels = self.memory.contents()
        bank_hat, bank_inv_sqrt = normalize_adjacency(
            self._adjacency(kind, bank, bank_labels), self.add_self_loops
        )
        bank_terms = chebyshev_terms(bank_hat, bank, self._terms_order())
        rows = self._adjacency(kind, x, labels, bank=(bank, bank_labels))
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
        self.memory.push(self.embed(features).float(), targets)

    @torch.no_grad()
    def reset_memory(self) -> None:
        self.memory.reset()

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


def _rename_legacy_memory_keys(state_dict, prefix, *_args) -> None:
    """Checkpoints written before the bank was its own module name its buffers ``memory_<name>``."""
    for name in ("features", "labels", "ptr", "filled"):
        old = f"{prefix}memory_{name}"
        if old in state_dict:
            state_dict[f"{prefix}memory.{name}"] = state_dict.pop(old)


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"fch {key} '{value}' is not valid; use one of {', '.join(allowed)}")

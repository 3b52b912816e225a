"""ArcFaceMultiHead: one ArcFace classifier per taxonomy level (seed 002, SPEC §3.3).

The seed only sketches it: labels are split by level, one head per level, and leaves are
"moved" to the deepest level so all paths have equal length. Our specification ([INFERRED]):

* every class path (root excluded) is padded by repeating its leaf down to the deepest level
  ``L`` (:meth:`Taxonomy.padded_class_paths`); level ``ℓ`` has the label set
  ``Taxonomy.level_nodes()[ℓ-1]`` (single-label within the level; level ``L`` = the classes);
* one ArcFace weight matrix per level on a shared embedding; margin on the level's target node
  in training only; scale per level (16 for ≤ 20 labels, else 30) unless given;
* loss ``Σ_ℓ w_ℓ·CE_ℓ`` (``w_ℓ = 1`` unless ``level_weights`` is given), one named term per level
  ``ce_level_<ℓ>``; soft (mixed) class targets become per-level soft targets;
* decoding (``decode``): ``leaf`` (default, the seed's per-level argmax: class probabilities are
  the deepest level's softmax), ``top_down`` (consistent: at each level only children of the
  node chosen above are allowed; class probabilities are the deepest level's softmax
  restricted to the classes under the chosen level-``L−1`` node), or ``joint`` (consistent:
  ``P(c) ∝ Π_ℓ P_ℓ(path_c[ℓ])``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat
from torch import nn

from imgcls.errors import ConfigError
from imgcls.models.heads.arcface import MarginArgs, additive_angular_margin, cosine_logits, default_scale
from imgcls.models.heads.base import Head, HeadOutput
from imgcls.models.heads.embedding import EmbeddingMLP
from imgcls.models.heads.sphere import require_taxonomy
from imgcls.registry import HEADS
from imgcls.taxonomy.tree import Taxonomy

if TYPE_CHECKING:
    from imgcls.runtime.batch import Batch

DECODES = ("leaf", "top_down", "joint")


class ArcFaceMultiHeadArgs(MarginArgs):
    """``model.head_args`` of ``arcface_multihead`` (``scale`` None: per level, 16 for <= 20 labels else 30)."""

    level_weights: list[NonNegativeFloat] | None = Field(
        None, description="loss weight per taxonomy level, one per level (None: all 1)"
    )
    decode: Literal["leaf", "top_down", "joint"] = Field(
        "leaf", description="leaf: deepest level's argmax; top_down / joint: consistent with the tree"
    )


@HEADS.register("arcface_multihead", args=ArcFaceMultiHeadArgs)
class ArcFaceMultiHead(Head):
    """Per-level ArcFace heads over padded taxonomy paths.

    head_args: ``scale`` (None: per level, 16 for ≤ 20 labels else 30), ``margin`` (0.5),
    ``level_weights`` (list of L floats; None: all 1), ``decode`` (``leaf`` | ``top_down`` |
    ``joint``), ``embedding`` / ``dropout`` / ``embed_final_act`` (embedding MLP).

    ``output.logits`` are the deepest level's logits in class order; ``output.extras`` holds
    ``level_<ℓ>`` logits for every level — all margin-free, what ``predict`` uses — and, after a
    forward with targets, the margin logits ``loss_level_<ℓ>`` that the loss uses.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        label_smoothing: float = 0.0,
        taxonomy: Taxonomy | None = None,
        scale: float | None = None,
        margin: float = 0.5,
        level_weights: Sequence[float] | None = None,
        decode: str = "leaf",
        embedding: Sequence[int] | None = None,
        dropout: float = 0.2,
        embed_final_act: str = "relu",
    ) -> None:
        super().__init__(in_features, num_classes, label_smoothing)
        ArcFaceMultiHeadArgs.from_init("arcface_multihead", locals())
        self.taxonomy = require_taxonomy(taxonomy, "arcface_multihead", num_classes)
        level_nodes = self.taxonomy.level_nodes()
        self.num_levels = len(level_nodes)
        weights = [1.0] * self.num_levels if level_weights is None else [float(w) for w in level_weights]
        if len(weights) != self.num_levels:
            raise ConfigError(f"level_weights must list {self.num_levels} weights (one per taxonomy level)")
        self.level_sizes = [len(nodes) for nodes in level_nodes]
        self.level_weights = weights
        self.scales = [float(scale) if scale is not None else default_scale(k) for k in self.level_sizes]
        self.margin, self.decode = float(margin), decode
        self.embed = EmbeddingMLP(in_features, embedding, dropout, embed_final_act)
        self.weights = nn.ParameterList(
            [
                nn.Parameter(nn.init.kaiming_uniform_(torch.empty(k, self.embed.out_features)))
                for k in self.level_sizes
            ]
        )
        targets = self.taxonomy.class_level_targets()  # (C, L)
        self.register_buffer("class_level_targets", targets, persistent=False)
        # allowed[l]: (K_{l-1}, K_l) — level-l label under level-(l-1) label (padded paths)
        for level in range(1, self.num_levels):
            allowed = torch.zeros(self.level_sizes[level - 1], self.level_sizes[level], dtype=torch.bool)
            allowed[targets[:, level - 1], targets[:, level]] = True
            self.register_buffer(f"allowed_{level}", allowed, persistent=False)

    def forward(self, features: torch.Tensor, targets: torch.Tensor | None = None) -> HeadOutput:
        emb = self.embed(features)
        extras = {}
        for level, weight in enumerate(self.weights):
            cos = cosine_logits(emb, weight)
            extras[f"level_{level + 1}"] = self.scales[level] * cos
            if targets is not None:
                level_target = self.class_level_targets[targets.long(), level]
                margin = additive_angular_margin(
                    cos, F.one_hot(level_target, cos.shape[1]).bool(), self.margin
                )
                extras[f"loss_level_{level + 1}"] = self.scales[level] * margin
        leaf = extras[f"level_{self.num_levels}"][:, self.class_level_targets[:, -1]]
        return HeadOutput(logits=leaf, embeddings=emb, extras=extras)

    def level_logits(self, output: HeadOutput, for_loss: bool = False) -> list[torch.Tensor]:
        """Per-level logits: margin-free (prediction), or with ``for_loss`` the margin logits when the
        forward saw targets."""

        def pick(level: int) -> torch.Tensor:
            plain = output.extras[f"level_{level}"]
            return output.extras.get(f"loss_level_{level}", plain) if for_loss else plain

        return [pick(level + 1).float() for level in range(self.num_levels)]

    def loss(self, output: HeadOutput, batch: Batch) -> dict[str, torch.Tensor]:
        terms = {}
        for level, logits in enumerate(self.level_logits(output, for_loss=True)):
            column = self.class_level_targets[:, level]
            if batch.soft_targets is not None:
                to_level = F.one_hot(column, logits.shape[1]).float()  # (C, K_l)
                target = batch.soft_targets.float() @ to_level
                if self.label_smoothing > 0:
                    target = target * (1 - self.label_smoothing) + self.label_smoothing / logits.shape[1]
                ce = torch.sum(-target * logits.log_softmax(dim=1), dim=1).mean()
            else:
                ce = F.cross_entropy(
                    logits, column[batch.targets.long()], label_smoothing=self.label_smoothing
                )
            terms[f"ce_level_{level + 1}"] = self.level_weights[level] * ce
        return terms

    def scale_logits(self, output: HeadOutput, temperature: float | torch.Tensor) -> HeadOutput:
        """Temperature scaling of every level's logits (``predict`` reads ``extras['level_ℓ']``)."""
        extras = {
            k: v.float() / temperature if k.startswith("level_") else v for k, v in output.extras.items()
        }
        return replace(output, logits=output.logits.float() / temperature, extras=extras)

    def predict_levels(self, output: HeadOutput) -> list[torch.Tensor]:
        """Per-level probabilities ``(B, K_ℓ)``, labels in ``taxonomy.level_nodes()[ℓ-1]`` order."""
        return [logits.softmax(dim=1) for logits in self.level_logits(output)]

    def predict(self, output: HeadOutput) -> torch.Tensor:
        """``(B, C)`` class probabilities according to ``decode``."""
        logits = self.level_logits(output)
        cols = self.class_level_targets
        leaf_logits = logits[-1][:, cols[:, -1]]
        if self.decode == "joint":
            score = sum(lg.log_softmax(dim=1)[:, cols[:, level]] for level, lg in enumerate(logits))
            return torch.softmax(score, dim=1)
        if self.decode == "leaf" or self.num_levels == 1:
            return leaf_logits.softmax(dim=1)
        chosen = logits[0].argmax(dim=1)  # top_down: greedy, each level restricted to the children
        for level in range(1, self.num_levels - 1):
            allowed = getattr(self, f"allowed_{level}")[chosen]  # (B, K_l)
            chosen = logits[level].masked_fill(~allowed, float("-inf")).argmax(dim=1)
        allowed = getattr(self, f"allowed_{self.num_levels - 1}")[chosen][:, cols[:, -1]]  # (B, C)
        return leaf_logits.masked_fill(~allowed, float("-inf")).softmax(dim=1)

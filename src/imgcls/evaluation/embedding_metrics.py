"""Geometry of learned representations: intra-class compactness and inter-class separation.

The two helper metrics of seed 003 (DRA-Net, SPEC §4.2, §4.6 item 4):

- **compactness** = mean over classes of the mean Euclidean distance of a class's samples to
  their class mean (lower is tighter);
- **separation** = mean over unordered pairs of class centres of (1 − cosine similarity)
  (higher is more spread out; 0 = all centres point the same way, 1 = orthogonal on average).

The seed measured both on the backbone features only, so they never saw what its head does;
we measure them on the backbone features *and* on the head's embeddings (e.g. FCH's refined
features, DRA's ``combined``), and also report compactness divided by the mean distance
between class centres, which — unlike raw compactness — does not change when the embedding is
rescaled (our addition).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from imgcls.evaluation.evaluate import EvalContext


def class_means(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, D)`` means of the K classes present in ``labels`` and those class ids ``(K,)``."""
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), x.shape[1], dtype=x.dtype).index_add_(0, inverse, x)
    counts = torch.bincount(inverse, minlength=len(classes)).to(x.dtype)
    return sums / counts[:, None], classes


def compactness(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean Euclidean distance of the class's samples to its mean."""
    x = x.double()
    means, classes = class_means(x, labels)
    inverse = torch.searchsorted(classes, labels)
    dist = (x - means[inverse]).norm(dim=1)
    per_class = torch.zeros(len(classes), dtype=x.dtype).index_add_(0, inverse, dist)
    per_class /= torch.bincount(inverse, minlength=len(classes)).to(x.dtype)
    return float(per_class.mean())


def separation(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over unordered pairs of class centres of ``1 − cos(μ_i, μ_j)`` (NaN with < 2 classes)."""
    means, _ = class_means(x.double(), labels)
    k = means.shape[0]
    if k < 2:
        return float("nan")
    unit = F.normalize(means, dim=1)
    cos = unit @ unit.T
    i, j = torch.triu_indices(k, k, offset=1)
    return float((1.0 - cos[i, j]).mean())


def embedding_geometry(x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Compactness, separation and scale-free relative compactness of ``x`` ``(N, D)`` under ``labels``."""
    x = x.double()
    means, _ = class_means(x, labels)
    k = means.shape[0]
    centre_dist = float(torch.pdist(means).mean()) if k > 1 else float("nan")
    comp = compactness(x, labels)
    return {
        "dim": int(x.shape[1]),
        "compactness": comp,
        "separation": separation(x, labels),
        "mean_centre_distance": centre_dist,
        "relative_compactness": comp / centre_dist if k > 1 and centre_dist > 0 else float("nan"),
    }


def embedding_metrics_extension(ctx: EvalContext) -> None:
    """METRIC_EXTENSIONS entry: ``metrics["embedding_geometry"]`` of the head embeddings and, when they
    differ from them, the unrefined features (backbone output, or FCH's embeddings before refinement)."""
    preds = ctx.preds
    out: dict[str, dict[str, float | None]] = {}
    same = preds.features is not None and preds.features.shape == preds.embeddings.shape
    if preds.features is not None and not (same and torch.allclose(preds.features, preds.embeddings)):
        out["features"] = embedding_geometry(preds.features, preds.targets)
    out["head_embeddings"] = embedding_geometry(preds.embeddings, preds.targets)
    # JSON has no NaN: undefined values (fewer than two classes) become null
    ctx.metrics["embedding_geometry"] = {
        k: {m: None if v != v else v for m, v in row.items()} for k, row in out.items()
    }
    if "features" in out:
        ctx.metrics["embedding_geometry"]["features"]["name"] = preds.features_name

"""Classification metrics from predicted probabilities (torchmetrics implementations).

accuracy and top-k, macro/weighted precision, recall and F1, per-class P/R/F1/support,
confusion matrix, one-vs-rest ROC-AUC (macro and weighted), negative log-likelihood and
expected calibration error (ECE, L1 over equal-width confidence bins; the bin count is stated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def topk_accuracy(probs: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    k = min(k, probs.shape[1])
    return float((probs.topk(k, dim=1).indices == targets[:, None]).any(dim=1).float().mean())


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> float:
    """ECE (L1): Σ_b (n_b / N) · |accuracy_b − confidence_b| over ``bins`` equal-width confidence bins."""
    probs = torch.as_tensor(probs).float()
    targets = torch.as_tensor(targets).long()
    return float(
        multiclass_calibration_error(probs, targets, num_classes=probs.shape[1], n_bins=bins, norm="l1")
    )


def classification_metrics(
    probs: torch.Tensor,
    targets: torch.Tensor,
    class_names: list[str],
    top_k: list[int] = (1, 3, 5),
    calibration_bins: int = 15,
) -> dict:
    """All flat-classification metrics as a JSON-serialisable dict."""
    probs = probs.float()
    c = probs.shape[1]
    kw = {"num_classes": c}
    per_p = multiclass_precision(probs, targets, average="none", **kw)
    per_r = multiclass_recall(probs, targets, average="none", **kw)
    per_f = multiclass_f1_score(probs, targets, average="none", **kw)
    support = torch.bincount(targets, minlength=c)
    present = support > 0
    out = {
        "num_samples": int(targets.numel()),
        "accuracy": float(multiclass_accuracy(probs, targets, average="micro", **kw)),
        "balanced_accuracy": float(multiclass_accuracy(probs, targets, average="macro", **kw)),
        **{f"top{k}_accuracy": topk_accuracy(probs, targets, k) for k in top_k if k > 1},
        "macro_precision": float(per_p[present].mean()),
        "macro_recall": float(per_r[present].mean()),
        "macro_f1": float(per_f[present].mean()),
        "weighted_f1": float(multiclass_f1_score(probs, targets, average="weighted", **kw)),
        "nll": float(F.nll_loss(probs.clamp_min(1e-12).log(), targets)),
        "ece": expected_calibration_error(probs, targets, calibration_bins),
        "ece_bins": calibration_bins,
        "per_class": {
            name: {
                "precision": float(per_p[i]),
                "recall": float(per_r[i]),
                "f1": float(per_f[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": multiclass_confusion_matrix(probs, targets, **kw).tolist(),
    }
    if bool(present.all()):
        out["roc_auc_macro"] = float(multiclass_auroc(probs, targets, average="macro", **kw))
        out["roc_auc_weighted"] = float(multiclass_auroc(probs, targets, average="weighted", **kw))
    return out

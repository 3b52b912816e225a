"""Classification metrics from predicted probabilities (torchmetrics implementations).

accuracy and top-k, macro/weighted precision, recall and F1, per-class P/R/F1/support,
confusion matrix, one-vs-rest ROC-AUC (macro and weighted), negative log-likelihood and
expected calibration error (ECE, L1 over equal-width confidence bins; the bin count is stated).

A top-k accuracy with k ≥ the number of classes is always 1.0, so it is not reported (one warning names the
dropped ks); metrics are never computed on non-finite probabilities (:func:`require_finite_probs`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from imgcls.errors import CheckpointError

log = logging.getLogger(__name__)


def _torchmetrics():
    """torchmetrics' classification functions, imported on first use: importing torchmetrics imports all of
    its domains (audio and image pull in scipy.signal), 3-6 s that ``imgcls predict`` or a config error used to
    pay at start-up."""
    from torchmetrics.functional import classification

    return classification


def topk_accuracy(probs: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Share of rows whose target is among the ``k`` most probable classes (k is capped at the class count)."""
    k = min(k, probs.shape[1])
    return float((probs.topk(k, dim=1).indices == targets[:, None]).any(dim=1).float().mean())


def reportable_top_k(top_k: Sequence[int], num_classes: int) -> tuple[list[int], list[int]]:
    """``(kept, dropped)``: the ks worth a top-k accuracy (1 < k < ``num_classes``; top-1 is the accuracy)
    and those dropped because with k ≥ ``num_classes`` classes every prediction is a hit."""
    ks = sorted({int(k) for k in top_k if k > 1})
    return [k for k in ks if k < num_classes], [k for k in ks if k >= num_classes]


def require_finite_probs(probs: torch.Tensor, run_dir: Path | str, checkpoint: str, images: str) -> None:
    """Refuse to compute metrics on NaN/Inf probabilities: a one-line :class:`CheckpointError` naming the run
    and how many of its ``images`` (e.g. "test") got them. Callers check the weights first (non-finite
    weights are a damaged checkpoint, said so by ``evaluation.evaluate``)."""
    bad = int((~torch.isfinite(probs)).flatten(1).any(dim=1).sum()) if probs.numel() else 0
    if bad:
        raise CheckpointError(
            f"the '{checkpoint}' checkpoint of {run_dir} gives non-finite class probabilities for {bad} of "
            f"{len(probs)} {images} images, so no metrics were computed; with finite weights the forward pass "
            f"overflowed: evaluate in full precision (`imgcls evaluate {run_dir} --data train.precision=fp32`) "
            "or retrain with a lower optim.lr or train.grad_clip"
        )


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> float:
    """ECE (L1): Σ_b (n_b / N) · |accuracy_b − confidence_b| over ``bins`` equal-width confidence bins."""
    probs = torch.as_tensor(probs).float()
    targets = torch.as_tensor(targets).long()
    tm = _torchmetrics()
    return float(
        tm.multiclass_calibration_error(probs, targets, num_classes=probs.shape[1], n_bins=bins, norm="l1")
    )


def classification_metrics(
    probs: torch.Tensor,
    targets: torch.Tensor,
    class_names: list[str],
    top_k: list[int] = (1, 3, 5),
    calibration_bins: int = 15,
) -> dict:
    """All flat-classification metrics as a JSON-serialisable dict (``top_k``: see :func:`reportable_top_k`;
    a dropped k is named in one warning)."""
    probs = probs.float()
    c = probs.shape[1]
    ks, dropped = reportable_top_k(top_k, c)
    if dropped:
        log.warning(
            "warning: not reporting top-k accuracy for k = %s (eval.top_k): with %d classes it is always 1.0",
            ", ".join(map(str, dropped)),
            c,
        )
    kw = {"num_classes": c}
    tm = _torchmetrics()
    per_p = tm.multiclass_precision(probs, targets, average="none", **kw)
    per_r = tm.multiclass_recall(probs, targets, average="none", **kw)
    per_f = tm.multiclass_f1_score(probs, targets, average="none", **kw)
    support = torch.bincount(targets, minlength=c)
    present = support > 0
    out = {
        "num_samples": int(targets.numel()),
        "accuracy": float(tm.multiclass_accuracy(probs, targets, average="micro", **kw)),
        "balanced_accuracy": float(tm.multiclass_accuracy(probs, targets, average="macro", **kw)),
        **{f"top{k}_accuracy": topk_accuracy(probs, targets, k) for k in ks},
        "macro_precision": float(per_p[present].mean()),
        "macro_recall": float(per_r[present].mean()),
        "macro_f1": float(per_f[present].mean()),
        "weighted_f1": float(tm.multiclass_f1_score(probs, targets, average="weighted", **kw)),
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
        "confusion_matrix": tm.multiclass_confusion_matrix(probs, targets, **kw).tolist(),
    }
    if bool(present.all()):
        out["roc_auc_macro"] = float(tm.multiclass_auroc(probs, targets, average="macro", **kw))
        out["roc_auc_weighted"] = float(tm.multiclass_auroc(probs, targets, average="weighted", **kw))
    return out

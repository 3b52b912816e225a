"""The held-out evaluation set (seed 001, SPEC §2.5, §2.7): ``data.holdout_per_class`` unused training
images per class, carved out before training (so no sampler could ever draw them), evaluated once
beside the test set with the same checkpoint. Metrics go under ``metrics["holdout"]`` and into the
report (an extra table with the summary and one with per-class accuracy); the data's layout notes
(e.g. a test set carved out of a train-only tree) go into the report's notes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgcls.data.prepare import make_loader
from imgcls.evaluation.metrics import classification_metrics, reportable_top_k, require_finite_probs
from imgcls.evaluation.predict import predict_loader
from imgcls.evaluation.report import SUMMARY_KEYS

if TYPE_CHECKING:
    from imgcls.evaluation.evaluate import EvalContext

SUMMARY = ("accuracy", "balanced_accuracy", "top5_accuracy", "macro_f1", "nll", "ece")
TITLE = "Hold-out set (unused training images)"


def holdout_metrics(ctx: EvalContext) -> dict[str, Any] | None:
    """Classification metrics of the evaluated model on the run's hold-out images (None when it has none)."""
    holdout = ctx.data.holdout
    if holdout is None or len(holdout) == 0:
        return None
    cfg = ctx.cfg
    loader = make_loader(
        holdout, ctx.data, cfg, train=False, batch_size=cfg.eval.batch_size or cfg.train.batch_size
    )
    preds = predict_loader(ctx.model, loader, ctx.prep, ctx.device, ctx.autocast, tta=cfg.eval.tta)
    require_finite_probs(preds.probs, ctx.run_dir, ctx.metrics["checkpoint"], "hold-out")
    top_k, _ = reportable_top_k(cfg.eval.top_k, len(ctx.class_names))  # the test set's metrics warned already
    full = classification_metrics(
        preds.probs, preds.targets, ctx.class_names, top_k, cfg.eval.calibration_bins
    )
    out = {"num_samples": full["num_samples"], "per_class_size": cfg.data.holdout_per_class}
    out.update({k: full[k] for k in SUMMARY if k in full})
    out["per_class_accuracy"] = {
        name: r["recall"] for name, r in full["per_class"].items() if r["support"] > 0
    }
    out["confusion_matrix"] = full["confusion_matrix"]
    return out


def holdout_extension(ctx: EvalContext) -> None:
    """Adds ``metrics["holdout"]`` and its report tables; copies the data's notes into the report."""
    ctx.notes.extend(n for n in ctx.data.notes if n not in ctx.notes)
    result = holdout_metrics(ctx)
    if result is None:
        return
    ctx.metrics["holdout"] = result
    tables = ctx.metrics.setdefault("extra_tables", {})
    labels = dict(SUMMARY_KEYS)
    tables[TITLE] = {
        "images": result["num_samples"],
        **{labels.get(k, k): result[k] for k in SUMMARY if k in result},
        "test accuracy (for comparison)": ctx.metrics.get("accuracy"),
    }
    tables[f"{TITLE}: accuracy per class"] = dict(result["per_class_accuracy"])

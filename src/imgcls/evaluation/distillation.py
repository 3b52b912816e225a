"""Evaluation of distilled and two-token students (seed 004, SPEC §5.4/§5.6): which classifier the
reported prediction uses, CLS-only / DIST-only / averaged accuracy of a ``deit_dist`` head, and —
when the run names a logit teacher — the teacher's own test accuracy and the fraction of test
images on which student and teacher predict the same class (``metrics["distillation"]``).

CLS/DIST accuracies come from the backbone features already captured by the test pass
(``Predictions.features``, the head's input; first TTA view), so they cost no second student
forward. The teacher runs once over the test set on unit-range images, normalising them itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from imgcls.data.prepare import make_loader
from imgcls.errors import UserError
from imgcls.models.heads.two_token import TwoTokenHead
from imgcls.teacher import load_teacher

if TYPE_CHECKING:
    from imgcls.evaluation.evaluate import EvalContext


def two_token_accuracies(
    head: TwoTokenHead, features: torch.Tensor, targets: torch.Tensor
) -> dict[str, float]:
    """Accuracy of the CLS classifier, the DIST classifier and their logit average on ``[CLS, DIST]`` features."""
    with torch.no_grad():
        feats = features.to(head.head.weight.device, head.head.weight.dtype)
        d = head.token_dim
        cls_logits, dist_logits = (
            head.head(feats[:, :d]).float().cpu(),
            head.head_dist(feats[:, d:]).float().cpu(),
        )
    acc = lambda logits: float((logits.argmax(-1) == targets).float().mean())  # noqa: E731
    return {
        "cls_acc": acc(cls_logits),
        "dist_acc": acc(dist_logits),
        "avg_acc": acc((cls_logits + dist_logits) / 2),
        "cls_dist_agreement": float((cls_logits.argmax(-1) == dist_logits.argmax(-1)).float().mean()),
    }


@torch.no_grad()
def teacher_predictions(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(test indices, teacher logits) over the whole test set, and the teacher."""
    teacher = load_teacher(ctx.cfg.distill, ctx.class_names, ctx.device, ctx.cfg.data.invert)
    batch_size = ctx.cfg.eval.batch_size or ctx.cfg.train.batch_size
    loader = make_loader(
        ctx.data.test, ctx.data, ctx.cfg, train=False, batch_size=batch_size, device=ctx.device
    )
    index, logits = [], []
    for batch in loader:
        batch = batch.to(ctx.device)
        unit = ctx.prep.to_unit(batch.images)
        with ctx.autocast():
            logits.append(teacher.logits(unit, ctx.prep.normalize(unit)).float().cpu())
        index.append(batch.index.cpu())
    index_t, logits_t = torch.cat(index), torch.cat(logits)
    order = torch.argsort(index_t)
    return index_t[order], logits_t[order], teacher


def distillation_extension(ctx: EvalContext) -> None:
    head = ctx.model.head
    cfg = ctx.cfg.distill
    if not isinstance(head, TwoTokenHead) and not cfg.teacher:
        return
    out: dict[str, Any] = {}
    if isinstance(head, TwoTokenHead):
        out["inference"] = head.inference
        if ctx.preds.features is not None:
            out.update(two_token_accuracies(head, ctx.preds.features, ctx.preds.targets))
    if cfg.teacher:
        out["teacher"] = cfg.teacher
        out["logits"] = cfg.logits
        out["tokens"] = cfg.tokens is not None
    if cfg.teacher and cfg.logits != "none":
        try:
            index, teacher_logits, teacher = teacher_predictions(ctx)
        except UserError as exc:  # e.g. the teacher's run was moved away since training
            ctx.notes.append(f"teacher metrics skipped: {exc}")
        else:
            if torch.equal(index, ctx.preds.index):
                t_pred = teacher_logits.argmax(-1)
                out["teacher_acc"] = float((t_pred == ctx.preds.targets).float().mean())
                out["teacher_agreement"] = float((t_pred == ctx.preds.probs.argmax(-1)).float().mean())
                out["teacher_normalization"] = teacher.normalization
    ctx.metrics["distillation"] = out

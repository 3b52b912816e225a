"""How much a batch-graph head's predictions depend on the rest of the batch (FCH, seed 000;
SPEC §1.5 and §7.2).

For heads that expose a settable ``eval_graph`` (``batch`` | ``self`` | ``memory``), the test set is
predicted again in every inference mode at the evaluation batch size, and in ``batch`` mode at
batch size 1 (on a stratified subset of at most ``B1_MAX_IMAGES`` images, since B = 1 costs one
forward pass per image). The report states which mode produced the headline number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgcls.data.prepare import make_loader
from imgcls.data.splits import stratified_subset
from imgcls.errors import ConfigError
from imgcls.evaluation.predict import predict_loader

if TYPE_CHECKING:
    from imgcls.evaluation.evaluate import EvalContext

B1_MAX_IMAGES = 2000


def _accuracy(ctx: EvalContext, data, batch_size: int) -> float:
    loader = make_loader(data, ctx.data, ctx.cfg, train=False, batch_size=batch_size, device=ctx.device)
    preds = predict_loader(ctx.model, loader, ctx.prep, ctx.device, ctx.autocast)
    return float((preds.probs.argmax(1) == preds.targets).float().mean())


def batch_dependence_extension(ctx: EvalContext) -> None:
    head = ctx.model.head
    if head.inference_mode == "sample" or not hasattr(head, "eval_graph"):
        return
    configured = head.eval_graph
    batch_size = int(ctx.metrics["eval_batch_size"])
    rows: dict[str, float] = {f"{configured} graph, B={batch_size} (headline)": ctx.metrics["accuracy"]}
    try:
        for mode in ("batch", "self", "memory"):
            if mode == configured:
                continue
            try:
                head.eval_graph = mode
            except (ConfigError, ValueError) as exc:
                ctx.notes.append(f"eval_graph={mode} not evaluated: {exc}")
                continue
            rows[f"{mode} graph, B={batch_size}"] = _accuracy(ctx, ctx.data.test, batch_size)
        head.eval_graph = "batch"
        subset = ctx.data.test.subset(stratified_subset(ctx.data.test.labels, B1_MAX_IMAGES, seed=0))
        rows[f"batch graph, B=1 ({len(subset)} test images)"] = _accuracy(ctx, subset, 1)
    finally:
        head.eval_graph = configured
    ctx.metrics["batch_dependence"] = rows
    ctx.metrics.setdefault("extra_tables", {})["Batch dependence of the head's predictions (accuracy)"] = rows
    ctx.notes.append(
        f"The head builds a graph over the evaluation batch: the headline accuracy uses eval_graph={configured} at batch "
        f"size {batch_size}; other modes and B=1 are in the batch-dependence table."
    )

"""evaluation/batch_graph.py: the batch-dependence table of batch-graph heads (FCH) and its absence
for ordinary heads."""

from __future__ import annotations

import torch

from imgcls.config import load_config
from imgcls.data.images import ImageData
from imgcls.data.prepare import PreparedData
from imgcls.data.preprocess import Preprocess
from imgcls.evaluation.batch_graph import batch_dependence_extension
from imgcls.evaluation.evaluate import EvalContext
from imgcls.models.classifier import build_model


def _context(head: str, head_args: dict) -> EvalContext:
    torch.manual_seed(0)
    labels = torch.arange(40) % 4
    images = (labels.view(-1, 1, 1, 1) * 60 + torch.randint(0, 20, (40, 1, 8, 8))).to(torch.uint8)
    test = ImageData(labels=labels, class_names=list("abcd"), images=images)
    data = PreparedData(test, test, test, list("abcd"), 8, 1, [0.5], [0.25])
    cfg = load_config(
        None, ["model.backbone=adaptive_cnn", "model.backbone_args={width_mult: 0.25}", f"model.head={head}"]
    )
    model = build_model(cfg.model.model_copy(update={"head_args": head_args}), 4, 1).eval()
    device = torch.device("cpu")
    metrics = {"accuracy": 0.5, "eval_batch_size": 16}
    return EvalContext(
        model,
        cfg,
        data,
        None,
        device,
        Preprocess.from_meta(data.preprocess, device),
        None,
        list("abcd"),
        metrics,
    )


def test_fch_head_gets_every_mode_and_batch_size_one_and_keeps_its_mode():
    ctx = _context("fch", {"adjacency": "rbf", "eval_graph": "batch"})
    batch_dependence_extension(ctx)
    rows = ctx.metrics["batch_dependence"]
    assert set(rows) == {
        "batch graph, B=16 (headline)",
        "self graph, B=16",
        "memory graph, B=16",
        "batch graph, B=1 (40 test images)",
    }
    assert all(0.0 <= v <= 1.0 for v in rows.values())
    assert ctx.model.head.eval_graph == "batch"  # restored afterwards
    assert ctx.metrics["extra_tables"] and any("eval_graph=batch" in n for n in ctx.notes)


def test_ordinary_head_adds_nothing():
    ctx = _context("linear", {})
    batch_dependence_extension(ctx)
    assert "batch_dependence" not in ctx.metrics and not ctx.notes

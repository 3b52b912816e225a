"""Evaluating a trained model once on the test set: predictions → metrics.json → figures →
report.md (+ ``model.safetensors`` of the evaluated weights).

Figures are plain functions over an :class:`EvalContext`, listed in ``FIGURES``; each returns
the file it wrote (or ``None`` and a note when it does not apply, e.g. Grad-CAM on a model
without convolutions or attention), so a new plot is one more function, not a new code path.

Damaged weights (NaN/Inf) or non-finite outputs stop the evaluation with a one-line CheckpointError before
any metric is computed. ``metrics.json`` is written last and atomically: a run holding it was evaluated
completely (an evaluation stopped part-way leaves none, and ``imgcls compare`` says to evaluate the run).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from imgcls.config import ExperimentConfig
from imgcls.data.decode import record_skipped_files
from imgcls.data.prepare import PreparedData, make_loader
from imgcls.data.preprocess import Preprocess
from imgcls.errors import CheckpointError
from imgcls.evaluation import figures as run_figures
from imgcls.evaluation import image_projection
from imgcls.evaluation.calibration import calibration_extension, fit_on_loader, save_temperature
from imgcls.evaluation.complexity import complexity_extension
from imgcls.evaluation.embedding_metrics import embedding_metrics_extension
from imgcls.evaluation.holdout import holdout_extension
from imgcls.evaluation.metrics import classification_metrics, require_finite_probs
from imgcls.evaluation.plots import plot_confusion, plot_curves, read_history
from imgcls.evaluation.predict import Predictions, predict_loader
from imgcls.evaluation.report import write_report
from imgcls.models.classifier import Classifier, count_parameters
from imgcls.runtime.checkpoint import save_safetensors
from imgcls.runtime.distributed import DistInfo
from imgcls.runtime.precision import autocast, resolve_precision


@dataclass
class EvalContext:
    model: Classifier
    cfg: ExperimentConfig
    data: PreparedData
    run_dir: Path
    device: torch.device
    prep: Preprocess
    preds: Predictions
    class_names: list[str]
    metrics: dict[str, Any]
    taxonomy: Any = None
    notes: list[str] = field(default_factory=list)
    #: the checkpoint's preprocessing record (image_size, channels, mean, std)
    preprocess_meta: dict[str, Any] = field(default_factory=dict)

    def autocast(self):
        return autocast(self.device, resolve_precision(self.cfg.train, self.device))


FigureFn = Callable[[EvalContext], "Path | None"]


def fig_confusion(ctx: EvalContext) -> Path:
    return plot_confusion(ctx.metrics["confusion_matrix"], ctx.class_names, ctx.run_dir / "confusion.png")


def fig_curves(ctx: EvalContext) -> Path | None:
    return plot_curves(read_history(ctx.run_dir / "history.csv"), ctx.run_dir / "curves.png")


def fig_risk_coverage(ctx: EvalContext) -> Path | None:
    """Risk–coverage of confidence-thresholded hierarchical prediction (runs with a taxonomy)."""
    if ctx.taxonomy is None or "hierarchical" not in ctx.metrics:
        return None
    from imgcls.evaluation.hierarchical import plot_risk_coverage

    name = ctx.cfg.output.name or ctx.run_dir.parent.name
    return plot_risk_coverage(
        ctx.metrics["hierarchical"]["risk_coverage"], ctx.run_dir / "risk_coverage.png", title=name
    )


#: (caption, function); functions run in order when ``eval.plots`` is on
FIGURES: list[tuple[str, FigureFn]] = [
    ("Training curves", fig_curves),
    ("Class distribution (train / validation / test)", run_figures.fig_class_distribution),
    ("Confusion matrix", fig_confusion),
    ("Per-class precision, recall and F1", run_figures.fig_per_class),
    ("ROC curves (one-vs-rest)", run_figures.fig_roc),
    ("Reliability diagram", run_figures.fig_reliability),
    ("Most confident mistakes", run_figures.fig_misclassified),
    ("t-SNE of embeddings", run_figures.fig_tsne),
    ("UMAP of embeddings", run_figures.fig_umap),
    ("t-SNE of PCA-compressed training images", image_projection.fig_image_tsne),
    ("UMAP of PCA-compressed training images", image_projection.fig_image_umap),
    ("Grad-CAM", run_figures.fig_gradcam),
    ("Feature maps of the first convolution", run_figures.fig_feature_maps),
    ("Risk–coverage of thresholded hierarchical prediction", fig_risk_coverage),
]


#: the largest batch the inference throughput is timed at
THROUGHPUT_MAX_BATCH = 1024


@torch.no_grad()
def inference_throughput(
    model: Classifier,
    prep: Preprocess,
    device: torch.device,
    image_shape: tuple[int, int, int],
    batch_size: int,
    autocast_fn,
    seconds: float = 1.5,
) -> float:
    """Images per second of ``model`` in eval mode on random uint8 inputs at ``batch_size``, timed over
    ``seconds`` (at least one batch after a warm-up one)."""
    model.eval()
    images = torch.randint(0, 256, (batch_size, *image_shape), dtype=torch.uint8, device=device)
    with autocast_fn():
        model(prep(images))  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n == 0:
        with autocast_fn():
            model(prep(images))
        n += batch_size
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - start)


def require_finite_weights(model: Classifier, run_dir: Path, checkpoint: str) -> None:
    """A checkpoint with NaN/Inf weights or buffers is damaged: one line naming them, before any prediction."""
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(
            f"the '{checkpoint}' checkpoint of {run_dir} has non-finite weights ({shown}), so it cannot be "
            f"used; the file is damaged: evaluate another checkpoint (`imgcls evaluate {run_dir} "
            "--checkpoint last`) or train the run again"
        )


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path`` (never half written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def evaluate_model(
    model: Classifier,
    cfg: ExperimentConfig,
    data: PreparedData,
    run_dir: Path,
    *,
    device: torch.device,
    dist: DistInfo,
    taxonomy,
    checkpoint: str,
    checkpoint_detail: str,
    preprocess: dict[str, Any],
    class_names: list[str],
    train_time_s: float,
    checkpoint_identity: dict[str, int] | None = None,
    evaluation_overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Predict the test set once, write metrics.json, figures and report.md; ``evaluation_overrides`` (the
    ``imgcls evaluate --data`` items) are recorded in both, so that a re-evaluation on other data is never
    mistaken for the run's own test result (``imgcls compare`` gives it a row of its own)."""
    require_finite_weights(model, run_dir, checkpoint)
    model = model.to(device).eval()
    prep = Preprocess.from_meta(preprocess, device)
    batch_size = cfg.eval.batch_size or cfg.train.batch_size
    loader = make_loader(
        data.test,
        data,
        cfg,
        train=False,
        batch_size=batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        device=device,
    )
    amp = lambda: autocast(device, resolve_precision(cfg.train, device))  # noqa: E731
    start = time.perf_counter()
    fit = None
    if cfg.eval.calibration == "temperature" and len(
        data.val
    ):  # fitted on validation, applied to the test set
        val_loader = make_loader(
            data.val,
            data,
            cfg,
            train=False,
            batch_size=batch_size,
            rank=dist.rank,
            world_size=dist.world_size,
            device=device,
        )
        fit = fit_on_loader(model, val_loader, prep, device, amp, dist)
    temperature = fit.temperature if fit is not None else 1.0
    preds = predict_loader(
        model, loader, prep, device, amp, dist, tta=cfg.eval.tta, with_features=True, temperature=temperature
    )
    require_finite_probs(preds.probs, run_dir, checkpoint, "test")
    metrics = classification_metrics(
        preds.probs, preds.targets, class_names, cfg.eval.top_k, cfg.eval.calibration_bins
    )
    if fit is not None:
        metrics["calibration"] = asdict(fit)
    metrics.update(
        checkpoint=checkpoint,
        checkpoint_detail=checkpoint_detail,
        train_time_s=train_time_s,
        eval_time_s=time.perf_counter() - start,
        params=count_parameters(model),
        trainable_params=count_parameters(model, trainable_only=True),
        eval_batch_size=batch_size,
        head_inference_mode=model.head.inference_mode,
        tta_views=cfg.eval.tta,
    )
    if not dist.is_main:
        return metrics
    ctx_notes: list[str] = []
    if evaluation_overrides:
        metrics["evaluation_overrides"] = list(evaluation_overrides)
        ctx_notes.append(
            f"evaluated with `imgcls evaluate --data {' '.join(evaluation_overrides)}` on "
            f"{metrics.get('num_samples', '?')} test images, not the test data the run was trained for."
        )
    skipped = record_skipped_files(run_dir, set(data.skipped_files) | set(getattr(loader, "skipped", set())))
    if skipped:
        metrics["skipped_files"] = len(skipped)
        ctx_notes.append(
            f"{len(skipped)} unreadable image file(s) were skipped (training and test data), e.g. "
            f"`{skipped[0]}`; all are listed in skipped_files.txt."
        )
    shape = (int(preprocess["channels"]), int(preprocess["image_size"]), int(preprocess["image_size"]))
    # timed at the evaluation batch, but never above the test set or THROUGHPUT_MAX_BATCH: a batch of 100,000
    # random images (train.batch_size larger than the data) would take minutes to time and gigabytes to hold
    timed_batch = max(1, min(batch_size, len(data.test), THROUGHPUT_MAX_BATCH))
    metrics["inference_img_per_s"] = inference_throughput(
        model, prep, device, shape, timed_batch, amp, seconds=cfg.eval.throughput_s
    )
    metrics["inference_batch_size"] = timed_batch
    ctx = EvalContext(
        model,
        cfg,
        data,
        run_dir,
        device,
        prep,
        preds,
        class_names,
        metrics,
        taxonomy,
        notes=ctx_notes,
        preprocess_meta=preprocess,
    )
    for extend in METRIC_EXTENSIONS:
        extend(ctx)
    figures: dict[str, str] = {}
    if cfg.eval.plots:
        times = metrics.setdefault("figure_time_s", {})
        for caption, fn in FIGURES:
            started = time.perf_counter()
            path = fn(ctx)
            if path is not None:
                figures[caption] = Path(path).name
                times[Path(path).name] = round(time.perf_counter() - started, 3)
    save_safetensors(model.state_dict(), run_dir / "model.safetensors", metadata={"checkpoint": checkpoint})
    if fit is not None:
        save_temperature(run_dir, checkpoint, fit, checkpoint_identity or {})
    write_report(run_dir, metrics, cfg.model_dump(mode="json"), figures, ctx.notes)
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))  # last: the run is evaluated
    return metrics


def hierarchical_extension(ctx: EvalContext) -> None:
    """Hierarchical metrics whenever the run has a taxonomy (flat heads: leaf probabilities summed up the tree)."""
    if ctx.taxonomy is None:
        return
    from imgcls.evaluation.hierarchical import hierarchical_metrics

    ctx.metrics["hierarchical"] = hierarchical_metrics(
        ctx.preds.probs,
        ctx.preds.targets,
        ctx.taxonomy,
        node_probs=ctx.preds.node_probs,
        threshold=ctx.cfg.eval.hier_threshold,
    )


def batch_graph_extension(ctx: EvalContext) -> None:
    from imgcls.evaluation.batch_graph import batch_dependence_extension

    batch_dependence_extension(ctx)


def distillation_extension(ctx: EvalContext) -> None:
    from imgcls.evaluation.distillation import distillation_extension as extend

    extend(ctx)


#: functions adding metrics to the context before figures are drawn
METRIC_EXTENSIONS: list[Callable[[EvalContext], None]] = [
    hierarchical_extension,
    calibration_extension,
    batch_graph_extension,
    distillation_extension,
    complexity_extension,
    embedding_metrics_extension,
    holdout_extension,
]

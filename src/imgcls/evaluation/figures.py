"""The figures of an evaluated run: adapters from an :class:`~imgcls.evaluation.evaluate.EvalContext` to the
plotting functions of :mod:`imgcls.evaluation.plots` (class distribution, ROC, reliability, per-class scores,
the most confident mistakes, t-SNE / UMAP of embeddings, Grad-CAM, first-conv feature maps; SPEC §4.4, §4.6 item 4, §5.6), and
the helpers that choose which samples they show. Each ``fig_*`` returns the file written, or None after
adding a note saying why it was skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from imgcls.data.splits import stratified_subset
from imgcls.errors import DataError
from imgcls.evaluation.plots import (
    plot_class_distribution,
    plot_embeddings,
    plot_feature_maps,
    plot_gradcam,
    plot_misclassified,
    plot_per_class,
    plot_reliability,
    plot_roc,
)
from imgcls.evaluation.projection import embed_2d

if TYPE_CHECKING:
    from imgcls.evaluation.evaluate import EvalContext


# ------------------------------------------------------------------------------------------------ sample choice
def stratified_sample(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ≤ ``n`` samples with the classes in proportion (uniform when a class is too small to stratify)."""
    labels = labels.cpu()
    if n >= len(labels):
        return torch.arange(len(labels))
    try:
        return stratified_subset(labels, n, seed)[:n]
    except DataError:
        return torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n].sort().values


def most_confident_mistakes(probs, targets, n: int) -> torch.Tensor:
    """Indices of the ≤ ``n`` misclassified samples with the highest predicted probability, most confident first."""
    probs, targets = torch.as_tensor(probs), torch.as_tensor(targets)
    conf, pred = probs.max(dim=1)
    wrong = (pred != targets).nonzero().flatten()
    order = torch.argsort(conf[wrong], descending=True, stable=True)
    return wrong[order][:n]


# ------------------------------------------------------------------------------------------------ from a run
def evaluated_images(ctx: EvalContext, positions: torch.Tensor) -> torch.Tensor:
    """uint8 ``(K, C, H, W)`` test images at ``positions`` of the evaluated set (decoded when file-backed)."""
    test = ctx.data.test
    if test.images is not None:
        return test.images[positions.cpu()]
    from imgcls.data.decode import decode_image

    return torch.stack(
        [decode_image(test.files[int(i)], ctx.data.image_size, ctx.data.channels) for i in positions]
    )


SPLITS = ("train", "val", "test")


def split_class_counts(labels: dict[str, torch.Tensor], num_classes: int) -> dict[str, list[int]]:
    """Images per class of each split (``{split: labels (N,)}`` → ``{split: [count per class]}``)."""
    return {
        split: torch.bincount(y.cpu().long(), minlength=num_classes).tolist() for split, y in labels.items()
    }


def fig_class_distribution(ctx: EvalContext) -> Path:
    """Train / validation / test images per class; the counts also go to ``metrics.json`` (``class_counts``)."""
    labels = {split: getattr(ctx.data, split).labels for split in SPLITS}
    counts = split_class_counts(labels, len(ctx.class_names))
    ctx.metrics["class_counts"] = counts
    return plot_class_distribution(counts, ctx.class_names, ctx.run_dir / "class_distribution.png")


def fig_roc(ctx: EvalContext) -> Path | None:
    if "roc_auc_macro" not in ctx.metrics:
        ctx.notes.append(
            "ROC curves skipped: some class has no test sample, so one-vs-rest ROC is undefined for it."
        )
        return None
    return plot_roc(ctx.preds.probs, ctx.preds.targets, ctx.class_names, ctx.run_dir / "roc.png")


def fig_reliability(ctx: EvalContext) -> Path:
    return plot_reliability(
        ctx.preds.probs,
        ctx.preds.targets,
        ctx.cfg.eval.calibration_bins,
        ctx.run_dir / "reliability.png",
        ece=ctx.metrics.get("ece"),
    )


def fig_per_class(ctx: EvalContext) -> Path:
    return plot_per_class(ctx.metrics["per_class"], ctx.run_dir / "per_class.png")


def fig_misclassified(ctx: EvalContext, count: int = 24) -> Path | None:
    rows = most_confident_mistakes(ctx.preds.probs, ctx.preds.targets, count)
    if len(rows) == 0:
        ctx.notes.append("No misclassified test image: misclassified.png not drawn.")
        return None
    conf, pred = ctx.preds.probs[rows].max(dim=1)
    images = evaluated_images(ctx, ctx.preds.index[rows])
    return plot_misclassified(
        images,
        ctx.preds.targets[rows].tolist(),
        pred.tolist(),
        conf.tolist(),
        ctx.class_names,
        ctx.run_dir / "misclassified.png",
    )


def embedding_panels(ctx: EvalContext) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """(sample rows, [(title, vectors)]): unrefined features and head embeddings side by side when they differ.

    Unrefined features are the backbone's output, or what a refining head starts from (FCH's node
    embeddings before the graph convolution); head embeddings are what the head classifies.
    """
    preds = ctx.preds
    rows = stratified_sample(preds.targets, ctx.cfg.eval.max_plot_samples, seed=0)
    emb = preds.embeddings[rows]
    feats = preds.features[rows] if preds.features is not None else None
    if feats is None or (feats.shape == emb.shape and torch.allclose(feats, emb)):
        return rows, [(f"backbone features = head embeddings (D={emb.shape[1]})", emb)]
    return rows, [
        (f"{preds.features_name} (D={feats.shape[1]})", feats),
        (f"head embeddings (D={emb.shape[1]})", emb),
    ]


def _fig_embeddings(ctx: EvalContext, method: str) -> Path | None:
    if not ctx.cfg.eval.embeddings_plot:
        if method == "tsne":
            ctx.notes.append("t-SNE/UMAP plots skipped (eval.embeddings_plot=false).")
        return None
    rows, panels = embedding_panels(ctx)
    coords = [(title, embed_2d(x, method)) for title, x in panels]
    return plot_embeddings(
        coords, ctx.preds.targets[rows], ctx.class_names, ctx.run_dir / f"embeddings_{method}.png", method
    )


def fig_tsne(ctx: EvalContext) -> Path | None:
    return _fig_embeddings(ctx, "tsne")


def fig_umap(ctx: EvalContext) -> Path | None:
    return _fig_embeddings(ctx, "umap")


def gradcam_samples(targets: torch.Tensor, num_classes: int, count: int) -> torch.Tensor:
    """Rows of the first test image of each class (in class order), then more until ``count``."""
    firsts = [int((targets == c).nonzero()[0]) for c in range(num_classes) if (targets == c).any()]
    rows = firsts[:count]
    taken = set(rows)
    extra = [i for i in range(min(len(targets), 2 * count)) if i not in taken][: max(0, count - len(rows))]
    return torch.as_tensor(rows + extra, dtype=torch.long)


def fig_gradcam(ctx: EvalContext, count: int = 10) -> Path | None:
    from imgcls.evaluation.cam import find_cam_target, grad_cam

    if not ctx.cfg.eval.gradcam:
        ctx.notes.append("Grad-CAM skipped (eval.gradcam=false).")
        return None
    rows = gradcam_samples(ctx.preds.targets, len(ctx.class_names), count)
    images = evaluated_images(ctx, ctx.preds.index[rows])
    inputs = ctx.prep(images.to(ctx.device))
    target = find_cam_target(ctx.model, inputs[:1])
    if target is None:
        ctx.notes.append(
            f"Grad-CAM skipped: backbone `{ctx.cfg.model.backbone}` has no convolutional feature map or attention block."
        )
        return None
    pred = ctx.preds.probs[rows].argmax(dim=1)
    maps = grad_cam(ctx.model, inputs, pred.tolist(), target)
    if float(maps.max()) == 0.0:
        ctx.notes.append(
            f"Grad-CAM skipped: layer `{target.name}` has a 1×1 map at this input size, so the heat map is flat."
        )
        return None
    conf = ctx.preds.probs[rows].max(dim=1).values
    titles = [
        f"true: {ctx.class_names[int(t)]}\npred: {ctx.class_names[int(p)]} ({float(c):.2f})"
        for t, p, c in zip(ctx.preds.targets[rows], pred, conf, strict=True)
    ]
    shown = ctx.prep.to_unit(images.to(ctx.device)).cpu()  # at the model's input size, like the maps
    return plot_gradcam(shown, maps, titles, ctx.run_dir / "gradcam.png", target.name)


@torch.no_grad()
def first_conv_maps(model: torch.nn.Module, inputs: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """(module name, output ``(B, K, h, w)``) of the first ``Conv2d`` a forward pass runs, or None without one."""
    found: list[tuple[torch.nn.Module, torch.Tensor]] = []

    def hook(module, _inputs, output) -> None:
        if not found:
            found.append((module, output.detach()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()
    if not found:
        return None
    module, output = found[0]
    name = next(n for n, m in model.named_modules() if m is module)
    return name, output.float().cpu()


def fig_feature_maps(ctx: EvalContext) -> Path | None:
    rows = gradcam_samples(ctx.preds.targets, len(ctx.class_names), 1)
    images = evaluated_images(ctx, ctx.preds.index[rows])
    ctx.model.eval()
    found = first_conv_maps(ctx.model, ctx.prep(images.to(ctx.device)))
    if found is None:
        ctx.notes.append(f"Feature maps skipped: backbone `{ctx.cfg.model.backbone}` has no convolution.")
        return None
    name, maps = found
    return plot_feature_maps(
        ctx.prep.to_unit(images.to(ctx.device))[0].cpu(), maps[0], ctx.run_dir / "feature_maps.png", name
    )

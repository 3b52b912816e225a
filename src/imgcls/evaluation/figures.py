"""Evaluation figures beyond curves and confusion: ROC, reliability, per-class scores, the most
confident mistakes, t-SNE / UMAP of embeddings, Grad-CAM overlays and first-conv feature maps
(seed 004's ``evaluate``/``test`` outputs, seed 003's t-SNE; SPEC §4.4, §4.6 item 4, §5.6).

Each ``plot_*`` function takes plain arrays and a path and returns the path, so it can be used
and tested without a run; :mod:`imgcls.evaluation.evaluate` feeds them from a run. Matplotlib
(Agg); t-SNE from scikit-learn, UMAP from umap-learn.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from threadpoolctl import threadpool_limits

from imgcls.data.splits import stratified_subset
from imgcls.errors import DataError
from imgcls.evaluation.plots import _save

if TYPE_CHECKING:
    from imgcls.evaluation.evaluate import EvalContext

#: at most this many classes get their own legend entry / colour; beyond it a continuous colormap
MAX_LEGEND_CLASSES = 20


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def class_colors(n: int) -> ListedColormap:
    """Distinct colours for ≤ 20 classes (tab10/tab20), a continuous map beyond."""
    if n <= 10:
        return ListedColormap(plt.get_cmap("tab10").colors[:n])
    if n <= 20:
        return ListedColormap(plt.get_cmap("tab20").colors[:n])
    return ListedColormap(plt.get_cmap("turbo")(np.linspace(0, 1, n)))


def image_for_display(image: torch.Tensor | np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` uint8 or float in [0, 1] → an ``imshow``-ready array and colormap."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(a.astype(np.float32), 0.0, 1.0)
    if a.shape[0] == 1:
        return a[0], "gray"
    return np.transpose(a[:3], (1, 2, 0)), None


def stratified_sample(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ≤ ``n`` samples with the classes in proportion (uniform when a class is too small to stratify)."""
    labels = labels.cpu()
    if n >= len(labels):
        return torch.arange(len(labels))
    try:
        return stratified_subset(labels, n, seed)[:n]
    except DataError:
        return torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n].sort().values


# ------------------------------------------------------------------------------------------------ ROC
def plot_roc(probs, targets, class_names: Sequence[str], path: Path) -> Path:
    """One-vs-rest ROC curve per class, plus the macro average (mean TPR over a common FPR grid)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    p, y = _np(probs).astype(np.float64), _np(targets).astype(int)
    n = len(class_names)
    grid = np.linspace(0.0, 1.0, 201)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    colors = class_colors(n)
    tprs, aucs = [], []
    for c in range(n):
        positives = y == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives, p[:, c])
        auc = float(roc_auc_score(positives, p[:, c]))
        tprs.append(np.interp(grid, fpr, tpr))
        aucs.append(auc)
        if n <= MAX_LEGEND_CLASSES:
            ax.plot(fpr, tpr, lw=1.2, color=colors(c), label=f"{class_names[c]} (AUC {auc:.3f})")
        else:
            ax.plot(fpr, tpr, lw=0.6, color="0.7", alpha=0.5)
    if tprs:
        mean_tpr = np.mean(tprs, axis=0)
        mean_tpr[0] = 0.0
        ax.plot(grid, mean_tpr, lw=2.5, color="black", label=f"macro average (AUC {np.mean(aucs):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.5", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    title = "ROC curves (one-vs-rest)"
    if n > MAX_LEGEND_CLASSES:
        title += f"\n{len(aucs)} classes in grey"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7 if n > 10 else 8)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ calibration
def reliability_bins(probs, targets, bins: int) -> dict[str, np.ndarray]:
    """Equal-width confidence bins over [0, 1] (the last one closed): count, mean confidence, accuracy."""
    p, y = _np(probs).astype(np.float64), _np(targets).astype(int)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    index = np.clip(np.floor(conf * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    return {
        "edges": np.linspace(0.0, 1.0, bins + 1),
        "count": count,
        "confidence": mean_conf,
        "accuracy": accuracy,
    }


def expected_calibration_error(probs, targets, bins: int) -> float:
    """ECE (L1): Σ_b (n_b / N) · |accuracy_b − confidence_b| over equal-width bins."""
    b = reliability_bins(probs, targets, bins)
    used = b["count"] > 0
    weights = b["count"][used] / b["count"].sum()
    return float(np.sum(weights * np.abs(b["accuracy"][used] - b["confidence"][used])))


def plot_reliability(probs, targets, bins: int, path: Path, ece: float | None = None) -> Path:
    """Reliability diagram (accuracy vs confidence per bin, gap to the diagonal) over a confidence histogram."""
    b = reliability_bins(probs, targets, bins)
    ece = expected_calibration_error(probs, targets, bins) if ece is None else ece
    edges, width = b["edges"], 1.0 / bins
    centres = edges[:-1] + width / 2
    used = b["count"] > 0
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(6.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(
        centres[used], b["accuracy"][used], width=width, edgecolor="black", color="#4c72b0", label="accuracy"
    )
    gap_bottom = np.minimum(b["accuracy"], b["confidence"])[used]
    gap = np.abs(b["accuracy"] - b["confidence"])[used]
    ax.bar(
        centres[used],
        gap,
        bottom=gap_bottom,
        width=width,
        color="#dd8452",
        alpha=0.6,
        hatch="//",
        edgecolor="#c44e52",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], ls="--", color="0.3", label="perfect calibration")
    ax.set_ylabel("accuracy in bin")
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability diagram — ECE {ece:.4f} ({bins} equal-width bins)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    hx.bar(centres, b["count"] / max(1.0, b["count"].sum()), width=width, edgecolor="black", color="0.6")
    hx.set_xlim(0, 1)
    hx.set_xlabel("confidence (top-1 probability)")
    hx.set_ylabel("fraction of samples")
    hx.grid(alpha=0.3)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ per class
def plot_per_class(per_class: dict[str, dict[str, float]], path: Path, max_classes: int = 40) -> Path:
    """Precision, recall and F1 per class (horizontal bars, support in the labels).

    With more than ``max_classes`` classes, the ``max_classes / 2`` lowest and highest F1 are shown.
    """
    names = list(per_class)
    rows = [per_class[n] for n in names]
    title = "Per-class precision, recall and F1"
    if len(names) > max_classes:
        order = np.argsort([r["f1"] for r in rows])
        half = max_classes // 2
        pick = list(order[:half]) + list(order[-half:])
        names, rows = [names[i] for i in pick], [rows[i] for i in pick]
        title += f"\n{half} lowest and {half} highest F1 of {len(per_class)} classes"
    n = len(names)
    y = np.arange(n)
    fig, ax = plt.subplots(figsize=(9, max(3.5, 0.42 * n + 1.5)))
    h = 0.27
    for k, (key, color) in enumerate((("precision", "#4c72b0"), ("recall", "#55a868"), ("f1", "#c44e52"))):
        ax.barh(
            y + (k - 1) * h, [r[key] for r in rows], height=h, color=color, label=key if key != "f1" else "F1"
        )
    ax.set_yticks(y, [f"{name} (n={r['support']})" for name, r in zip(names, rows, strict=True)])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_ylabel("class (test support)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ mistakes
def most_confident_mistakes(probs, targets, n: int) -> torch.Tensor:
    """Indices of the ≤ ``n`` misclassified samples with the highest predicted probability, most confident first."""
    probs, targets = torch.as_tensor(probs), torch.as_tensor(targets)
    conf, pred = probs.max(dim=1)
    wrong = (pred != targets).nonzero().flatten()
    order = torch.argsort(conf[wrong], descending=True, stable=True)
    return wrong[order][:n]


def plot_misclassified(
    images,
    true: Sequence[int],
    pred: Sequence[int],
    confidence: Sequence[float],
    class_names: Sequence[str],
    path: Path,
    columns: int = 6,
) -> Path:
    """Grid of images titled with their true and predicted class and the predicted probability."""
    n = len(true)
    cols = max(1, min(columns, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.4 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img, cmap = image_for_display(images[k])
        ax.imshow(img, cmap=cmap)
        ax.set_title(
            f"true: {class_names[true[k]]}\npred: {class_names[pred[k]]} ({confidence[k]:.2f})", fontsize=8
        )
    fig.suptitle(f"Most confident mistakes ({n} shown, highest predicted probability first)")
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ embeddings
def tsne_threads() -> int:
    """OpenMP threads for t-SNE: half the cores, at most 4.

    scikit-learn's Barnes–Hut t-SNE runs several short parallel regions per iteration; when its
    threads outnumber the free cores (a shared 2-core machine, or torch's threads still spinning)
    every barrier waits for a descheduled thread. Measured on 2 loaded cores, 2,000 points: 1 thread
    3.5 s every time, 2 threads 6–23 s (2.4 s when the machine is idle).
    """
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def embed_2d(x, method: str, seed: int = 123) -> np.ndarray:
    """2-D layout of ``x`` ``(N, D)`` by ``method`` = ``tsne`` (scikit-learn) or ``umap`` (umap-learn).

    t-SNE: PCA to 50 dimensions first (scikit-learn's advice), PCA initialisation, automatic
    learning rate, 500 iterations (250 exaggerated + 250 free; enough for ≤ a few thousand points),
    on :func:`tsne_threads` OpenMP threads.
    UMAP: below 4096 points the Euclidean distance matrix is computed by scikit-learn and passed
    as ``precomputed`` — umap-learn would otherwise evaluate its own numba metric once per pair
    from Python, which takes seconds for 2,000 points.
    """
    from sklearn.metrics import pairwise_distances

    a = _np(x).astype(np.float32)
    a = a - a.mean(axis=0, keepdims=True)
    if method == "tsne":
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE

        if a.shape[1] > 50 and a.shape[0] > 50:
            a = PCA(50, random_state=seed).fit_transform(a)
        perplexity = float(min(30.0, max(2.0, (a.shape[0] - 1) / 3)))
        tsne = TSNE(
            2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=500, random_state=seed
        )
        with threadpool_limits(tsne_threads()):
            return tsne.fit_transform(a)
    if method == "umap":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", numba/tbb notices
            umap = _import_umap_cached()

            neighbours = int(min(15, max(2, a.shape[0] - 1)))
            if a.shape[0] < 4096:
                reducer = umap.UMAP(n_neighbors=neighbours, metric="precomputed", random_state=seed)
                return reducer.fit_transform(pairwise_distances(a))
            return umap.UMAP(n_neighbors=neighbours, random_state=seed).fit_transform(a)
    raise ValueError(f"unknown embedding method '{method}' (tsne or umap)")


@functools.cache
def _import_umap_cached():
    """Import umap-learn with numba's on-disk cache switched on for its compiled functions.

    umap-learn and pynndescent compile ~250 numba functions in every new process (≈ 10 s on two
    cores, more than the UMAP itself for a few thousand points) and do not ask numba to cache
    them. Numba's own cache (keyed on each source file's timestamp, so an upgrade invalidates it)
    turns this into a one-off cost per installation.
    """
    import umap  # imports pynndescent too
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("umap", "pynndescent"):
            for value in list(vars(module).values()):
                if isinstance(value, CPUDispatcher):
                    with contextlib.suppress(RuntimeError):  # no writable cache location: compile as usual
                        value.enable_caching()
    return umap


def plot_embeddings(
    panels: Sequence[tuple[str, np.ndarray]], labels, class_names: Sequence[str], path: Path, method: str,
    suptitle: str | None = None,
) -> Path:
    """Side-by-side 2-D scatter plots (one per ``(title, coords (N, 2))`` panel), coloured by true class
    (``suptitle``: the figure's title, by default "<method> of test embeddings")."""
    y = _np(labels).astype(int)
    n_cls = len(class_names)
    cmap = class_colors(n_cls)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(6.2 * len(panels) + (2.2 if n_cls <= MAX_LEGEND_CLASSES else 0.8), 6),
        squeeze=False,
    )
    size = 6 if len(y) > 1000 else 12
    scatter = None
    for ax, (title, xy) in zip(axes[0], panels, strict=True):
        scatter = ax.scatter(
            xy[:, 0], xy[:, 1], c=y, cmap=cmap, vmin=-0.5, vmax=n_cls - 0.5, s=size, alpha=0.8, linewidths=0
        )
        ax.set_title(title)
        ax.set_xlabel(f"{method} 1")
        ax.set_ylabel(f"{method} 2")
        ax.set_xticks([])
        ax.set_yticks([])
    label = {"tsne": "t-SNE", "umap": "UMAP"}.get(method, method)
    fig.suptitle(suptitle or f"{label} of test embeddings ({len(y)} images, coloured by true class)")
    if n_cls <= MAX_LEGEND_CLASSES:
        handles = [
            plt.Line2D([], [], ls="", marker="o", color=cmap(c), label=class_names[c]) for c in range(n_cls)
        ]
        fig.legend(handles=handles, loc="center right", fontsize=8, title="class")
        fig.tight_layout(rect=(0, 0, 1 - 1.9 / fig.get_figwidth(), 1))
    else:
        fig.colorbar(scatter, ax=axes[0].tolist(), label="class index")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ Grad-CAM
def plot_gradcam(
    images, maps: np.ndarray, titles: Sequence[str], path: Path, layer_name: str, columns: int = 5
) -> Path:
    """Each sample as the image above its Grad-CAM map (jet, α = 0.45, per-image 0–1 scale) drawn over it."""
    n = len(titles)
    cols = max(1, min(columns, n))
    pairs = -(-n // cols)
    fig, axes = plt.subplots(2 * pairs, cols, figsize=(2.1 * cols + 0.9, 4.3 * pairs + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    im = None
    for k in range(n):
        top, bottom = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        img, cmap = image_for_display(images[k])
        top.imshow(img, cmap=cmap)
        top.set_title(titles[k], fontsize=8)
        bottom.imshow(img, cmap=cmap)
        im = bottom.imshow(maps[k], cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for r in range(pairs):
        axes[2 * r, 0].set_ylabel("image")
        axes[2 * r + 1, 0].set_ylabel("Grad-CAM")
    fig.suptitle(f"Grad-CAM for the predicted class (layer `{layer_name}`)")
    fig.tight_layout(rect=(0, 0, 1 - 0.8 / fig.get_figwidth(), 1))
    cax = fig.add_axes((1 - 0.65 / fig.get_figwidth(), 0.1, 0.12 / fig.get_figwidth(), 0.75))
    fig.colorbar(im, cax=cax, label="relevance (0–1 per image)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ feature maps
def plot_feature_maps(image, maps, path: Path, layer_name: str, max_maps: int = 32) -> Path:
    """The input image and the first ``max_maps`` channels of a layer's output ``(K, h, w)``."""
    maps = _np(maps)
    k = min(len(maps), max_maps)
    cols = 8
    rows = -(-k // cols) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.7 * rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    img, cmap = image_for_display(image)
    axes[0, 0].imshow(img, cmap=cmap)
    axes[0, 0].set_title("input", fontsize=8)
    for i in range(k):
        ax = axes[1 + i // cols, i % cols]
        ax.imshow(maps[i], cmap="viridis")
        ax.set_title(f"channel {i}", fontsize=7)
    fig.suptitle(
        f"Feature maps of the first convolution `{layer_name}` ({k} of {len(maps)} channels, each scaled to its own range)"
    )
    return _save(fig, path)


# ================================================================================================ from a run
# Adapters from an evaluated run (:class:`~imgcls.evaluation.evaluate.EvalContext`) to the plots
# above; each returns the file written, or None after adding a note saying why it was skipped.


def evaluated_images(ctx: EvalContext, positions: torch.Tensor) -> torch.Tensor:
    """uint8 ``(K, C, H, W)`` test images at ``positions`` of the evaluated set (decoded when file-backed)."""
    test = ctx.data.test
    if test.images is not None:
        return test.images[positions.cpu()]
    from imgcls.data.decode import decode_image

    return torch.stack(
        [decode_image(test.files[int(i)], ctx.data.image_size, ctx.data.channels) for i in positions]
    )


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

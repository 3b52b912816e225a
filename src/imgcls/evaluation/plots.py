"""Plotting functions (Matplotlib, Agg): training curves, the confusion matrix, the class distribution,
ROC, reliability diagram, per-class scores, the most confident mistakes, 2-D embeddings, Grad-CAM overlays and first-conv feature maps
(seed 004's ``evaluate``/``test`` outputs, seed 003's t-SNE; SPEC §4.4, §4.6 item 4, §5.6).

Each ``plot_*`` function takes plain arrays and a path and returns the path, so it can be used and tested
without a run; :mod:`imgcls.evaluation.figures` feeds them from an evaluated run.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from imgcls.evaluation.metrics import expected_calibration_error

#: at most this many classes get their own legend entry / colour; beyond it a continuous colormap
MAX_LEGEND_CLASSES = 20


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_history(path: Path) -> list[dict[str, float | str]]:
    if not path.is_file():
        return []
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        parsed: dict[str, float | str] = {}
        for k, v in row.items():
            try:
                parsed[k] = float(v)
            except (TypeError, ValueError):
                parsed[k] = v
        out.append(parsed)
    return out


def plot_curves(history: list[dict], path: Path) -> Path | None:
    """Loss, accuracy and learning rate per epoch (with weight-averaged validation when present)."""
    if not history:
        return None
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    series = [
        ("Loss", [("train_loss", "train"), ("val_loss", "validation")]),
        (
            "Accuracy",
            [
                ("train_acc", "train"),
                ("val_acc", "validation"),
                ("ema_val_acc", "EMA validation"),
                ("swa_val_acc", "SWA validation"),
            ],
        ),
        ("Learning rate", [("lr", "lr (end of epoch)")]),
    ]
    for ax, (title, keys) in zip(axes, series, strict=True):
        for key, label in keys:
            values = [r.get(key) for r in history]
            if all(isinstance(v, float) for v in values):
                ax.plot(epochs, values, marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(title.lower())
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (recall per true class) with counts-free percentages."""
    m = np.asarray(matrix, dtype=float)
    norm = m / np.clip(m.sum(axis=1, keepdims=True), 1, None)
    n = len(class_names)
    size = max(5.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (row-normalised)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{100 * norm[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ helpers
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


# ------------------------------------------------------------------------------------------------ ROC
def plot_class_distribution(counts: dict[str, list[int]], class_names: Sequence[str], path: Path) -> Path:
    """Grouped bars: images per class in each split (seed 004's ``class_distribution.png``); above 40
    classes the bars are drawn thin and unlabelled on the class index; an empty split gets no bars."""
    splits = [s for s in counts if sum(counts[s])]
    n = len(class_names)
    x = np.arange(n)
    width = 0.8 / max(1, len(splits))
    fig, ax = plt.subplots(figsize=(max(6.0, min(0.45 * n + 2, 16.0)), 4.2))
    colors = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
    for i, split in enumerate(splits):
        offset = (i - (len(splits) - 1) / 2) * width
        label = f"{split} ({sum(counts[split]):,})"
        ax.bar(x + offset, counts[split], width, label=label, color=colors.get(split))
    if n <= 40:
        ax.set_xticks(x)
        ax.set_xticklabels(
            class_names, rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center", fontsize=8
        )
    else:
        ax.set_xlabel("class index")
    ax.set_ylabel("images")
    ax.set_title("Class distribution per split")
    ax.legend()
    return _save(fig, path)


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
def plot_embeddings(
    panels: Sequence[tuple[str, np.ndarray]],
    labels,
    class_names: Sequence[str],
    path: Path,
    method: str,
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
    """Each sample as the image above its Grad-CAM map (jet, α = 0.45, per-image 0–1 scale) drawn over it.

    Constrained layout keeps every label, the colorbar and the figure title inside the canvas; titles
    longer than their column (or, for the figure title, the figure) are wrapped, so a single image with
    a long layer name is not clipped."""
    import textwrap

    n = len(titles)
    cols = max(1, min(columns, n))
    pairs = -(-n // cols)
    width, height = 2.1 * cols + 1.2, 4.3 * pairs + 0.4
    fig, axes = plt.subplots(2 * pairs, cols, figsize=(width, height), squeeze=False, layout="constrained")
    # characters per line at ~0.6 em per character (DejaVu Sans averages less), points = inches × 72
    fits = lambda inches, size: max(8, int(inches * 72 / (0.6 * size)))  # noqa: E731
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    im = None
    for k in range(n):
        top, bottom = axes[2 * (k // cols), k % cols], axes[2 * (k // cols) + 1, k % cols]
        img, cmap = image_for_display(images[k])
        top.imshow(img, cmap=cmap)
        top.set_title(textwrap.fill(str(titles[k]), fits(2.0, 8)), fontsize=8)
        bottom.imshow(img, cmap=cmap)
        im = bottom.imshow(maps[k], cmap="jet", alpha=0.45, vmin=0, vmax=1)
    for r in range(pairs):
        axes[2 * r, 0].set_ylabel("image")
        axes[2 * r + 1, 0].set_ylabel("Grad-CAM")
    title = f"Grad-CAM for the predicted class (layer `{layer_name}`)"
    fig.suptitle(textwrap.fill(title, fits(width - 0.3, 12)), fontsize=12)
    fig.colorbar(im, ax=axes, label="relevance (0–1 per image)", shrink=0.75, fraction=0.08, aspect=30)
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

"""Figures of a run: training curves and the (normalised) confusion matrix. Matplotlib (Agg)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


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

"""Stratified splits: validation from the training data (never the test set), and stratified subsets."""

from __future__ import annotations

import torch
from sklearn.model_selection import train_test_split

from imgcls.errors import DataError


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (keep, held_out) with ``held_out`` ≈ ``fraction`` of each class (seeded)."""
    n = int(labels.shape[0])
    indices = torch.arange(n)
    if fraction <= 0:
        return indices, indices[:0]
    counts = torch.bincount(labels)
    if int(counts[counts > 0].min()) < 2:
        raise DataError("a class has fewer than 2 images, so a stratified split is impossible; set data.val_fraction=0")
    n_held = max(round(fraction * n), int((counts > 0).sum()))
    try:
        keep, held = train_test_split(indices.numpy(), test_size=n_held, stratify=labels.numpy(), random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot split {n} images with fraction {fraction}: {exc}") from None
    return torch.as_tensor(sorted(keep)), torch.as_tensor(sorted(held))


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of a stratified subset of ``size`` images (all indices when size ≥ N)."""
    n = int(labels.shape[0])
    if size >= n:
        return torch.arange(n)
    _, chosen = stratified_split(labels, size / n, seed)
    return chosen

"""Stratified splits: validation from the training data (never the test set), stratified subsets, and a
fixed number of held-out training images per class (seed 001's unused-training evaluation set, SPEC §2.5, §2.7)."""

from __future__ import annotations

import torch

from imgcls.errors import DataError


def _class_name(c: int, class_names: list[str] | None) -> str:
    return f"'{class_names[c]}'" if class_names is not None and c < len(class_names) else f"#{c}"


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int, class_names: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (keep, held_out) with ``held_out`` ≈ ``fraction`` of each class (seeded);
    ``class_names`` name a class too small to split in the error."""
    n = int(labels.shape[0])
    indices = torch.arange(n)
    if fraction <= 0:
        return indices, indices[:0]
    counts = torch.bincount(labels)
    if int(counts[counts > 0].min()) < 2:
        c = int(torch.nonzero((counts > 0) & (counts < 2)).flatten()[0])
        raise DataError(
            f"class {_class_name(c, class_names)} has only 1 image, so a stratified split is impossible; add "
            "images, or set data.val_fraction=0"
        )
    n_held = max(round(fraction * n), int((counts > 0).sum()))
    # imported here: sklearn.model_selection costs 1.6 s of start-up, which every command paid (predict included)
    from sklearn.model_selection import train_test_split

    try:
        keep, held = train_test_split(
            indices.numpy(), test_size=n_held, stratify=labels.numpy(), random_state=seed
        )
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


def per_class_holdout(
    labels: torch.Tensor, per_class: int, seed: int, class_names: list[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (keep, held_out) with exactly ``per_class`` random images of every class held out
    (seeded; seed 001's "200 unused training images per class"). A class needs more than ``per_class``
    images, so that some remain to train on."""
    counts = torch.bincount(labels)
    small = [int(c) for c in torch.nonzero((counts > 0) & (counts <= per_class)).flatten()]
    if small:
        raise DataError(
            f"data.holdout_per_class={per_class} would leave class {_class_name(small[0], class_names)} "
            f"({int(counts[small[0]])} images) "
            "nothing to train on; lower data.holdout_per_class"
        )
    gen = torch.Generator().manual_seed(seed * 7_919 + 104_729)
    held = []
    for c in torch.nonzero(counts > 0).flatten():
        members = torch.nonzero(labels == c).flatten()
        held.append(members[torch.randperm(members.numel(), generator=gen)[:per_class]])
    held_idx = torch.cat(held).sort().values
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx

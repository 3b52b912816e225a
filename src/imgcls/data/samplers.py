"""Epoch index orders: plain shuffling, class-balanced draws and m-samples-per-class batches.

The balanced sampler reproduces seed 001's ``FewShotBalancedSampler`` (k images per class per
epoch, a fresh draw without replacement every epoch; SPEC §2.4). The m-per-class order builds
batches with ``m`` images of each of ``batch_size / m`` classes (useful for batch-graph heads
such as FCH, SPEC §1.6). All orders are pure functions of ``(labels, generator)``, so an epoch's
order only depends on the seed and the epoch number (exact resume).
"""

from __future__ import annotations

import torch

from imgcls.errors import ConfigError


def random_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(int(labels.shape[0]), generator=generator)


def balanced_order(labels: torch.Tensor, generator: torch.Generator, per_class: int) -> torch.Tensor:
    """``per_class`` random images of each class (all of a smaller class), shuffled together."""
    chosen = []
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        take = members[torch.randperm(members.numel(), generator=generator)[:per_class]]
        chosen.append(take)
    order = torch.cat(chosen)
    return order[torch.randperm(order.numel(), generator=generator)]


def m_per_class_order(labels: torch.Tensor, generator: torch.Generator, m: int, batch_size: int) -> torch.Tensor:
    """An order whose consecutive ``batch_size`` blocks each hold ``m`` images of ``batch_size // m`` classes."""
    if batch_size % m:
        raise ConfigError(f"data.samples_per_class={m} must divide train.batch_size={batch_size} for m_per_class")
    classes = torch.unique(labels)
    per_batch = batch_size // m
    if per_batch > classes.numel():
        raise ConfigError(
            f"m_per_class needs batch_size/m = {per_batch} ≤ number of classes {classes.numel()}; raise samples_per_class"
        )
    # Shuffle each class's members into chunks of m; each batch takes one chunk from
    # per_batch distinct classes drawn at random among the classes that still have chunks.
    queues: dict[int, list[torch.Tensor]] = {}
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        usable = members.numel() // m * m
        queues[int(c)] = list(members[:usable].view(-1, m))
    batches = []
    while True:
        available = [c for c, q in queues.items() if q]
        if len(available) < per_batch:
            break
        picks = torch.randperm(len(available), generator=generator)[:per_batch].tolist()
        batches.append(torch.cat([queues[available[i]].pop() for i in picks]))
    return torch.cat(batches) if batches else torch.empty(0, dtype=torch.long)


def epoch_order(
    labels: torch.Tensor, generator: torch.Generator, sampler: str, samples_per_class: int | None, batch_size: int
) -> torch.Tensor:
    if sampler == "random":
        return random_order(labels, generator)
    if samples_per_class is None:
        raise ConfigError(f"data.sampler={sampler} needs data.samples_per_class (e.g. 300 for balanced, 4 for m_per_class)")
    if sampler == "balanced":
        return balanced_order(labels, generator, samples_per_class)
    return m_per_class_order(labels, generator, samples_per_class, batch_size)

"""Epoch index orders: plain shuffling, class-balanced draws and m-samples-per-class batches.

The balanced sampler reproduces seed 001's ``FewShotBalancedSampler`` (k images per class per
epoch, a fresh draw without replacement every epoch; SPEC §2.4). The m-per-class order builds
batches with ``m`` images of each of ``batch_size / m`` classes (useful for batch-graph heads
such as FCH, SPEC §1.6). All orders are pure functions of ``(labels, generator)``, so an epoch's
order only depends on the seed and the epoch number (exact resume).

The confusion-aware order (issue 14; seed 001's suggested "targeted sampling of the confusable
classes", our own design) draws each image's class from ``p_c = floor / K + (1 − floor) · e_c / Σ e``,
where ``e_c`` is class c's validation error (1 − recall) of the previous epoch, then an image of that
class (without replacement until the class is exhausted, then a fresh permutation). ``floor`` is the
share of draws spread evenly, so every class keeps at least ``floor / K`` of the epoch; before the first
validation (or when no class has errors) it is the balanced order. The weights are fed by the
``ConfusionSampling`` callback (``imgcls.engine.confusion_sampling``).
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


def m_per_class_order(
    labels: torch.Tensor, generator: torch.Generator, m: int, batch_size: int
) -> torch.Tensor:
    """An order whose consecutive ``batch_size`` blocks each hold ``m`` images of ``batch_size // m`` classes."""
    if batch_size % m:
        raise ConfigError(
            f"data.samples_per_class={m} must divide train.batch_size={batch_size} for m_per_class"
        )
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


def confusion_weights(class_error: list[float] | torch.Tensor, floor: float) -> torch.Tensor:
    """Class probabilities ``floor / K + (1 − floor) · e / Σ e`` from per-class errors ``e`` (NaN: a class
    without validation images counts as error 0); uniform when no class has errors."""
    e = torch.as_tensor(class_error, dtype=torch.float64).nan_to_num(0.0).clamp(0.0, 1.0)
    k = e.numel()
    uniform = torch.full((k,), 1.0 / k, dtype=torch.float64)
    if float(e.sum()) <= 0:
        return uniform
    return floor * uniform + (1 - floor) * e / e.sum()


def weighted_class_order(
    labels: torch.Tensor, generator: torch.Generator, class_probs: torch.Tensor | None, n_samples: int
) -> torch.Tensor:
    """``n_samples`` indices whose classes are drawn from ``class_probs`` (None: uniform over the classes
    present); within a class, images come without replacement until it is exhausted, then again."""
    classes = torch.unique(labels)
    k = int(labels.max()) + 1 if labels.numel() else 0
    probs = torch.zeros(k, dtype=torch.float64)
    if class_probs is None:
        probs[classes] = 1.0
    else:
        if class_probs.numel() < k:
            raise ConfigError(f"confusion sampler: {class_probs.numel()} class weights for {k} classes")
        probs = class_probs[:k].to(torch.float64).clone()
        absent = torch.ones(k, dtype=torch.bool)
        absent[classes] = False
        probs[absent] = 0.0  # classes without training images cannot be drawn
        if float(probs.sum()) <= 0:
            probs[classes] = 1.0
    counts = torch.bincount(
        torch.multinomial(probs, n_samples, replacement=True, generator=generator), minlength=k
    )
    chosen = []
    for c in classes.tolist():
        need = int(counts[c])
        if need == 0:
            continue
        members = torch.nonzero(labels == c).flatten()
        rounds = -(-need // members.numel())
        perms = [members[torch.randperm(members.numel(), generator=generator)] for _ in range(rounds)]
        chosen.append(torch.cat(perms)[:need])
    order = torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long)
    return order[torch.randperm(order.numel(), generator=generator)]


def epoch_order(
    labels: torch.Tensor,
    generator: torch.Generator,
    sampler: str,
    samples_per_class: int | None,
    batch_size: int,
    class_probs: torch.Tensor | None = None,
) -> torch.Tensor:
    if sampler == "random":
        return random_order(labels, generator)
    if (
        sampler == "confusion"
    ):  # samples_per_class × classes draws per epoch (default: the training set's size)
        n_classes = int(torch.unique(labels).numel())
        n = samples_per_class * n_classes if samples_per_class else int(labels.numel())
        return weighted_class_order(labels, generator, class_probs, n)
    if samples_per_class is None:
        raise ConfigError(
            f"data.sampler={sampler} needs data.samples_per_class (e.g. 300 for balanced, 4 for m_per_class)"
        )
    if sampler == "balanced":
        return balanced_order(labels, generator, samples_per_class)
    return m_per_class_order(labels, generator, samples_per_class, batch_size)

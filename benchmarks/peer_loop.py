"""The peer baseline of the speed benchmarks (issue 11): a plain PyTorch training loop as most
tutorials write it — a ``torch.utils.data.DataLoader`` over a ``Dataset`` with per-sample torchvision
v2 transforms (random crop with padding, horizontal flip, dtype conversion, normalisation), AdamW +
per-step cosine, fp32 — on the same model and data as imgcls. Used side by side with imgcls in
``peers.py`` (img/s) and ``time_to_accuracy.py`` (seconds to a test accuracy)."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2


class PerSampleDataset(Dataset):
    """uint8 ``(N, C, H, W)`` images + labels, transformed one sample at a time (the usual pattern)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float], train: bool
    ):
        self.images, self.labels = images, labels
        size = images.shape[-1]
        ops = [v2.RandomCrop(size, padding=2), v2.RandomHorizontalFlip()] if train else []
        self.transform = v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def loader(
    images, labels, mean, std, batch_size: int, train: bool, workers: int = 0, seed: int = 0
) -> DataLoader:
    ds = PerSampleDataset(images, labels, mean, std, train)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        num_workers=workers,
        drop_last=False,
        generator=gen,
        persistent_workers=workers > 0,
    )


def train_plain(
    model: torch.nn.Module,
    train_loader: DataLoader,
    epochs: int,
    lr: float,
    weight_decay: float,
    label_smoothing: float = 0.0,
    warmup_epochs: float = 0.0,
    max_steps: int | None = None,
) -> dict:
    """Train ``model`` (a Classifier: ``model(x).logits``) with AdamW + warm-up/cosine; returns seconds and images."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * len(train_loader)
    warm = int(warmup_epochs * len(train_loader))

    def factor(step: int) -> float:
        if step < warm:
            return 0.1 + 0.9 * step / max(1, warm)
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    images = 0
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        for x, y in train_loader:
            loss = F.cross_entropy(model(x).logits, y, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            images += len(y)
            step += 1
            if max_steps is not None and step >= max_steps:
                return {"seconds": time.perf_counter() - start, "images": images}
    return {"seconds": time.perf_counter() - start, "images": images}


@torch.no_grad()
def accuracy(model: torch.nn.Module, test_loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in test_loader:
        correct += int((model(x).logits.argmax(-1) == y).sum())
        total += len(y)
    return correct / max(total, 1)

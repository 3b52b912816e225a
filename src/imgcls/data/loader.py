"""Batch loaders: an in-memory uint8 loader (whole-batch slicing, no per-sample Python) and a
file-streaming loader (DataLoader workers) with the same interface and the same epoch orders.

``train.batch_size`` is the *global* batch: under DDP each of ``world_size`` ranks takes every
``world_size``-th index of the epoch order, so the union of the ranks' k-th batches is exactly the
single-process k-th batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch

from imgcls.data.decode import FileImages, collate_skip
from imgcls.data.images import ImageData
from imgcls.data.samplers import epoch_order
from imgcls.errors import ConfigError
from imgcls.runtime.batch import Batch


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    """A CPU generator whose state depends only on (seed, epoch, salt): epochs replay exactly on resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + salt) % (2**63 - 1))


class _Loader(ABC):
    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        sampler: str = "random",
        samples_per_class: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ConfigError(
                f"the global batch size {batch_size} is not divisible by world size {world_size}; "
                f"use a multiple of {world_size} (train.batch_size / eval.batch_size)"
            )
        self.data, self.batch_size, self.shuffle, self.drop_last = data, batch_size, shuffle, drop_last
        self.seed, self.sampler, self.samples_per_class = seed, sampler, samples_per_class
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.start_batch = 0
        self.class_probs: torch.Tensor | None = None  # confusion sampler: class draw probabilities

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch``'s order, from its batch ``start_batch`` on: a run resumed mid-epoch
        skips the batches it already trained on (same order, nothing re-drawn, nothing decoded)."""
        self.epoch, self.start_batch = epoch, start_batch

    def first_step(self, n: int) -> tuple[int, Batch | None]:
        """How many images this rank's first batch holds, and a batch of (up to) its first ``n``, loaded without
        the rest (the memory check before training, which must not load an oversized batch); ``(0, None)``
        when the split yields no batch."""
        batches = self._rank_batches()
        if not batches:
            return 0, None
        return len(batches[0]), self._load(batches[0][:n])

    @abstractmethod
    def _load(self, idx: torch.Tensor) -> Batch | None:
        """The batch of the images at ``idx`` (None when none of them can be read)."""

    def set_class_probs(self, probs: torch.Tensor | None) -> None:
        """Class draw probabilities of the ``confusion`` sampler from the next epoch on (None: uniform)."""
        self.class_probs = None if probs is None else torch.as_tensor(probs, dtype=torch.float64).cpu()

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.data))
        gen = epoch_generator(self.seed, self.epoch, salt=1)
        return epoch_order(
            self.data.labels, gen, self.sampler, self.samples_per_class, self.batch_size, self.class_probs
        )

    def _rank_batches(self) -> list[torch.Tensor]:
        order = self._order()
        if self.drop_last:
            order = order[: len(order) // self.batch_size * self.batch_size]
        local = order[self.rank :: self.world_size]
        per_rank = self.batch_size // self.world_size
        return list(local.split(per_rank)) if len(local) else []

    def __len__(self) -> int:
        n = len(self._order()) if self.sampler != "random" and self.shuffle else len(self.data)
        if self.drop_last:
            return n // self.batch_size
        per_rank = self.batch_size // self.world_size
        local = len(range(self.rank, n, self.world_size))
        return -(-local // per_rank)


class InMemoryLoader(_Loader):
    """Slices uint8 image tensors held in memory (optionally on the GPU) into batches."""

    def __init__(
        self, data: ImageData, batch_size: int, *, device: torch.device | None = None, **kwargs
    ) -> None:
        super().__init__(data, batch_size, **kwargs)
        assert data.images is not None, "InMemoryLoader needs images in memory"
        self.images = data.images if device is None else data.images.to(device)
        self.labels = data.labels if device is None else data.labels.to(device)

    def __iter__(self) -> Iterator[Batch]:
        for idx in self._rank_batches()[self.start_batch :]:
            yield self._load(idx)

    def _load(self, idx: torch.Tensor) -> Batch:
        idx_dev = idx.to(self.images.device)
        return Batch(images=self.images[idx_dev], targets=self.labels[idx_dev], index=idx)


class FileLoader(_Loader):
    """Streams image files through DataLoader workers (decode + resize), for trees too large for memory."""

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        *,
        image_size: int | None,
        channels: int,
        workers: int,
        **kwargs,
    ) -> None:
        super().__init__(data, batch_size, **kwargs)
        assert data.files is not None, "FileLoader needs file paths"
        self.dataset = FileImages(data.files, data.labels, image_size, channels)
        self.workers = workers
        self.skipped: set[str] = set()

    def __iter__(self) -> Iterator[Batch]:
        batches = [b.tolist() for b in self._rank_batches()[self.start_batch :]]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=collate_skip,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
        for images, labels, index, bad in loader:
            self.skipped.update(self.data.files[i] for i in bad)
            if images is not None:
                yield Batch(images=images, targets=labels, index=index)

    def _load(self, idx: torch.Tensor) -> Batch | None:
        """Decode ``idx`` in this process (a few images; the epochs stream through workers)."""
        images, labels, index, _ = collate_skip([self.dataset[i] for i in idx.tolist()])
        return None if images is None else Batch(images=images, targets=labels, index=index)

"""From a config to ready loaders: load the source, subset, convert, split validation off the
training data (stratified, seeded — the test set is never used for selection), and pick the
in-memory or streaming path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from imgcls.config import ExperimentConfig
from imgcls.data import cache as _cache  # noqa: F401  (registers data.name=cached)
from imgcls.data.decode import decode_image, load_files_into_memory, probe_channels, probe_size
from imgcls.data.images import ImageData, convert_channels, resize_uint8
from imgcls.data.loader import FileLoader, InMemoryLoader
from imgcls.data.sources import DataSource
from imgcls.data.splits import per_class_holdout, stratified_split, stratified_subset
from imgcls.errors import DataError
from imgcls.registry import DATASETS

log = logging.getLogger(__name__)

#: above this many bytes of uint8 pixels (train + test), `in_memory: auto` streams from files
IN_MEMORY_LIMIT = 6 * 2**30


@dataclass
class PreparedData:
    train: ImageData
    val: ImageData
    test: ImageData
    class_names: list[str]
    image_size: int
    channels: int
    mean: list[float]
    std: list[float]
    synsets: dict[str, str] = field(default_factory=dict)
    invert: str = "none"
    #: ``data.holdout_per_class`` unused training images per class, evaluated once beside the test set
    holdout: ImageData | None = None
    #: lines for the run report about the data (layout, carved test set, hold-out)
    notes: list[str] = field(default_factory=list)

    @property
    def preprocess(self) -> dict:
        """What a checkpoint records so that inference prepares images the same way."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": self.mean,
            "std": self.std,
            "invert": self.invert,
        }

    @property
    def skipped_files(self) -> list[str]:
        holdout = self.holdout.skipped if self.holdout is not None else []
        return sorted(set(self.train.skipped) | set(self.test.skipped) | set(holdout))


def _adapt_stats(values: list[float], channels: int) -> list[float]:
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    return [sum(values) / len(values)]


def _materialise(part: ImageData, size: int | None, channels: int, workers: int) -> ImageData:
    if part.images is not None:  # stored at most at the model size: upsampling happens per batch (Preprocess)
        stored = min(size, int(part.images.shape[-1])) if size else None
        images = resize_uint8(convert_channels(part.images, channels), stored)
        return ImageData(part.labels, part.class_names, images, files=part.files, skipped=part.skipped)
    images, labels, skipped = load_files_into_memory(part.files, part.labels, size, channels, workers)
    if skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(skipped), skipped[0])
    return ImageData(labels, part.class_names, images, skipped=skipped)


def prepare_data(cfg: ExperimentConfig, *, need_train: bool = True) -> PreparedData:
    d = cfg.data
    source: DataSource = DATASETS.build(d.name, cfg=d)
    train, test = source.train, source.test
    if len(train.class_names) < 2:
        raise DataError(
            f"the {d.name} data has {len(train.class_names)} class ({', '.join(train.class_names)}); "
            "a classifier needs at least 2 (one sub-folder per class)"
        )
    if d.exclude_manifest:  # near-duplicates removed by `imgcls data dedup`, before any split or subset
        from imgcls.data.dedup import apply_exclude_manifest

        train, test = apply_exclude_manifest(train, test, d.exclude_manifest)
    if len(test) == 0:
        raise DataError(f"the {d.name} test set is empty")

    holdout, notes = None, list(source.notes)
    if (
        d.holdout_per_class
    ):  # after any exclusion (dedup) and before subsets and the validation split (SPEC §2.7)
        keep, held = per_class_holdout(train.labels, d.holdout_per_class, d.split_seed)
        holdout, train = train.subset(held), train.subset(keep)
        notes.append(
            f"hold-out set: {len(holdout)} unused training images ({d.holdout_per_class} per class, seed {d.split_seed}), "
            "never trained on or used for selection, evaluated once beside the test set"
        )
    if d.train_subset:
        train = train.subset(stratified_subset(train.labels, d.train_subset, d.split_seed))
    if d.test_subset:
        test = test.subset(stratified_subset(test.labels, d.test_subset, d.split_seed))

    file_backed = train.images is None
    if file_backed:
        channels = d.channels or probe_channels(train.files)
        size = d.image_size
        if size is None:
            size = probe_size(train.files, channels)
    else:
        channels = d.channels or int(train.images.shape[1])
        size = d.image_size or int(train.images.shape[-1])
    n_bytes = (len(train) + len(test) + len(holdout or ())) * channels * size * size
    in_memory = d.in_memory == "yes" or (
        d.in_memory == "auto" and (not file_backed or n_bytes <= IN_MEMORY_LIMIT)
    )
    if in_memory:
        train = _materialise(train, size, channels, d.num_workers) if need_train or not file_backed else train
        test = _materialise(test, size, channels, d.num_workers)
        if holdout is not None:
            holdout = _materialise(holdout, size, channels, d.num_workers)

    keep, held = stratified_split(train.labels, d.val_fraction, d.split_seed)
    val = train.subset(held)
    train = train.subset(keep)

    if d.mean is not None and d.std is not None:
        mean, std = list(d.mean), list(d.std)
    elif source.mean:
        mean, std = _adapt_stats(source.mean, channels), _adapt_stats(source.std, channels)
    else:
        mean, std = _estimate_stats(train, size, channels)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"data.mean/std need {channels} values (one per channel), got {len(mean)}/{len(std)}")
    return PreparedData(
        train,
        val,
        test,
        list(train.class_names),
        size,
        channels,
        mean,
        std,
        dict(source.synsets),
        d.invert,
        holdout,
        notes,
    )


def _estimate_stats(
    train: ImageData, size: int, channels: int, n: int = 2000
) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of (a sample of) the training images, in [0, 1] units."""
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    if train.images is not None:
        sample = train.images[idx].float() / 255
    else:
        decoded = []
        for i in idx.tolist():
            try:
                decoded.append(decode_image(train.files[i], size, channels))
            except OSError:
                continue
        sample = torch.stack(decoded).float() / 255
    return sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


def make_loader(
    data: ImageData,
    prepared: PreparedData,
    cfg: ExperimentConfig,
    *,
    train: bool,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
):
    common = dict(
        shuffle=train,
        drop_last=train and len(data) >= batch_size,
        seed=cfg.train.seed,
        sampler=cfg.data.sampler if train else "random",
        samples_per_class=cfg.data.samples_per_class,
        rank=rank,
        world_size=world_size,
    )
    if data.images is not None:
        keep_on_device = device is not None and device.type == "cuda"
        return InMemoryLoader(data, batch_size, device=device if keep_on_device else None, **common)
    return FileLoader(
        data,
        batch_size,
        image_size=prepared.image_size,
        channels=prepared.channels,
        workers=cfg.data.num_workers,
        **common,
    )

"""From a config to ready loaders: load the source, subset, convert, split validation off the
training data (stratified, seeded — the test set is never used for selection), and pick the
in-memory or streaming path.

Image files are checked before any training, on both paths: every file's header is read first (empty,
garbage, broken-link and decompression-bomb files are dropped before the hold-out, subsets and splits), then
the in-memory path decodes every image, and the streaming path decodes each training class's files in turn
until one decodes. A training class left without a readable image is a :class:`~imgcls.errors.DataError`
naming its folder; the files skipped are announced in ONE warning (count and an example) and listed in the
run's ``skipped_files.txt``. Files that pass these checks and still fail while streaming are skipped then.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from imgcls.config import ExperimentConfig
from imgcls.data import cache as _cache  # noqa: F401  (registers data.name=cached)
from imgcls.data.decode import (
    _BAD_IMAGE_ERRORS,
    decode_image,
    describe_decode_error,
    load_files_into_memory,
    probe_channels,
    probe_size,
    screen_files,
    unreadable_reason,
    warn_skipped,
)
from imgcls.data.images import ImageData, convert_channels, resize_uint8
from imgcls.data.loader import FileLoader, InMemoryLoader
from imgcls.data.sources import DataSource
from imgcls.data.splits import per_class_holdout, stratified_split, stratified_subset
from imgcls.errors import ConfigError, DataError
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
    return ImageData(labels, part.class_names, images, skipped=sorted(set(part.skipped) | set(skipped)))


def _drop(part: ImageData, bad: dict[int, str]) -> ImageData:
    """``part`` without the files at the indices ``bad``, which join its skipped files."""
    if not bad:
        return part
    kept = part.subset(torch.tensor([i for i in range(len(part)) if i not in bad], dtype=torch.long))
    kept.skipped = sorted(set(part.skipped) | {part.files[i] for i in bad})
    return kept


def _screen_headers(part: ImageData, workers: int) -> tuple[ImageData, dict[str, str]]:
    """Drop the files of a file-backed part whose header cannot be read; also return path → reason."""
    if part.images is not None or not part.files:
        return part, {}
    bad = screen_files(part.files, workers)
    return _drop(part, bad), {part.files[i]: reason for i, reason in bad.items()}


def _probe_classes(part: ImageData, size: int, channels: int) -> tuple[ImageData, dict[str, str]]:
    """Streaming path: decode each class's files in order until one decodes (one decode per healthy class),
    so that a class of undecodable (e.g. truncated) files is found before training, not during epoch 1."""
    bad: dict[int, str] = {}
    seen: set[int] = set()
    for i, label in enumerate(part.labels.tolist()):
        if label in seen:
            continue
        try:
            decode_image(part.files[i], size, channels)
            seen.add(label)
        except _BAD_IMAGE_ERRORS as exc:
            bad[i] = describe_decode_error(exc)
    return _drop(part, bad), {part.files[i]: reason for i, reason in bad.items()}


def _require_every_class(
    origin: ImageData, before: ImageData, after: ImageData, reasons: dict[str, str]
) -> None:
    """A training class that had files in ``before`` and has none left in ``after`` is an error naming its
    folder and how many of its files (in ``origin``, the whole training list) could not be read."""
    k = len(before.class_names)
    lost = torch.nonzero(
        (torch.bincount(before.labels, minlength=k) > 0) & (torch.bincount(after.labels, minlength=k) == 0)
    ).flatten()
    if not len(lost):
        return
    c, names = int(lost[0]), before.class_names
    files = [f for f, label in zip(origin.files, origin.labels.tolist(), strict=True) if label == c]
    skipped = set(after.skipped)
    failed = [f for f in files if f in skipped]
    folder = os.path.commonpath([os.path.dirname(f) for f in files])
    example = failed[0] if failed else files[0]
    reason = reasons.get(example) or unreadable_reason(example)
    count = (
        f"all {len(files)} image file(s)"
        if len(failed) == len(files)
        else f"{len(failed)} of the {len(files)} image file(s) (the only ones in the training set)"
    )
    others = f"; so are classes {', '.join(names[int(j)] for j in lost[1:6])}" if len(lost) > 1 else ""
    raise DataError(
        f"class '{names[c]}' has no readable image: {count} in '{folder}' failed to load (e.g. "
        f"'{os.path.basename(example)}': {reason}){others}; replace or remove the files, or remove the folder"
    )


def _require_exclusions_leave_every_class(before: ImageData, after: ImageData, manifest: str) -> None:
    """A dedup manifest that would take every training image of a class is an error, not an empty class."""
    k = len(before.class_names)
    had, left = torch.bincount(before.labels, minlength=k), torch.bincount(after.labels, minlength=k)
    lost = torch.nonzero((had > 0) & (left == 0)).flatten().tolist()
    if lost:
        names = ", ".join(f"'{before.class_names[c]}' ({int(had[c])})" for c in lost[:5])
        raise DataError(
            f"the exclusions in data.exclude_manifest='{manifest}' would remove every training image of class(es) "
            f"{names}: they duplicate images of other classes; fix or remove those class folders, or train without "
            "the manifest"
        )


def _note_subset_size(key: str, asked: int, got: int, classes: int, notes: list[str]) -> None:
    """A stratified subset keeps at least one image per class, so it can exceed what was asked: say so."""
    if asked < classes and got > asked:
        line = f"data.{key}={asked} is below one image per class ({classes} classes): the subset holds {got} images"
    elif got < asked:  # fewer images than asked (after a hold-out or exclusions): all of them are used
        line = f"data.{key}={asked} asks for more than the {got} images available: all {got} are used"
    else:
        return
    log.warning("warning: %s", line)
    notes.append(line)


def _note_untested_classes(test: ImageData, notes: list[str]) -> None:
    """Training classes left without a (readable) test image: the test metrics cover fewer classes; say so."""
    k = len(test.class_names)
    untested = [
        test.class_names[c] for c in torch.nonzero(torch.bincount(test.labels, minlength=k) == 0).flatten()
    ]
    if untested:
        listed = ", ".join(untested[:5]) + (" ..." if len(untested) > 5 else "")
        line = (
            f"training class(es) without a readable test image: {listed}; the test metrics cover "
            f"{k - len(untested)} of {k} classes"
        )
        log.warning("warning: %s", line)
        notes.append(line)


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

        before = train
        train, test = apply_exclude_manifest(train, test, d.exclude_manifest)
        _require_exclusions_leave_every_class(before, train, d.exclude_manifest)
    # every file's header, before the hold-out, subsets and splits (which then count readable files only)
    origin = train
    train, reasons = _screen_headers(train, d.num_workers)
    _require_every_class(origin, origin, train, reasons)
    test, test_reasons = _screen_headers(test, d.num_workers)
    reasons.update(test_reasons)
    if len(test) == 0:
        raise DataError(f"the {d.name} test set is empty")

    holdout, notes = None, list(source.notes)
    if (
        d.holdout_per_class
    ):  # after any exclusion (dedup) and before subsets and the validation split (SPEC §2.7)
        keep, held = per_class_holdout(train.labels, d.holdout_per_class, d.split_seed, train.class_names)
        holdout, train = train.subset(held), train.subset(keep)
        notes.append(
            f"hold-out set: {len(holdout)} unused training images ({d.holdout_per_class} per class, seed {d.split_seed}), "
            "never trained on or used for selection, evaluated once beside the test set"
        )
    if d.train_subset:
        train = train.subset(stratified_subset(train.labels, d.train_subset, d.split_seed))
        _note_subset_size("train_subset", d.train_subset, len(train), len(train.class_names), notes)
    if d.test_subset:
        test = test.subset(stratified_subset(test.labels, d.test_subset, d.split_seed))
        _note_subset_size("test_subset", d.test_subset, len(test), len(test.class_names), notes)

    file_backed = train.images is None
    if file_backed:
        channels = d.channels or probe_channels(train.files)
        size = d.image_size
        if size is None:
            size = probe_size(train.files)
    else:
        channels = d.channels or int(train.images.shape[1])
        size = d.image_size or int(train.images.shape[-1])
    n_bytes = (len(train) + len(test) + len(holdout or ())) * channels * size * size
    in_memory = d.in_memory == "yes" or (
        d.in_memory == "auto" and (not file_backed or n_bytes <= IN_MEMORY_LIMIT)
    )
    if in_memory:
        if need_train or not file_backed:
            before, train = train, _materialise(train, size, channels, d.num_workers)
            if file_backed:
                _require_every_class(origin, before, train, reasons)
        test = _materialise(test, size, channels, d.num_workers)
        if holdout is not None:
            holdout = _materialise(holdout, size, channels, d.num_workers)
    elif file_backed:  # also when only evaluating, so that the validation split is the one trained with
        before, (train, probe_reasons) = train, _probe_classes(train, size, channels)
        reasons.update(probe_reasons)
        _require_every_class(origin, before, train, reasons)

    _note_untested_classes(test, notes)
    keep, held = stratified_split(train.labels, d.val_fraction, d.split_seed, train.class_names)
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
    prepared = PreparedData(
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
    warn_skipped(prepared.skipped_files)
    return prepared


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
            except _BAD_IMAGE_ERRORS:
                continue
        if not decoded:
            raise DataError(
                f"none of the {len(idx)} training images sampled for the normalisation statistics could be read "
                f"(e.g. '{train.files[int(idx[0])]}'); check the files, or set data.mean and data.std"
            )
        sample = torch.stack(decoded).float() / 255
    return sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


def _require_m_per_class(data: ImageData, m: int) -> None:
    """m_per_class draws ``m`` images of a class at a time: a class with fewer would never be trained on."""
    counts = torch.bincount(data.labels, minlength=len(data.class_names)).tolist()
    short = [(name, n) for name, n in zip(data.class_names, counts, strict=True) if 0 < n < m]
    if short:
        listed = ", ".join(f"'{name}' ({n})" for name, n in short[:5]) + (" ..." if len(short) > 5 else "")
        raise ConfigError(
            f"data.sampler=m_per_class draws data.samples_per_class={m} images of a class at a time, but class(es) "
            f"{listed} have fewer training images and would never be trained on; lower data.samples_per_class to "
            f"{min(n for _, n in short)} or use data.sampler=balanced"
        )


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
    if train and cfg.data.sampler == "m_per_class" and cfg.data.samples_per_class:
        _require_m_per_class(data, cfg.data.samples_per_class)
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

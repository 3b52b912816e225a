"""Tests of the held-out evaluation set (seed 001's "200 unused training images per class", SPEC §2.5, §2.7):
exactly N per class, seeded, disjoint from train / validation / test, carved before subsets, one-line error
for classes too small, and evaluated once beside the test set (``metrics["holdout"]``, a report table)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.config import load_config
from imgcls.data.prepare import prepare_data
from imgcls.data.splits import per_class_holdout
from imgcls.errors import DataError
from tiny_runs import TINY_OVERRIDES, single_thread


def labels_with_counts(counts: list[int]) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]


def test_per_class_holdout_is_exact_disjoint_and_seeded():
    labels = labels_with_counts([30, 12, 7, 50])
    keep, held = per_class_holdout(labels, 5, seed=0)
    assert torch.bincount(labels[held]).tolist() == [5, 5, 5, 5]
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(labels.numel()))  # a partition
    assert torch.equal(held, per_class_holdout(labels, 5, seed=0)[1])
    assert not torch.equal(held, per_class_holdout(labels, 5, seed=1)[1])


def test_per_class_holdout_needs_images_left_to_train():
    with pytest.raises(DataError, match=r"holdout_per_class=7 would leave class #2 \(7 images\)"):
        per_class_holdout(labels_with_counts([30, 12, 7]), 7, seed=0)
    with pytest.raises(DataError, match=r"would leave class 'owl' \(7 images\)"):
        per_class_holdout(labels_with_counts([30, 12, 7]), 7, seed=0, class_names=["cat", "dog", "owl"])


@pytest.fixture
def tree(tmp_path) -> Path:
    """root/{train,test}/{c0..c3}: 20 training and 3 test images (8×8 RGB) per class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 3)):
        for c in range(4):
            folder = tmp_path / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{c}_{i}.png")
    return tmp_path


@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_prepared_holdout_is_disjoint_from_train_val_and_test(tree, in_memory):
    cfg = load_config(
        None,
        [
            "data.name=imagefolder",
            f"data.root={tree}",
            "data.num_workers=0",
            "data.holdout_per_class=4",
            "data.val_fraction=0.25",
            f"data.in_memory={in_memory}",
            "data.train_subset=40",
        ],
    )
    data = prepare_data(cfg)
    assert torch.bincount(data.holdout.labels).tolist() == [4, 4, 4, 4]

    def ids(part) -> set:  # file names, or the pixels themselves once loaded (random images are unique)
        if part.images is None:
            return set(part.files)
        return {bytes(img.flatten().tolist()) for img in part.images}

    files = {k: ids(getattr(data, k)) for k in ("train", "val", "test", "holdout")}
    assert len(files["holdout"]) == 16
    for other in ("train", "val", "test"):
        assert not files["holdout"] & files[other], other
    # carved from the full training folder before the subset: 80 − 16 = 64 remain, of which 40 are used
    assert len(data.train) + len(data.val) == 40
    assert (data.holdout.images is not None) == (in_memory == "yes")
    assert any("hold-out set: 16 unused training images" in n for n in data.notes)


def test_holdout_is_evaluated_beside_the_test_set(tree, tmp_path):
    from imgcls import api

    overrides = [
        "data.name=imagefolder",
        f"data.root={tree}",
        "data.num_workers=0",
        "data.holdout_per_class=5",
        "data.val_fraction=0.2",
        *TINY_OVERRIDES,
        "model.backbone_args={layout: mnist, width_mult: 0.125}",
        "train.epochs=1",
        "train.batch_size=16",
        f"output.dir={tmp_path / 'runs'}",
    ]
    with single_thread():
        result = api.train(None, overrides)
    m = json.loads((result.run_dir / "metrics.json").read_text())
    assert m["num_samples"] == 12  # the test set
    h = m["holdout"]
    assert h["num_samples"] == 20 and h["per_class_size"] == 5
    assert sum(map(sum, h["confusion_matrix"])) == 20
    assert set(h["per_class_accuracy"]) == {"c0", "c1", "c2", "c3"}
    assert h["accuracy"] == pytest.approx(sum(h["confusion_matrix"][i][i] for i in range(4)) / 20)
    report = (result.run_dir / "report.md").read_text()
    assert (
        "## Hold-out set (unused training images)" in report
        and "hold-out set: 20 unused training images" in report
    )


def test_holdout_is_drawn_after_near_duplicate_exclusion(tree, tmp_path):
    """With data.exclude_manifest, removed near-duplicates never reach the hold-out set (SPEC §2.7, pitfall 8)."""
    from imgcls.data.dedup import dedup_folder

    for c in range(4):  # two exact copies per class: the dedup keeps one of each pair
        for i in range(2):
            src = tree / "train" / f"c{c}" / f"{c}_{i}.png"
            (tree / "train" / f"c{c}" / f"copy_{c}_{i}.png").write_bytes(src.read_bytes())
    manifest = dedup_folder(
        tree / "train", threshold=1, scope="within", out=tmp_path / "dedup.json", workers=1
    )
    removed = {str(tree / "train" / e["path"]) for e in manifest["removed"]}
    assert len(removed) == 8
    overrides = [
        "data.name=imagefolder",
        f"data.root={tree}",
        "data.num_workers=0",
        "data.in_memory=no",
        f"data.exclude_manifest={tmp_path / 'dedup.json'}",
        "data.holdout_per_class=5",
        "data.val_fraction=0.1",
    ]
    data = prepare_data(load_config(None, overrides))
    assert torch.bincount(data.holdout.labels).tolist() == [5, 5, 5, 5]
    everything = set(data.train.files) | set(data.val.files) | set(data.holdout.files)
    assert (
        len(everything) == 80 and not everything & removed
    )  # 88 files − 8 removed, none of them kept anywhere
    assert not set(data.holdout.files) & (set(data.train.files) | set(data.val.files))

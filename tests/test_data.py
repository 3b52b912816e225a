"""Tests of the data path (DESIGN "Data path and speed"): stratified splits and subsets, the Fashion-MNIST
source and its look-up order ($IMGCLS_DATA, data.root, the Debian package), ImageFolder trees with unreadable
files, the in-memory batch loader (epoch coverage, drop_last, DDP rank sharding, seeded orders) and the
balanced / m-per-class samplers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.config import DataConfig, load_config
from imgcls.data import sources
from imgcls.data.idx import write_idx
from imgcls.data.images import ImageData, convert_channels, resize_uint8
from imgcls.data.loader import FileLoader, InMemoryLoader, epoch_generator
from imgcls.data.prepare import make_loader, prepare_data
from imgcls.data.samplers import balanced_order, epoch_order, m_per_class_order
from imgcls.data.splits import stratified_split, stratified_subset
from imgcls.errors import ConfigError, DataError
from imgcls.registry import DATASETS
from tiny_runs import FASHION_MNIST_DIR, requires_fashion_mnist


@pytest.fixture(scope="module")
def fashion():
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)")
    return DATASETS.build("fashion_mnist", cfg=DataConfig())


def imbalanced_labels() -> torch.Tensor:
    counts = [50, 30, 20, 7, 3]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]


# ------------------------------------------------------------------------------- splits
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_stratified_split_keeps_class_proportions(fraction):
    labels = imbalanced_labels()
    keep, held = stratified_split(labels, fraction, seed=0)
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(labels.numel()))  # a partition
    assert keep.tolist() == sorted(keep.tolist()) and held.tolist() == sorted(held.tolist())
    total = torch.bincount(labels)
    held_counts = torch.bincount(labels[held], minlength=total.numel())
    for c in range(total.numel()):
        assert abs(int(held_counts[c]) - fraction * int(total[c])) <= 1, (c, held_counts.tolist())
    assert abs(held.numel() - round(fraction * labels.numel())) <= 1


def test_stratified_split_on_fashion_mnist_is_exact_per_class(fashion):
    keep, held = stratified_split(fashion.train.labels, 0.1, seed=0)
    assert held.numel() == 6000 and keep.numel() == 54000
    assert torch.bincount(fashion.train.labels[held]).tolist() == [600] * 10


def test_stratified_split_is_seeded():
    labels = imbalanced_labels()
    a = stratified_split(labels, 0.2, seed=3)
    b = stratified_split(labels, 0.2, seed=3)
    c = stratified_split(labels, 0.2, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_zero_fraction_holds_nothing_out():
    labels = imbalanced_labels()
    keep, held = stratified_split(labels, 0.0, seed=0)
    assert keep.tolist() == list(range(labels.numel())) and held.numel() == 0


def test_tiny_fraction_holds_out_at_least_one_image_per_class_count():
    labels = imbalanced_labels()
    # 1 % of 110 would be 1 image: below sklearn's minimum of one per class
    keep, held = stratified_split(labels, 0.01, seed=0)
    assert held.numel() == 5 and keep.numel() == 105
    assert int(torch.bincount(labels[held]).argmax()) == 0  # the largest class dominates the held-out part


def test_split_with_a_singleton_class_is_a_data_error():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    with pytest.raises(DataError, match=r"class #2 has only 1 image, so a stratified split is impossible"):
        stratified_split(labels, 0.3, seed=0)
    with pytest.raises(DataError, match=r"class 'owl' has only 1 image"):
        stratified_split(labels, 0.3, seed=0, class_names=["cat", "dog", "owl"])


def test_stratified_subset_proportions_and_determinism(fashion):
    chosen = stratified_subset(fashion.train.labels, 1000, seed=0)
    assert chosen.numel() == 1000 and chosen.unique().numel() == 1000
    assert torch.bincount(fashion.train.labels[chosen]).tolist() == [100] * 10
    assert torch.equal(chosen, stratified_subset(fashion.train.labels, 1000, seed=0))

    labels = imbalanced_labels()
    chosen = stratified_subset(labels, 55, seed=1)
    counts = torch.bincount(labels[chosen], minlength=5)
    for c, n in enumerate([50, 30, 20, 7, 3]):
        assert abs(int(counts[c]) - n / 2) <= 1


def test_subset_larger_than_the_data_is_everything():
    labels = imbalanced_labels()
    assert torch.equal(stratified_subset(labels, 10_000, seed=0), torch.arange(labels.numel()))


# ------------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_mnist_loads(fashion):
    for part, n in ((fashion.train, 60000), (fashion.test, 10000)):
        assert part.images.shape == (n, 1, 28, 28)
        assert part.images.dtype == torch.uint8
        assert part.labels.shape == (n,) and part.labels.dtype == torch.int64
        assert torch.bincount(part.labels).tolist() == [n // 10] * 10
    assert fashion.train.class_names == sources.FASHION_MNIST_CLASSES
    assert len(fashion.train.class_names) == 10
    assert fashion.mean == pytest.approx([0.2860]) and fashion.std == pytest.approx([0.3530])
    # the published mean of the training images
    assert float(fashion.train.images[:5000].float().mean() / 255) == pytest.approx(0.286, abs=0.01)


@requires_fashion_mnist
def test_prepare_data_with_subsets():
    cfg = load_config(None, ["data.train_subset=1000", "data.test_subset=500", "data.val_fraction=0.1"])
    data = prepare_data(cfg)
    assert (len(data.train), len(data.val), len(data.test)) == (900, 100, 500)
    assert torch.bincount(data.val.labels).tolist() == [10] * 10
    assert torch.bincount(data.train.labels).tolist() == [90] * 10
    assert torch.bincount(data.test.labels).tolist() == [50] * 10
    assert data.preprocess == {
        "image_size": 28,
        "channels": 1,
        "mean": [0.2860],
        "std": [0.3530],
        "invert": "none",
    }
    assert data.skipped_files == []


def write_fake_fashion(
    folder: Path, n_train: int = 20, n_test: int = 10, compress: bool = True
) -> tuple[np.ndarray, ...]:
    """Hand-made IDX files in ``folder``: ``n`` tiny images whose pixels encode their index."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if compress else ""
    arrays = []
    for (images_name, labels_name), n in zip(sources.IDX_FILES.values(), (n_train, n_test), strict=True):
        images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 28, 28)).copy()
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / (images_name + ext), images)
        write_idx(folder / (labels_name + ext), labels)
        arrays += [images, labels]
    return tuple(arrays)


def test_imgcls_data_environment_variable_is_searched(tmp_path, monkeypatch):
    train_images, train_labels, test_images, _ = write_fake_fashion(tmp_path / "fashion-mnist")
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path))
    source = DATASETS.build("fashion_mnist", cfg=DataConfig())
    assert source.train.images.shape == (20, 1, 28, 28)
    assert torch.equal(source.train.images[:, 0], torch.from_numpy(train_images))
    assert source.train.labels.tolist() == train_labels.tolist()
    assert source.test.images.shape == (10, 1, 28, 28)
    assert torch.equal(source.test.images[:, 0], torch.from_numpy(test_images))


def test_data_root_is_searched_first_and_plain_files_work(tmp_path, monkeypatch):
    write_fake_fashion(tmp_path / "env" / "fashion-mnist", n_train=20)
    write_fake_fashion(tmp_path / "mine", n_train=30, compress=False)
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "env"))
    source = DATASETS.build("fashion_mnist", cfg=DataConfig(root=str(tmp_path / "mine")))
    assert len(source.train) == 30


def test_prepare_data_on_hand_made_files(tmp_path, monkeypatch):
    write_fake_fashion(tmp_path / "fashion-mnist", n_train=40, n_test=20)
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path))
    data = prepare_data(load_config(None, ["data.val_fraction=0.25"]))
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 20)
    # the validation images are training images (pixel value = index), never test images
    val_ids = set(data.val.images[:, 0, 0, 0].tolist())
    train_ids = set(data.train.images[:, 0, 0, 0].tolist())
    assert not val_ids & train_ids and val_ids | train_ids == set(range(40))


def test_missing_data_names_the_debian_package(tmp_path, monkeypatch):
    standard = sources.search_dirs
    monkeypatch.setattr(
        sources,
        "search_dirs",
        lambda cfg, folder: [
            d for d in standard(cfg, folder) if not str(d).startswith("/usr/share/datasets")
        ],
    )
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "nothing-here"))
    with pytest.raises(DataError) as info:
        prepare_data(load_config(None, [f"data.root={tmp_path / 'empty'}", "data.download=false"]))
    message = str(info.value)
    assert "dataset-fashion-mnist" in message
    assert "data.download=true" in message and "IMGCLS_DATA" in message
    assert str(tmp_path / "empty") in message
    assert "\n" not in message
    assert not (tmp_path / "cache").exists()  # nothing was downloaded


def test_idx_images_and_labels_of_different_length_is_a_data_error(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    write_fake_fashion(folder, n_train=20)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(19, dtype=np.uint8))
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path))
    with pytest.raises(DataError, match="do not match labels"):
        DATASETS.build("fashion_mnist", cfg=DataConfig())


# ------------------------------------------------------------------------------- ImageFolder
@pytest.fixture
def image_tree(tmp_path) -> Path:
    """root/{train,test}/{cat,dog,owl}/*.png (RGB 12×12) plus three unreadable files."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for name in ("cat", "dog", "owl"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"this is not a png")
    good = (tmp_path / "train" / "cat" / "0.png").read_bytes()
    (tmp_path / "train" / "owl" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "test" / "cat" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image extension: ignored")
    return tmp_path


def test_imagefolder_skips_and_lists_unreadable_files(image_tree):
    cfg = load_config(
        None,
        ["data.name=imagefolder", f"data.root={image_tree}", "data.num_workers=0", "data.val_fraction=0.2"],
    )
    data = prepare_data(cfg)
    assert data.class_names == ["cat", "dog", "owl"]
    assert (len(data.train) + len(data.val), len(data.test)) == (18, 6)
    assert data.channels == 3 and data.image_size == 12
    assert data.train.images.shape[1:] == (3, 12, 12) and data.train.images.dtype == torch.uint8
    assert data.skipped_files == sorted(
        str(image_tree / p) for p in ("train/dog/broken.png", "train/owl/truncated.png", "test/cat/bad.jpg")
    )
    assert torch.bincount(torch.cat([data.train.labels, data.val.labels])).tolist() == [6, 6, 6]
    # statistics are estimated from the training images when the source has none
    assert len(data.mean) == 3 and all(0.3 < m < 0.7 for m in data.mean)


def test_imagefolder_channels_and_size_conversion(image_tree):
    cfg = load_config(
        None,
        [
            "data.name=imagefolder",
            f"data.root={image_tree}",
            "data.num_workers=0",
            "data.channels=1",
            "data.image_size=8",
        ],
    )
    data = prepare_data(cfg)
    assert data.train.images.shape[1:] == (1, 8, 8)
    assert data.preprocess["channels"] == 1 and data.preprocess["image_size"] == 8


def test_streamed_imagefolder_skips_unreadable_files_while_loading(image_tree):
    cfg = load_config(
        None,
        ["data.name=imagefolder", f"data.root={image_tree}", "data.num_workers=0", "data.val_fraction=0"],
    )
    cfg.data.in_memory = "no"
    data = prepare_data(cfg)
    # the garbage file fails its header check before training; the truncated one only while decoding
    assert data.train.images is None and len(data.train.files) == 19
    assert data.train.skipped == [str(image_tree / "train/dog/broken.png")]
    loader = make_loader(data.train, data, cfg, train=True, batch_size=1)
    assert isinstance(loader, FileLoader)
    seen = sum(len(batch) for batch in loader)
    assert seen == 18
    assert loader.skipped == {str(image_tree / "train/owl/truncated.png")}


def test_imagefolder_without_root_or_folders_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"data\.root"):
        prepare_data(load_config(None, ["data.name=imagefolder"]))
    with pytest.raises(DataError, match="train/ and test/"):
        prepare_data(load_config(None, ["data.name=imagefolder", f"data.root={tmp_path}"]))


# ------------------------------------------------------------------------------- conversions
def test_convert_channels_luma_and_repeat():
    rgb = torch.tensor([255, 0, 0, 0, 255, 0, 0, 0, 255, 100, 100, 100], dtype=torch.uint8).view(4, 3, 1, 1)
    gray = convert_channels(rgb, 1)
    assert gray.flatten().tolist() == [
        76,
        150,
        29,
        100,
    ]  # round(255·0.299), round(255·0.587), round(255·0.114)
    again = convert_channels(gray, 3)
    assert again.shape == (4, 3, 1, 1) and torch.equal(again[:, 0], again[:, 2])
    assert convert_channels(rgb, None) is rgb


def test_resize_uint8_keeps_constant_images_constant():
    images = torch.full((3, 1, 28, 28), 77, dtype=torch.uint8)
    out = resize_uint8(images, 14, chunk=2)
    assert out.shape == (3, 1, 14, 14) and out.dtype == torch.uint8
    assert bool((out == 77).all())


# ------------------------------------------------------------------------------- in-memory loader
def toy_data(n: int = 50, classes: int = 5) -> ImageData:
    labels = torch.arange(n) % classes
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageData(labels=labels, class_names=[f"c{i}" for i in range(classes)], images=images)


def batches(loader) -> list[torch.Tensor]:
    return [b.index for b in loader]


def test_loader_covers_every_index_once_per_epoch():
    data = toy_data()
    loader = InMemoryLoader(data, 8, shuffle=True, drop_last=False, seed=0)
    got = batches(loader)
    assert len(got) == len(loader) == 7
    assert [len(b) for b in got] == [8] * 6 + [2]
    assert sorted(torch.cat(got).tolist()) == list(range(50))
    for batch in loader:  # images and targets are the indexed rows
        assert torch.equal(batch.images[:, 0, 0, 0].long(), batch.index)
        assert torch.equal(batch.targets, data.labels[batch.index])


def test_loader_drop_last():
    loader = InMemoryLoader(toy_data(), 8, shuffle=True, drop_last=True, seed=0)
    got = batches(loader)
    assert len(got) == len(loader) == 6
    assert all(len(b) == 8 for b in got)
    assert len(set(torch.cat(got).tolist())) == 48


def test_loader_without_shuffle_is_in_order():
    got = batches(InMemoryLoader(toy_data(), 16, shuffle=False, drop_last=False))
    assert torch.equal(torch.cat(got), torch.arange(50))


def test_loader_order_depends_only_on_seed_and_epoch():
    a = InMemoryLoader(toy_data(), 8, shuffle=True, drop_last=False, seed=5)
    b = InMemoryLoader(toy_data(), 8, shuffle=True, drop_last=False, seed=5)
    first = torch.cat(batches(a))
    assert torch.equal(first, torch.cat(batches(a)))  # iterating again: same epoch, same order
    assert torch.equal(first, torch.cat(batches(b)))
    a.set_epoch(1)
    second = torch.cat(batches(a))
    assert not torch.equal(first, second)
    b.set_epoch(1)
    assert torch.equal(second, torch.cat(batches(b)))
    c = InMemoryLoader(toy_data(), 8, shuffle=True, drop_last=False, seed=6)
    assert not torch.equal(first, torch.cat(batches(c)))


def test_epoch_generator_is_a_pure_function_of_seed_epoch_salt():
    draw = lambda g: torch.randint(0, 1000, (5,), generator=g).tolist()  # noqa: E731
    assert draw(epoch_generator(1, 2, 3)) == draw(epoch_generator(1, 2, 3))
    assert draw(epoch_generator(1, 2, 3)) != draw(epoch_generator(1, 3, 3))
    assert draw(epoch_generator(1, 2, 3)) != draw(epoch_generator(1, 2, 4))


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_sharding_unions_to_the_single_process_batches(drop_last, world_size):
    data = toy_data(50)
    single = batches(InMemoryLoader(data, 8, shuffle=True, drop_last=drop_last, seed=1, sampler="random"))
    ranks = [
        InMemoryLoader(data, 8, shuffle=True, drop_last=drop_last, seed=1, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    per_rank = [batches(loader) for loader in ranks]
    for loader, got in zip(ranks, per_rank, strict=True):
        assert len(loader) == len(got)
        assert all(len(b) <= 8 // world_size for b in got)
    for k, expected in enumerate(single):
        union = torch.cat([got[k] for got in per_rank if k < len(got)])
        assert sorted(union.tolist()) == sorted(expected.tolist())
    assert sum(len(got) > len(single) for got in per_rank) == 0
    # ranks never share an index
    everything = torch.cat([torch.cat(got) for got in per_rank])
    assert everything.unique().numel() == everything.numel()


def test_global_batch_must_divide_by_world_size():
    with pytest.raises(ConfigError, match="not divisible"):
        InMemoryLoader(toy_data(), 10, shuffle=True, drop_last=False, world_size=4)


# ------------------------------------------------------------------------------- samplers
def test_balanced_order_draws_k_per_class():
    labels = imbalanced_labels()  # 50, 30, 20, 7, 3
    order = balanced_order(labels, torch.Generator().manual_seed(0), per_class=10)
    assert torch.bincount(labels[order], minlength=5).tolist() == [10, 10, 10, 7, 3]
    assert order.unique().numel() == order.numel()  # without replacement
    other = balanced_order(labels, torch.Generator().manual_seed(1), per_class=10)
    assert not torch.equal(order, other)  # a fresh draw every epoch


def test_balanced_sampler_through_the_loader():
    data = ImageData(
        labels=imbalanced_labels(),
        class_names=list("abcde"),
        images=torch.zeros(110, 1, 1, 1, dtype=torch.uint8),
    )
    loader = InMemoryLoader(
        data, 4, shuffle=True, drop_last=False, seed=0, sampler="balanced", samples_per_class=5
    )
    got = torch.cat(batches(loader))
    assert len(loader) == 6  # 5 classes × min(5, n_c) = 23 images → 5 full batches + 1 of 3
    assert torch.bincount(data.labels[got], minlength=5).tolist() == [5, 5, 5, 5, 3]


def test_m_per_class_batches_hold_m_images_of_each_class():
    labels = torch.arange(200) % 10  # 20 images per class
    m, batch_size = 4, 16
    order = m_per_class_order(labels, torch.Generator().manual_seed(0), m, batch_size)
    assert order.numel() % batch_size == 0 and order.numel() > 0
    assert order.unique().numel() == order.numel()
    for block in order.view(-1, batch_size):
        counts = torch.bincount(labels[block], minlength=10)
        assert sorted(counts[counts > 0].tolist()) == [m] * (batch_size // m)
    # 20 per class = 5 chunks of 4 per class: 50 chunks → 12 full batches of 4 chunks
    assert order.numel() == 12 * batch_size


def test_m_per_class_through_the_loader():
    data = ImageData(
        labels=torch.arange(120) % 6,
        class_names=list("abcdef"),
        images=torch.zeros(120, 1, 1, 1, dtype=torch.uint8),
    )
    loader = InMemoryLoader(
        data, 6, shuffle=True, drop_last=True, seed=0, sampler="m_per_class", samples_per_class=2
    )
    got = batches(loader)
    assert len(got) == len(loader) > 0
    for index in got:
        assert sorted(torch.bincount(data.labels[index], minlength=6).tolist()) == [0, 0, 0, 2, 2, 2]


def test_sampler_config_errors():
    labels = torch.arange(40) % 4
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match="samples_per_class"):
        epoch_order(labels, gen, "balanced", None, 8)
    with pytest.raises(ConfigError, match="must divide"):
        m_per_class_order(labels, gen, 3, 8)
    with pytest.raises(ConfigError, match="number of classes"):
        m_per_class_order(labels, gen, 1, 8)  # 8 classes per batch, only 4 exist


@pytest.mark.parametrize(
    ("name", "dataset_class", "num_classes"), [("cifar10", "CIFAR10", 10), ("cifar100", "CIFAR100", 100)]
)
def test_cifar_sources_convert_torchvision_sets_to_chw(
    monkeypatch, tmp_path, name, dataset_class, num_classes
):
    import torchvision.datasets

    from imgcls.registry import DATASETS

    calls = []

    class FakeCifar:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            n = 6 if train else 4
            self.data = (np.arange(n * 32 * 32 * 3) % 251).astype(np.uint8).reshape(n, 32, 32, 3)
            self.targets = [i % num_classes for i in range(n)]
            self.classes = [f"class{i}" for i in range(num_classes)]

    monkeypatch.setattr(torchvision.datasets, dataset_class, FakeCifar)
    source = DATASETS.get(name)(DataConfig(name=name, root=str(tmp_path)))
    assert calls == [(str(tmp_path), True, False), (str(tmp_path), False, False)]
    assert source.train.images.shape == (6, 3, 32, 32) and source.test.images.shape == (4, 3, 32, 32)
    fake = FakeCifar(str(tmp_path), True, False)
    assert int(source.train.images[2, 1, 5, 7]) == int(fake.data[2, 5, 7, 1])  # HWC → CHW
    assert source.train.labels.tolist() == fake.targets and len(source.train.class_names) == num_classes

    def missing(root, train, download):
        raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(torchvision.datasets, dataset_class, missing)
    with pytest.raises(DataError, match=r"data\.download=true"):
        DATASETS.get(name)(DataConfig(name=name, root=str(tmp_path)))


def test_a_set_data_root_is_the_only_place_looked_at(tmp_path, monkeypatch):
    write_fake_fashion(tmp_path / "env" / "fashion-mnist", n_train=20)
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path / "env"))  # another copy the run must not fall back to
    with pytest.raises(DataError) as info:
        DATASETS.build("fashion_mnist", cfg=DataConfig(root=str(tmp_path / "typo")))
    message = str(info.value)
    assert (
        "\n" not in message
        and f"not found in {tmp_path / 'typo'}, {tmp_path / 'typo' / 'fashion-mnist'}" in message
    )
    assert "data.root is set, so only it is searched" in message
    assert (
        len(DATASETS.build("fashion_mnist", cfg=DataConfig()).train) == 20
    )  # without a root: the standard places


def test_a_subset_larger_than_the_data_or_below_one_per_class_is_noted(tmp_path, monkeypatch):
    write_fake_fashion(tmp_path / "fashion-mnist", n_train=40, n_test=20)
    monkeypatch.setenv("IMGCLS_DATA", str(tmp_path))
    data = prepare_data(
        load_config(None, ["data.val_fraction=0.25", "data.train_subset=100", "data.test_subset=5"])
    )
    assert "data.train_subset=100 asks for more than the 40 images available: all 40 are used" in data.notes
    assert any(
        n.startswith("data.test_subset=5 is below one image per class (10 classes)") for n in data.notes
    )

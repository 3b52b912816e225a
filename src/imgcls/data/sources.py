"""Data set sources: where each data set lives, how it is found, downloaded and read.

- Fashion-MNIST (Xiao et al., 2017; the embedded default) and MNIST: IDX files, looked up in
  ``data.root``, ``$IMGCLS_DATA``, ``~/.cache/imgcls`` and ``/usr/share/datasets`` (the Debian
  package ``dataset-fashion-mnist``), else downloaded from the official mirrors (md5-checked).
- CIFAR-10/100 and STL-10 through torchvision (downloaded only with ``data.download: true``).
- ImageFolder trees in the layouts of :mod:`imgcls.data.layouts` (``train/``/``Train/``, explicit
  folders, flat test folders, train-only trees; hidden and system files are ignored, an empty class
  folder is an error); unreadable images are skipped and listed by :mod:`imgcls.data.prepare`, never a crash.
- tiny-ImageNet (``tiny-imagenet-200``), class names are WordNet ids.

Every source returns in-memory uint8 tensors; the file-backed path (for trees too large for
memory) keeps paths and decodes in DataLoader workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgcls.config import DataConfig
from imgcls.data.idx import read_idx
from imgcls.data.images import ImageData
from imgcls.data.layouts import (
    IMAGE_EXTENSIONS,
    carve_test,
    is_junk,
    name_key,
    resolve_layout,
    scan_flat,
    scan_folder,
)
from imgcls.errors import DataError
from imgcls.registry import DATASETS

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class DataSource:
    """A loaded data set: train and test parts plus normalisation statistics and metadata."""

    train: ImageData
    test: ImageData
    mean: list[float]
    std: list[float]
    #: optional class name → WordNet synset name map (for taxonomies built from WordNet; Fashion-MNIST's
    #: built-in map lives in imgcls.taxonomy and is recognised from the class names)
    synsets: dict[str, str] = field(default_factory=dict)
    #: lines for the run report about how the data was laid out (e.g. a test set carved from train)
    notes: list[str] = field(default_factory=list)


def cache_dir() -> Path:
    return Path(os.environ.get("IMGCLS_CACHE", Path.home() / ".cache" / "imgcls"))


def search_dirs(cfg: DataConfig, folder: str) -> list[Path]:
    """Folders searched, in order, for a data set stored under ``folder``: only ``data.root`` (and its
    ``folder``) when it is set — a mistyped root must not fall back silently to another copy of the data (say
    ``imgcls evaluate --data data.root=...`` evaluating the system's copy instead) — else ``$IMGCLS_DATA``, the
    cache and ``/usr/share/datasets``."""
    if cfg.root:
        return [Path(cfg.root).expanduser(), Path(cfg.root).expanduser() / folder]
    dirs: list[Path] = []
    if os.environ.get("IMGCLS_DATA"):
        base = Path(os.environ["IMGCLS_DATA"])
        dirs += [base / folder, base]
    dirs += [cache_dir() / folder, Path("/usr/share/datasets") / folder]
    return dirs


def _find_idx(dirs: list[Path]) -> Path | None:
    for d in dirs:
        if all(
            any((d / (name + ext)).is_file() for ext in (".gz", ""))
            for pair in IDX_FILES.values()
            for name in pair
        ):
            return d
    return None


def _idx_path(folder: Path, name: str) -> Path:
    gz = folder / (name + ".gz")
    return gz if gz.is_file() else folder / name


def _download_idx(torchvision_cls: type, target: Path) -> None:
    """Download the four IDX files from torchvision's list of official mirrors (md5-checked)."""
    from torchvision.datasets.utils import download_url

    target.mkdir(parents=True, exist_ok=True)
    errors = []
    for filename, md5 in torchvision_cls.resources:
        for mirror in torchvision_cls.mirrors:
            try:
                download_url(f"{mirror}{filename}", root=str(target), filename=filename, md5=md5)
                break
            except Exception as exc:  # network errors come in many types
                errors.append(f"{mirror}{filename}: {' '.join(str(exc).split())}")
        else:
            raise DataError(f"download failed ({errors[-1]})")


def _load_idx_dataset(
    cfg: DataConfig, folder: str, torchvision_cls: type, how_to_get: str
) -> tuple[ImageData, ImageData]:
    found = _find_idx(search_dirs(cfg, folder))
    if found is None:
        if cfg.download is False:
            only_root = (
                " (data.root is set, so only it is searched; drop it to search the standard places)"
                if cfg.root
                else ""
            )
            raise DataError(
                f"{folder} not found in {', '.join(map(str, search_dirs(cfg, folder)))}{only_root}; {how_to_get}"
            )
        target = Path(cfg.root).expanduser() / folder if cfg.root else cache_dir() / folder
        try:
            _download_idx(torchvision_cls, target)
        except DataError as exc:
            raise DataError(f"{folder} not found locally and {exc}; {how_to_get}") from None
        found = target
    parts = []
    for split in ("train", "test"):
        images_file, labels_file = IDX_FILES[split]
        images = torch.from_numpy(read_idx(_idx_path(found, images_file)).copy())
        labels = torch.from_numpy(read_idx(_idx_path(found, labels_file)).astype(np.int64))
        if images.ndim != 3 or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{found}: {split} images {tuple(images.shape)} do not match labels {tuple(labels.shape)}"
            )
        parts.append((images.unsqueeze(1), labels))
    names = FASHION_MNIST_CLASSES if folder == "fashion-mnist" else [str(i) for i in range(10)]
    return tuple(ImageData(labels=lab, class_names=names, images=img) for img, lab in parts)  # type: ignore[return-value]


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DataConfig) -> DataSource:
    from torchvision.datasets import FashionMNIST

    train, test = _load_idx_dataset(
        cfg,
        "fashion-mnist",
        FashionMNIST,
        "install the Debian package dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist), "
        "or put the four *-ubyte.gz files in $IMGCLS_DATA/fashion-mnist, or set data.download=true with internet",
    )
    return DataSource(train, test, mean=[0.2860], std=[0.3530])


@DATASETS.register("mnist")
def mnist(cfg: DataConfig) -> DataSource:
    from torchvision.datasets import MNIST

    train, test = _load_idx_dataset(
        cfg,
        "mnist",
        MNIST,
        "put the four *-ubyte.gz files in $IMGCLS_DATA/mnist, or set data.download=true with internet",
    )
    return DataSource(train, test, mean=[0.1307], std=[0.3081])


def _torchvision_source(
    cfg: DataConfig, folder: str, build: Callable[[str, bool], tuple], dataset_cls: type | None = None
) -> tuple[ImageData, ImageData]:
    root = Path(cfg.root) if cfg.root else cache_dir() / folder
    try:
        (x_tr, y_tr, names), (x_te, y_te, _) = build(str(root), bool(cfg.download))
    except Exception as exc:
        reason = " ".join(str(exc).split())  # one line
        url, archive = getattr(dataset_cls, "url", "?"), getattr(dataset_cls, "filename", "the archive")
        unpacked = getattr(dataset_cls, "base_folder", folder)
        if cfg.download:  # offline, proxy, DNS, checksum: all end here
            raise DataError(
                f"could not download {folder} from {url} ({type(exc).__name__}: {reason}); without internet, "
                f"fetch {archive} elsewhere, unpack it into a folder so that <folder>/{unpacked}/ exists, "
                "and set data.root=<folder> data.download=false"
            ) from None
        if isinstance(exc, RuntimeError):  # torchvision raises RuntimeError("Dataset not found ...")
            raise DataError(
                f"{folder} not found under {root} ({reason}); set data.download=true (needs internet), or download "
                f"{url}, unpack it so that <folder>/{unpacked}/ exists and set data.root=<folder>"
            ) from None
        raise

    def as_data(x, y) -> ImageData:
        return ImageData(labels=torch.as_tensor(np.asarray(y), dtype=torch.long), class_names=names, images=x)

    return as_data(x_tr, y_tr), as_data(x_te, y_te)


def _hwc(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def _cifar(
    name: str, dataset_class: str, mean: list[float], std: list[float]
) -> Callable[[DataConfig], DataSource]:
    """CIFAR-10 / CIFAR-100 through torchvision (same files layout, different class)."""

    def source(cfg: DataConfig) -> DataSource:
        import torchvision.datasets

        dataset = getattr(torchvision.datasets, dataset_class)

        def build(root: str, download: bool) -> tuple:
            sets = [dataset(root, train=t, download=download) for t in (True, False)]
            return tuple((_hwc(s.data), s.targets, list(s.classes)) for s in sets)

        train, test = _torchvision_source(cfg, name, build, dataset)
        return DataSource(train, test, mean=mean, std=std)

    source.__name__ = name
    return source


cifar10 = DATASETS.register("cifar10")(
    _cifar("cifar10", "CIFAR10", [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
)
cifar100 = DATASETS.register("cifar100")(
    _cifar("cifar100", "CIFAR100", [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762])
)


@DATASETS.register("stl10")
def stl10(cfg: DataConfig) -> DataSource:
    from torchvision.datasets import STL10

    def build(root: str, download: bool) -> tuple:
        sets = [STL10(root, split=s, download=download) for s in ("train", "test")]
        return tuple((torch.from_numpy(s.data), s.labels, list(s.classes)) for s in sets)

    train, test = _torchvision_source(cfg, "stl10", build, STL10)
    return DataSource(train, test, mean=[0.4467, 0.4398, 0.4066], std=[0.2603, 0.2566, 0.2713])


def _folder_split(files: list[str], labels: list[int], names: list[str]) -> ImageData:
    return ImageData(labels=torch.as_tensor(labels, dtype=torch.long), class_names=names, files=files)


@DATASETS.register("imagefolder")
def imagefolder(cfg: DataConfig) -> DataSource:
    """An image tree in any layout of :mod:`imgcls.data.layouts` (train/Train, explicit folders, a flat
    test folder with classes in file names, or a train-only tree whose test set is carved out)."""
    layout = resolve_layout(cfg.root, cfg.train_dir, cfg.test_dir)
    files, labels, names = scan_folder(layout.train_dir)
    if not files:
        raise DataError(
            f"no images found under '{layout.train_dir}' (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    empty = [n for n, c in zip(names, counts, strict=True) if c == 0]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} under '{layout.train_dir}' hold "
            f"no images (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder(s)"
        )
    train = _folder_split(files, labels, names)
    notes = []
    if layout.test_dir is None:
        keep, held = carve_test(train.labels, cfg.test_fraction, cfg.split_seed)
        train, test = train.subset(keep), train.subset(held)
        notes.append(
            f"no test folder under '{layout.train_dir.parent if cfg.root is None else cfg.root}': the test set is "
            f"{len(test)} training images carved out by a stratified split (data.test_fraction={cfg.test_fraction}, "
            f"seed {cfg.split_seed}) from '{layout.train_dir}'"
        )
    elif layout.test_flat:
        test = _folder_split(*scan_flat(layout.test_dir, names), names)
        notes.append(
            f"test set: flat folder '{layout.test_dir}', classes read from the file names ({len(test)} images)"
        )
    else:
        test_files, test_labels, _ = scan_folder(layout.test_dir, names)
        test = _folder_split(test_files, test_labels, names)
        known = {name_key(n) for n in names}
        extra = sorted(
            d.name
            for d in layout.test_dir.iterdir()
            if d.is_dir() and not is_junk(d.name) and name_key(d.name) not in known
        )
        if extra:
            log.warning(
                "warning: class folder(s) %s in '%s' are not in '%s'; their images are left out of the test set",
                ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""),
                layout.test_dir,
                layout.train_dir,
            )
    return DataSource(train, test, mean=[], std=[], notes=notes)


@DATASETS.register("tiny_imagenet")
def tiny_imagenet(cfg: DataConfig) -> DataSource:
    """tiny-ImageNet-200: ``train/<wnid>/images/*.JPEG``; the official ``val`` set (labelled by
    ``val_annotations.txt``) is our test set; validation is split from train as everywhere else."""
    root = Path(cfg.root) if cfg.root else cache_dir() / "tiny-imagenet-200"
    if (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    annotations = root / "val" / "val_annotations.txt"
    if not (root / "train").is_dir() or not annotations.is_file():
        raise DataError(
            f"tiny-ImageNet not found at '{root}'; download http://cs231n.stanford.edu/tiny-imagenet-200.zip, "
            "unzip it and set data.root to the tiny-imagenet-200 folder"
        )
    files, labels, names = scan_folder(root / "train")
    index = {n: i for i, n in enumerate(names)}
    test_files, test_labels = [], []
    for line in annotations.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            test_files.append(str(root / "val" / "images" / parts[0]))
            test_labels.append(index[parts[1]])
    return DataSource(
        _folder_split(files, labels, names), _folder_split(test_files, test_labels, names), mean=[], std=[]
    )

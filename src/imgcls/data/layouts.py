"""Image-folder layouts (issue 14; seed 001's Kaggle ASL data, SPEC §2.1): where the training and
test images of a ``data.name: imagefolder`` tree are, and how their classes are read.

Recognised, in this order:

1. explicit ``data.train_dir`` / ``data.test_dir`` (relative to ``data.root`` unless absolute);
2. ``train``/``Train``/``training`` (or a folder named ``*_train``) and ``test``/``Test``/``testing``
   (or ``*_test``), else ``val``/``valid``/``validation``, matched case-insensitively — also one
   wrapper level down (``archive/ASL_Dataset/Train``) and through a folder repeated inside itself
   (``asl_alphabet_train/asl_alphabet_train/A``, as Kaggle zips ship it);
3. a **flat test folder** whose file names carry the class (``A_test.jpg``, ``space_test.jpg``,
   ``nothing_test.jpg``): the class is the longest class name that starts the file name, compared
   case-insensitively and followed by a non-letter or the end of the name;
4. a **train-only tree** (``root/train/<class>`` without a test folder, or ``root/<class>`` itself):
   the test set is carved out of the training images by a stratified, seeded split of
   ``data.test_fraction`` (``data.split_seed``), and the run's report says so.

Names are compared under :func:`name_key` (Unicode NFC, case-folded). Class sub-folders of a test tree are
matched to the training classes by exact name, else under that key; a folder that could be two classes, two
folders of one class, a class folder that is a broken link, and ambiguous trees (a sub-folder with train/test
folders of its own beside folders of images; a train folder without a test folder beside folders of images,
which may be classes of a train-only tree one of which is called ``train``) are errors, not guesses. Anything
else is a :class:`~imgcls.errors.DataError` with one line saying what was found and what is expected.

Junk never becomes a class or an image: names starting with ``.`` (``.DS_Store``, AppleDouble ``._x.jpg``,
``.ipynb_checkpoints/``), ``__MACOSX/``, ``Thumbs.db``, ``desktop.ini`` and a few other system folders, and
files whose extension (matched case-insensitively: ``.JPG``, ``.Png``) is not an image format. Symbolic links
to files are followed; a broken link is listed like any image, fails to open and is skipped as unreadable.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from imgcls.data.splits import stratified_split
from imgcls.errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
TRAIN_NAMES = ("train", "training")
TEST_NAMES = ("test", "testing")
VAL_NAMES = ("val", "valid", "validation")
log = logging.getLogger(__name__)

#: files and folders left by operating systems and archivers (compared in lower case); names starting with "." too
JUNK_NAMES = {"__macosx", "thumbs.db", "desktop.ini", "@eadir", "$recycle.bin", "system volume information"}


@dataclass
class FolderLayout:
    """Resolved folders of an image tree; ``test_dir`` is None for a train-only tree."""

    train_dir: Path
    test_dir: Path | None
    test_flat: bool = False

    def describe(self) -> str:
        if self.test_dir is None:
            return f"train-only tree '{self.train_dir}' (test set carved out of it)"
        kind = "flat folder, classes from file names" if self.test_flat else "class tree"
        return f"train '{self.train_dir}', test '{self.test_dir}' ({kind})"


def name_key(name: str) -> str:
    """How folder and class names are compared: Unicode NFC (macOS writes NFD: ``café`` as ``cafe`` + U+0301)
    and case-folded, so ``Café``, ``CAFÉ`` and a decomposed ``café`` are one name."""
    return unicodedata.normalize("NFC", name).casefold()


def is_junk(name: str) -> bool:
    """A hidden or system file or folder name (``.DS_Store``, ``._a.jpg``, ``__MACOSX``, ``Thumbs.db``)."""
    return name.startswith(".") or name.lower() in JUNK_NAMES


def is_image(path: Path) -> bool:
    """An image file by its name (extension, case-insensitive; not junk); a broken symbolic link counts,
    so that it is reported as unreadable rather than dropped silently."""
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and not is_junk(path.name)
        and (path.is_file() or (path.is_symlink() and not path.exists()))
    )


def iter_images(folder: Path) -> Iterator[Path]:
    """Image files under ``folder`` at any depth, in no particular order; junk folders are not entered
    (symbolic links to folders are not followed, as ``Path.rglob``)."""
    for current, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not is_junk(d)]
        for name in names:
            if is_image(path := Path(current) / name):
                yield path


def subdirs(folder: Path) -> list[Path]:
    """Sub-folders (junk excepted); a broken symbolic link that is no image file (an unmounted share, a moved
    class folder) is an error, not a silently missing class."""
    dirs = []
    for p in folder.iterdir():
        if is_junk(p.name):
            continue
        if p.is_dir():
            dirs.append(p)
        elif p.is_symlink() and not p.exists() and p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(
                f"'{p}' is a broken symbolic link (to '{os.readlink(p)}'); mount or restore its target, or remove the link"
            )
    return sorted(dirs)


def _has_images(folder: Path) -> bool:
    return any(is_image(p) for p in folder.iterdir())


def _has_images_below(folder: Path) -> bool:
    return next(iter_images(folder), None) is not None


def find_child(folder: Path, names: tuple[str, ...], suffix: str | None = None) -> Path | None:
    """The sub-folder of ``folder`` named one of ``names`` (case-insensitive; earlier names win), else one
    whose name ends with ``_<suffix>``/``-<suffix>``; two different matches of one name are an error."""
    dirs = subdirs(folder)
    for name in names:
        hits = [d for d in dirs if name_key(d.name) == name]
        if len(hits) > 1:
            raise DataError(
                f"'{folder}' has both {' and '.join(h.name for h in hits)}; keep one or set data.train_dir/test_dir"
            )
        if hits:
            return hits[0]
    if suffix:
        hits = [d for d in dirs if name_key(d.name).endswith((f"_{suffix}", f"-{suffix}"))]
        if len(hits) == 1:
            return hits[0]
    return None


def unwrap(folder: Path) -> Path:
    """Descend through a folder repeated inside itself (``x/x/...``, as Kaggle archives unpack)."""
    while not _has_images(folder):
        dirs = subdirs(folder)
        if len(dirs) == 1 and name_key(dirs[0].name) == name_key(folder.name):
            folder = dirs[0]
        else:
            break
    return folder


def _resolve(base: Path | None, value: str, what: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_dir():
        raise DataError(f"data.{what}='{value}' is not a folder (looked at '{path}')")
    return unwrap(path)


def _find_train(root: Path) -> Path | None:
    found = find_child(root, TRAIN_NAMES, "train")
    return unwrap(found) if found is not None else None


def _holds_splits(folder: Path) -> bool:
    return (
        find_child(folder, TRAIN_NAMES, "train") is not None
        or find_child(folder, TEST_NAMES, "test") is not None
    )


def _names(dirs: list[Path]) -> str:
    return ", ".join(d.name for d in dirs[:5]) + (" ..." if len(dirs) > 5 else "")


def _find_test(root: Path) -> Path | None:
    found = find_child(root, TEST_NAMES, "test") or find_child(root, VAL_NAMES)
    return unwrap(found) if found is not None else None


def _is_flat(folder: Path) -> bool:
    if any(_has_images_below(d) for d in subdirs(folder)):
        return False
    if not _has_images(folder):
        raise DataError(f"test folder '{folder}' has no images and no class sub-folders with images")
    return True


def resolve_layout(
    root: str | None, train_dir: str | None = None, test_dir: str | None = None
) -> FolderLayout:
    """Find the training and test folders of an image tree (see the module docstring for the rules)."""
    base = Path(root).expanduser() if root else None
    if base is not None and not base.is_dir():
        raise DataError(f"data.root='{root}' is not a folder")
    if base is None and train_dir is None:
        raise DataError(
            "data.name=imagefolder needs data.root=<folder with train/ and test/ (or val/) class sub-folders> "
            "or data.train_dir=<folder>"
        )
    if train_dir is not None:
        train = _resolve(base, train_dir, "train_dir")
    else:
        train = _find_train(base)
        if train is None:
            dirs = subdirs(base)
            wrappers = [d for d in dirs if _find_train(d) is not None]
            if len(wrappers) == 1 and all(d == wrappers[0] or not _has_images_below(d) for d in dirs):
                base = wrappers[0]  # one wrapper folder: archive/ASL_Dataset/{Train,Test}
                train = _find_train(base)
    if test_dir is not None:
        test = _resolve(base, test_dir, "test_dir")
    else:  # next to the training folder: in data.root (or its wrapper), else beside an explicit train_dir
        test = _find_test(base if base is not None else train.parent)
    if train is None:  # no train folder: root itself may be the class tree (train-only)
        if test is not None:
            raise DataError(
                f"'{base}' has a test folder '{test.name}' but no train/ folder; add one or set data.train_dir"
            )
        dirs = subdirs(base)
        if not any(_has_images_below(d) for d in dirs):
            raise DataError(
                f"'{base}' holds neither train/ and test/ folders nor class sub-folders with images; expected "
                f"{base}/train/<class>/*.jpg (+ {base}/test/<class>/*.jpg or flat {base}/test/<class>_*.jpg)"
            )
        nested = [d for d in dirs if _holds_splits(d)]
        if nested:  # e.g. root/{ASL_Dataset/{Train,Test}, sample_images}: not a class tree
            raise DataError(
                f"'{base}' is no class tree: its sub-folder(s) {_names(nested)} hold train/test folders of their own; "
                f"set data.root to the one to train on (e.g. '{nested[0]}'), or data.train_dir/test_dir"
            )
        train = unwrap(base)
    elif train_dir is None and test is None:
        # a train folder without a test folder beside other folders of images: those may be classes of a
        # train-only tree one of which is called "train" (bus, car, train), or strays; either way, ask
        child = find_child(base, TRAIN_NAMES, "train")
        others = [d for d in subdirs(base) if d != child and _has_images_below(d)]
        if others:
            raise DataError(
                f"'{base}' has a train folder '{child.name}' but no test folder, beside other folders with images "
                f"({_names(others)}); if all of them are classes (a train-only tree), set data.train_dir='{base}'; "
                "otherwise move the other folders out or set data.train_dir/test_dir"
            )
    if test is not None and test.absolute() == train.absolute():
        raise DataError(
            f"the training and test folders are the same ('{train}'); set data.test_dir to another folder"
        )
    return FolderLayout(train, test, test_flat=test is not None and _is_flat(test))


def scan_folder(root: Path, class_names: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """List ``root/<class>/**/<image>`` files; returns (files, labels, class_names) in sorted order
    (junk folders are no class, junk files no image; see the module docstring).

    With ``class_names`` (the training classes), sub-folders are matched to them case-insensitively;
    sub-folders of no training class are left out."""
    dirs = subdirs(root)
    if class_names is None:
        class_names = [d.name for d in dirs]
        folders = dict(zip(class_names, dirs, strict=True))
    else:
        folders = match_class_folders(root, dirs, class_names)
    if not class_names:
        if _has_images(root):
            raise DataError(
                f"'{root}' holds images but no class sub-folders; put each class's images in {root}/<class name>/"
                f" (or, if '{root.name}' is itself a class of a train-only tree, set data.train_dir to its parent)"
            )
        raise DataError(f"no class sub-folders in '{root}'; expected {root}/<class name>/<images>")
    strays = [p for p in root.iterdir() if is_image(p)]
    if strays:
        log.warning(
            "warning: %d image file(s) directly in '%s' are in no class folder and are left out, e.g. %s",
            len(strays),
            root,
            sorted(strays)[0].name,
        )
    files, labels = [], []
    for label, name in enumerate(class_names):
        folder = folders.get(name)
        if folder is None:
            continue
        for path in sorted(iter_images(folder)):
            files.append(str(path))
            labels.append(label)
    return files, labels, class_names


def match_class_folders(root: Path, dirs: list[Path], class_names: list[str]) -> dict[str, Path]:
    """The folder of each class among ``dirs`` (test folders matched to training classes): the exact name, else
    the one name equal under :func:`name_key` (case, Unicode normal form); folders of no class are left out (the
    caller warns about them), and a folder that could be either of two classes, or two folders of one class,
    are an error rather than a silent choice."""
    exact = set(class_names)
    by_key: dict[str, list[str]] = {}
    for name in class_names:
        by_key.setdefault(name_key(name), []).append(name)
    folders: dict[str, Path] = {d.name: d for d in dirs if d.name in exact}
    for d in dirs:
        if d.name in exact:
            continue
        candidates = by_key.get(name_key(d.name), [])
        if len(candidates) > 1:
            raise DataError(
                f"test folder '{d}' could be class {' or '.join(repr(c) for c in candidates)} (names equal but for "
                "case or Unicode form); rename it to one of them exactly"
            )
        if candidates:
            name = candidates[0]
            if name in folders:
                raise DataError(
                    f"'{root}' has two folders for class '{name}': '{folders[name].name}' and '{d.name}'; merge them"
                )
            folders[name] = d
    return folders


def class_from_filename(stem: str, class_names: list[str]) -> int | None:
    """The class a file name starts with (``space_test`` → ``Space``; ``A12`` → ``A``), longest match first,
    compared under :func:`name_key` and followed by a non-letter or the end of the name; among classes equal but
    for case, the one spelled exactly as the file name wins; None when no class fits (an ambiguous name is an
    error)."""
    low = name_key(stem)
    fits = []
    for i, name in enumerate(class_names):
        n = name_key(name)
        if low.startswith(n) and (len(low) == len(n) or not low[len(n)].isalpha()):
            fits.append((len(n), i))
    if not fits:
        return None
    longest = max(length for length, _ in fits)
    best = [i for length, i in fits if length == longest]
    if len(best) > 1:
        stem_nfc = unicodedata.normalize("NFC", stem)
        exact = [i for i in best if stem_nfc.startswith(unicodedata.normalize("NFC", class_names[i]))]
        if len(exact) != 1:
            raise DataError(
                f"test file name '{stem}' could be class {' or '.join(repr(class_names[i]) for i in best)}; "
                "name it with the class spelled exactly, or use test class folders"
            )
        return exact[0]
    return best[0]


def scan_flat(folder: Path, class_names: list[str]) -> tuple[list[str], list[int]]:
    """Images directly in ``folder`` labelled by their file names (``A_test.jpg``); unknown names are an error."""
    files, labels, unknown = [], [], []
    for path in sorted(p for p in folder.iterdir() if is_image(p)):
        label = class_from_filename(path.stem, class_names)
        if label is None:
            unknown.append(path.name)
        else:
            files.append(str(path))
            labels.append(label)
    if unknown:
        raise DataError(
            f"{len(unknown)} file(s) in the flat test folder '{folder}' name no training class, e.g. '{unknown[0]}'; "
            f"expected <class>_*.jpg with a class among {', '.join(class_names[:6])}, ..."
        )
    return files, labels


def carve_test(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices of a train-only tree: a stratified, seeded ``fraction`` becomes the test set."""
    return stratified_split(labels, fraction, seed)

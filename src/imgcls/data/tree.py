"""Listing an image-folder class tree (``SRC/<class>/**/<image>``) for the offline data tools
(``imgcls data cache`` and ``imgcls data dedup``).

The tree is read as training reads a train-only tree (:mod:`imgcls.data.layouts`): a folder repeated inside
itself (``asl_alphabet_train/asl_alphabet_train/A``, as Kaggle zips unpack) is descended; a tree holding
split folders (``train``, ``Training``, ``asl_alphabet_test``, ``validation``, ... — also below one wrapper
folder) is refused, since its splits would become classes; and a class folder without image files is an
error, since the class would vanish silently."""

from __future__ import annotations

from pathlib import Path

from imgcls.data.layouts import TEST_NAMES, TRAIN_NAMES, VAL_NAMES, name_key, scan_folder, subdirs, unwrap
from imgcls.errors import DataError

SPLIT_NAMES = (*TRAIN_NAMES, *TEST_NAMES, *VAL_NAMES)
SPLIT_SUFFIXES = ("_train", "-train", "_test", "-test")


def is_split_name(name: str) -> bool:
    """A folder name that training reads as a split (case-insensitive): ``train``, ``Training``, ``Test``,
    ``val``, ``valid``, ``validation``, or a name ending in ``_train``/``-train``/``_test``/``-test``."""
    low = name_key(name)
    return low in SPLIT_NAMES or low.endswith(SPLIT_SUFFIXES)


def _refuse_splits(src: str | Path, root: Path) -> None:
    """A one-line error when a sub-folder of ``root`` (or of its only sub-folder, a wrapper) is a split."""
    dirs = subdirs(root)
    where = dirs
    if len(dirs) == 1 and not any(is_split_name(d.name) for d in dirs):
        where = subdirs(dirs[0])  # a wrapper folder: archive/ASL_Dataset/{Train,Test}
    splits = [d for d in where if is_split_name(d.name)]
    if not splits:
        return
    train = [
        d for d in splits if name_key(d.name) in TRAIN_NAMES or name_key(d.name).endswith(SPLIT_SUFFIXES[:2])
    ]
    example = (train or splits)[0]
    raise DataError(
        f"'{src}' holds split folder(s) {', '.join(d.name for d in splits)}, not only class folders; run the "
        f"command on one split's class tree, e.g. on '{example}' (a class folder named like a split must be renamed)"
    )


def scan_class_tree(src: str | Path) -> tuple[Path, list[str], list[int], list[str]]:
    """``(resolved root, files, labels, class names)`` of a class tree, in sorted (class, path) order.

    One-line :class:`DataError` for a missing folder, split folders, no class folders, and a class folder
    without image files (broken symbolic links count as files: they are skipped later as unreadable)."""
    root = Path(src).expanduser()
    if not root.is_dir():
        raise DataError(f"'{src}' is not a folder; pass a folder with one sub-folder of images per class")
    root = unwrap(root.resolve())
    _refuse_splits(src, root)
    files, labels, class_names = scan_folder(root)
    if not files:
        raise DataError(f"no images under '{src}' (expected {src}/<class>/<image files>)")
    present = set(labels)
    empty = [name for label, name in enumerate(class_names) if label not in present]
    if empty:
        others = (
            f" (nor do {', '.join(empty[1:6])}{', ...' if len(empty) > 6 else ''})" if len(empty) > 1 else ""
        )
        raise DataError(
            f"class folder '{root / empty[0]}' has no image files{others}; add images or remove the "
            f"folder{'s' if others else ''}"
        )
    return root, files, labels, class_names

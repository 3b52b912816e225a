"""Listing an image-folder class tree (``SRC/<class>/**/<image>``) for the offline data tools
(``imgcls data cache`` and ``imgcls data dedup``)."""

from __future__ import annotations

from pathlib import Path

from imgcls.data.layouts import is_junk
from imgcls.data.sources import scan_folder
from imgcls.errors import DataError

SPLIT_NAMES = ("train", "test", "val")


def scan_class_tree(src: str | Path) -> tuple[Path, list[str], list[int], list[str]]:
    """``(resolved root, files, labels, class names)`` of a class tree, in sorted (class, path) order."""
    root = Path(src).expanduser()
    if not root.is_dir():
        raise DataError(f"'{src}' is not a folder; pass a folder with one sub-folder of images per class")
    root = root.resolve()
    subdirs = [d.name for d in root.iterdir() if d.is_dir() and not is_junk(d.name)]
    splits = [d for d in subdirs if d.lower() in SPLIT_NAMES]
    if splits and len(splits) == len(subdirs):
        first = sorted(splits)[0]
        raise DataError(
            f"'{src}' holds split folders ({', '.join(sorted(splits))}), not class folders; "
            f"run the command on each split, e.g. on '{root / first}'"
        )
    files, labels, class_names = scan_folder(root)
    if not files:
        raise DataError(f"no images under '{src}' (expected {src}/<class>/<image files>)")
    return root, files, labels, class_names

"""A persistent resize cache: an image-folder tree decoded once into a uint8 array on disk.

Seed 001 (ASL alphabet: 166 k photos of 400 × 400 RGB) shrank every image to 96 × 96 grayscale
once before training; decoding the JPEGs again each run costs far more than training a small
model on 96-pixel images. ``imgcls data cache SRC DST --size 96 --grayscale`` writes::

    DST/images.npy     (N, C, size, size) uint8, read memory-mapped (numpy .npy)
    DST/labels.npy     (N,) int64
    DST/manifest.json  source folder, classes, and per row: source path, class, SHA-256 of the source
                       file; the unreadable files skipped (and why); files excluded by a dedup manifest

Pixels are those of :func:`imgcls.data.decode.decode_image` — the helper that loads an image
folder for training — so a cached image equals a direct decode + resize, bit for bit. Decoding
runs in a process pool over chunks of files; each finished chunk is written atomically to
``DST/.partial/`` (its ``.json`` record, written last, marks it done), so an interrupted run
resumes where it stopped and only the final assembly is repeated; a damaged chunk (truncated or
garbage file) is decoded again, with a warning. A class folder none of whose images can be read stops the
build with one line (a class with no image would silently vanish from training), and so do, before any decoding, a
class folder without image files, a single class, and exclusions that would remove all images of a class; broken
symbolic links are skipped and listed like unreadable files. ``data.name: cached`` with
``data.root: DST`` trains from the cache in memory; a damaged finished cache (a truncated, garbage or missing
file, contents that disagree with the manifest) is one line saying so and giving the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from imgcls.config import DataConfig
from imgcls.data.chunked import default_workers, run_chunks
from imgcls.data.decode import _BAD_IMAGE_ERRORS, decode_image, describe_decode_error
from imgcls.data.dedup import canonical_paths, load_exclusion_entries, write_json_atomic
from imgcls.data.images import ImageData
from imgcls.data.sources import DataSource
from imgcls.data.splits import stratified_split
from imgcls.data.tree import scan_class_tree
from imgcls.errors import DataError
from imgcls.registry import DATASETS

log = logging.getLogger(__name__)

CACHE_KIND = "imgcls-cache"
MANIFEST, IMAGES, LABELS, PARTIAL = "manifest.json", "images.npy", "labels.npy", ".partial"


def _chunk_paths(partial: Path, k: int) -> tuple[Path, Path]:
    return partial / f"chunk_{k:06d}.npy", partial / f"chunk_{k:06d}.json"


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _cache_chunk(paths: list[str], size: int, channels: int, partial: str, k: int) -> tuple[int, int]:
    """Decode one chunk and write it (images, then its done record); runs in a worker process."""
    records, arrays = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            records.append({"ok": False, "reason": f"{type(exc).__name__}: {exc.strerror or exc}"})
            continue
        digest = hashlib.sha256(data).hexdigest()
        try:
            arrays.append(decode_image(io.BytesIO(data), size, channels).numpy())
            records.append({"ok": True, "sha256": digest})
        except _BAD_IMAGE_ERRORS as exc:
            records.append({"ok": False, "sha256": digest, "reason": describe_decode_error(exc)})
    images = np.stack(arrays) if arrays else np.empty((0, channels, size, size), dtype=np.uint8)
    npy, done = _chunk_paths(Path(partial), k)
    _save_npy_atomic(npy, images)
    write_json_atomic(done, {"records": records})
    return len(arrays), len(paths) - len(arrays)


def _read_json(path: Path) -> object:
    """The JSON in ``path``, or None when it is unreadable, truncated or garbage."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _chunk_intact(partial: Path, k: int, n_files: int, size: int, channels: int) -> bool:
    """Whether finished chunk ``k`` reads back whole (record of ``n_files`` files, images of the right shape);
    a damaged one is removed, with a warning, so that it is decoded again."""
    npy, done = _chunk_paths(partial, k)
    record = _read_json(done)
    try:
        records = record["records"]  # type: ignore[index]
        with open(npy, "rb") as f:  # the .npy header, and a file exactly as long as it announces
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
            whole = os.fstat(f.fileno()).st_size == f.tell() + int(np.prod(shape)) * dtype.itemsize
        n_ok = sum(bool(r["ok"]) for r in records)
        intact = whole and len(records) == n_files and shape == (n_ok, channels, size, size)
    except (OSError, ValueError, EOFError, TypeError, KeyError):
        intact = False
    if not intact:
        log.warning("warning: chunk %d in '%s' is damaged; decoding its images again", k, partial)
        npy.unlink(missing_ok=True)
        done.unlink(missing_ok=True)
    return intact


def _files_digest(root: Path, files: list[str]) -> str:
    """Identity of the work: relative path, size and mtime of every file (changes invalidate a partial run).

    A file that cannot be stat'ed (a broken symbolic link, a link loop: listed so that it is skipped as
    unreadable) is recorded as missing with its link's own lstat data, so the identity changes when the
    link is repaired or retargeted."""
    h = hashlib.sha256()
    for f in files:
        rel = os.path.relpath(f, root)
        try:
            st = os.stat(f)
            h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            try:
                target = os.readlink(f) if os.path.islink(f) else ""
                lst = os.lstat(f)
                h.update(f"{rel}\tmissing\t{target}\t{lst.st_mtime_ns}\n".encode())
            except OSError:  # gone since it was listed
                h.update(f"{rel}\tabsent\n".encode())
    return h.hexdigest()


def _refuse_emptied_classes(
    labels: list[int],
    keep: list[bool],
    class_names: list[str],
    matches: list[tuple[str, str | None]],
    exclude_manifest: str | Path,
) -> None:
    """A one-line error when the exclusions remove every image of a class (it would train without data)."""
    total = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    kept = np.bincount(
        np.asarray(labels, dtype=np.int64)[np.asarray(keep, dtype=bool)], minlength=len(class_names)
    )
    dead = [c for c in range(len(class_names)) if total[c] > 0 and kept[c] == 0]
    if not dead:
        return
    name = class_names[dead[0]]
    matched = {dup for cls, dup in matches if cls == name}
    if matched and name not in matched and None not in matched:
        why = f"they duplicate images of other classes: {', '.join(sorted(matched))}"
    else:
        why = "they are near-duplicates of other images"
    others = f"; so would {', '.join(class_names[c] for c in dead[1:6])}" if len(dead) > 1 else ""
    raise DataError(
        f"class '{name}' would lose all its {total[dead[0]]} images to the exclusions in '{exclude_manifest}' "
        f"({why}){others}; remove the class folder if its images are mislabelled, or write the manifest with "
        "`imgcls data dedup SRC --scope within` to keep duplicates across classes"
    )


def _prepare_destination(dst: Path, overwrite: bool) -> None:
    ours = {MANIFEST, IMAGES, LABELS, PARTIAL, IMAGES + ".tmp", LABELS + ".tmp", MANIFEST + ".tmp"}
    if not dst.exists():
        dst.mkdir(parents=True)
        return
    if not dst.is_dir():
        raise DataError(f"'{dst}' is a file; choose a new or empty folder for the cache")
    entries = {p.name for p in dst.iterdir()}
    if entries - ours:
        raise DataError(
            f"'{dst}' is not empty and holds no imgcls cache; choose a new or empty folder for the cache"
        )
    if overwrite:
        for name in entries:
            path = dst / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif MANIFEST in entries:
        raise DataError(
            f"'{dst}' already holds a finished cache; pass --overwrite to rebuild it, or choose another folder"
        )


def build_cache(
    src: str | Path,
    dst: str | Path,
    *,
    size: int = 96,
    grayscale: bool = False,
    workers: int | None = None,
    chunk_size: int = 256,
    exclude_manifest: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Cache the class tree ``src`` into ``dst`` (resuming an unfinished run); returns a summary."""
    if size <= 0 or chunk_size <= 0:
        raise DataError(f"--size and --chunk-size must be positive (got {size} and {chunk_size})")
    start = time.perf_counter()
    root, files, labels, class_names = scan_class_tree(src)
    if len(class_names) < 2:
        raise DataError(
            f"'{src}' holds a single class folder ('{class_names[0]}'); a classification cache needs at least "
            "2 classes: pass the folder that holds one sub-folder per class"
        )
    channels = 1 if grayscale else 3
    excluded: list[dict] = []
    matches: list[tuple[str, str | None]] = []  # (class, class of the duplicate kept) per excluded file
    if exclude_manifest is not None:
        removed = load_exclusion_entries(exclude_manifest)
        keep = []
        for f, canon, label in zip(files, canonical_paths(files), labels, strict=True):
            if canon in removed:
                entry = removed[canon]
                excluded.append(
                    {"path": os.path.relpath(f, root), "class": class_names[label], "reason": entry["reason"]}
                )
                matches.append((class_names[label], entry.get("duplicate_class")))
            keep.append(canon not in removed)
        if not any(keep):
            raise DataError(
                f"all images under '{root}' are excluded by '{exclude_manifest}'; nothing to cache"
            )
        _refuse_emptied_classes(labels, keep, class_names, matches, exclude_manifest)
        files = [f for f, k in zip(files, keep, strict=True) if k]
        labels = [lab for lab, k in zip(labels, keep, strict=True) if k]
    dst = Path(dst).expanduser()
    if dst.resolve() == root or root in dst.resolve().parents:
        raise DataError(f"the cache folder '{dst}' is inside the source '{root}'; choose a folder outside it")
    _prepare_destination(dst, overwrite)
    partial = dst / PARTIAL
    plan = {
        "source": str(root),
        "size": size,
        "channels": channels,
        "chunk_size": chunk_size,
        "files": len(files),
        "files_digest": _files_digest(root, files),
    }
    plan_path = partial / "plan.json"
    if plan_path.is_file() and _read_json(plan_path) != plan:
        raise DataError(
            f"'{dst}' holds an unfinished cache of other files or settings; pass --overwrite to start again, or choose another folder"
        )
    partial.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_path, plan)

    starts = list(range(0, len(files), chunk_size))
    finished = [
        k
        for k in range(len(starts))
        if all(p.is_file() for p in _chunk_paths(partial, k))
        and _chunk_intact(partial, k, len(files[starts[k] : starts[k] + chunk_size]), size, channels)
    ]
    pending = sorted(set(range(len(starts))) - set(finished))
    jobs = [(files[starts[k] : starts[k] + chunk_size], size, channels, str(partial), k) for k in pending]
    sizes = [len(job[0]) for job in jobs]
    workers = default_workers() if workers is None else workers
    decode_start = time.perf_counter()
    for _ in run_chunks(
        _cache_chunk,
        jobs,
        sizes=sizes,
        workers=workers,
        label="caching",
        progress=progress,
        initial=len(files) - sum(sizes),
        total=len(files),
    ):
        pass
    decode_seconds = time.perf_counter() - decode_start

    manifest = _assemble(dst, root, files, labels, class_names, starts, size, channels)
    manifest["excluded"] = excluded
    manifest["exclude_manifest"] = None if exclude_manifest is None else str(Path(exclude_manifest).resolve())
    manifest["build"] = {
        "workers": workers,
        "chunk_size": chunk_size,
        "chunks": len(starts),
        "chunks_resumed": len(finished),
        "decoded": sum(sizes),
        "decode_seconds": round(decode_seconds, 3),
        "images_per_s": round(sum(sizes) / decode_seconds, 1) if decode_seconds > 0 and sizes else None,
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json_atomic(dst / MANIFEST, manifest)  # written last: its presence marks a finished cache
    shutil.rmtree(partial)
    return {
        "dst": str(dst),
        "count": manifest["count"],
        "skipped": len(manifest["skipped"]),
        "excluded": len(excluded),
        **manifest["build"],
    }


def _assemble(
    dst: Path,
    root: Path,
    files: list[str],
    labels: list[int],
    class_names: list[str],
    starts: list[int],
    size: int,
    channels: int,
) -> dict:
    """Concatenate the chunk files into ``images.npy``/``labels.npy`` (atomically) and build the manifest."""
    partial = dst / PARTIAL
    records = []
    for k in range(len(starts)):
        records += json.loads(_chunk_paths(partial, k)[1].read_text())["records"]
    if len(records) != len(files):
        raise DataError(
            f"'{dst / PARTIAL}' is inconsistent ({len(records)} records for {len(files)} files); pass --overwrite"
        )
    ok = [r["ok"] for r in records]
    count = sum(ok)
    if count == 0:
        raise DataError(
            f"none of the {len(files)} image files under '{root}' could be read (first: {files[0]})"
        )
    readable = np.bincount(np.asarray(labels)[np.asarray(ok, dtype=bool)], minlength=len(class_names))
    dead = [c for c in sorted(set(labels)) if readable[c] == 0]
    if dead:
        c = dead[0]
        members = [i for i, label in enumerate(labels) if label == c]
        others = f"; so are classes {', '.join(class_names[j] for j in dead[1:6])}" if len(dead) > 1 else ""
        raise DataError(
            f"class '{class_names[c]}' has no readable image: all {len(members)} image file(s) in "
            f"'{root / class_names[c]}' failed to load (e.g. '{os.path.basename(files[members[0]])}': "
            f"{records[members[0]]['reason']}){others}; replace or remove them, or remove the folder, then run "
            "the command again with --overwrite"
        )
    tmp = dst / (IMAGES + ".tmp")
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, channels, size, size))
    row = 0
    for k in range(len(starts)):
        chunk = np.load(_chunk_paths(partial, k)[0])
        images[row : row + chunk.shape[0]] = chunk
        row += chunk.shape[0]
    images.flush()
    del images
    os.replace(tmp, dst / IMAGES)
    _save_npy_atomic(
        dst / LABELS, np.asarray([lab for lab, good in zip(labels, ok, strict=True) if good], dtype=np.int64)
    )
    entries, skipped = [], []
    for f, label, record in zip(files, labels, records, strict=True):
        entry = {"path": os.path.relpath(f, root), "class": class_names[label]}
        if record["ok"]:
            entries.append({**entry, "sha256": record["sha256"]})
        else:
            skipped.append({**entry, "reason": record["reason"]})
    return {
        "kind": CACHE_KIND,
        "version": 1,
        "source": str(root),
        "size": size,
        "channels": channels,
        "classes": class_names,
        "count": count,
        "images": IMAGES,
        "labels": LABELS,
        "files": entries,
        "skipped": skipped,
    }


# ------------------------------------------------------------------------------- reading it back
def rebuild_hint(root: Path, manifest: dict | None = None) -> str:
    """The command that rebuilds the cache in ``root`` (from its manifest's settings where readable)."""
    manifest = manifest if isinstance(manifest, dict) else {}
    grayscale = " --grayscale" if manifest.get("channels") == 1 else ""
    exclude = f" --exclude {manifest['exclude_manifest']}" if manifest.get("exclude_manifest") else ""
    return (
        f"`imgcls data cache {manifest.get('source', 'SRC')} {root} --size {manifest.get('size', 'N')}"
        f"{grayscale}{exclude} --overwrite`"
    )


def damaged(root: Path, what: str, manifest: dict | None = None) -> DataError:
    return DataError(
        f"the cache '{root}' is damaged ({what}); rebuild it with {rebuild_hint(root, manifest)}"
    )


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        hint = (
            " (unfinished: run `imgcls data cache` again to resume it)" if (root / PARTIAL).is_dir() else ""
        )
        raise DataError(f"no finished cache in '{root}'{hint}; build one with `imgcls data cache SRC {root}`")
    manifest = _read_json(path)
    if manifest is None:
        raise damaged(root, f"{MANIFEST} is unreadable, truncated or not JSON")
    if not isinstance(manifest, dict) or manifest.get("kind") != CACHE_KIND:
        raise DataError(f"'{path}' is not an imgcls cache manifest")
    return manifest


def _load_array(root: Path, name: object, manifest: dict, mmap: bool) -> np.ndarray:
    """A ``.npy`` file of the cache (numbers only: never pickled objects), or a 'damaged' error."""
    if not isinstance(name, str) or not (root / name).is_file():
        raise damaged(root, f"{name!r} is missing", manifest)
    try:
        return np.load(root / name, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise damaged(root, f"{name} cannot be read: {type(exc).__name__}: {reason}", manifest) from None


def read_cache(root: str | Path) -> ImageData:
    """The cached images (copied into memory), labels, class names, source paths and skipped files."""
    root = Path(root)
    manifest = read_manifest(root)
    try:
        count, classes, entries = int(manifest["count"]), list(manifest["classes"]), manifest["files"]
        source, shape = (
            manifest["source"],
            (count, int(manifest["channels"]), manifest["size"], manifest["size"]),
        )
        files = [os.path.join(source, e["path"]) for e in entries]
        skipped = [os.path.join(source, e["path"]) for e in manifest["skipped"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(root, f"{MANIFEST} lacks or garbles {exc}", manifest) from None
    images = _load_array(root, manifest.get("images"), manifest, mmap=True)
    labels = _load_array(root, manifest.get("labels"), manifest, mmap=False)
    if images.shape[0] != count or labels.shape != (count,) or len(files) != count:
        raise damaged(
            root,
            f"{images.shape[0]} images, {labels.shape[0] if labels.ndim else 0} labels and {len(files)} files "
            f"listed where the manifest says {count}",
            manifest,
        )
    if images.dtype != np.uint8 or images.shape != shape:
        raise damaged(root, f"images are {images.dtype} {images.shape}, expected uint8 {shape}", manifest)
    if labels.dtype.kind not in "iu" or (
        count and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes)
    ):
        raise damaged(root, f"labels are not class indices 0..{len(classes) - 1}", manifest)
    try:
        pixels = torch.from_numpy(np.array(images))  # one sequential read of the memory map into RAM
    except (OSError, ValueError) as exc:  # the file shrank or vanished since it was opened
        raise damaged(root, f"{manifest['images']} cannot be read: {type(exc).__name__}", manifest) from None
    return ImageData(
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=classes,
        images=pixels,
        files=files,
        skipped=skipped,
    )


def _child(root: Path, names: tuple[str, ...]) -> Path | None:
    """The sub-folder of ``root`` (case-insensitive name among ``names``) holding a cache manifest."""
    if not root.is_dir():
        return None
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name.lower() in names and (d / MANIFEST).is_file():
            return d
    return None


def _relabel(part: ImageData, class_names: list[str], where: Path) -> ImageData:
    index = {n: i for i, n in enumerate(class_names)}
    missing = sorted(set(part.class_names) - set(index))
    if missing:
        raise DataError(f"'{where}' has classes the training cache lacks: {', '.join(missing[:5])}")
    mapping = torch.tensor([index[n] for n in part.class_names], dtype=torch.long)
    return ImageData(mapping[part.labels], class_names, part.images, part.files, part.skipped)


@DATASETS.register("cached")
def cached_source(cfg: DataConfig) -> DataSource:
    """``data.name: cached``: ``data.root`` is a cache folder (its test set is carved out with a stratified,
    seeded split of ``data.test_fraction``), or a folder with ``train/`` and ``test/`` (or ``val/``) caches.

    Rows carry their source paths, so ``data.exclude_manifest`` (applied by ``prepare_data`` to every
    file-based source) works here too; removing near-duplicates after the carving keeps train and test
    free of duplicates of each other, as the dedup keeps no two images in scope within the threshold."""
    if not cfg.root:
        raise DataError("data.name=cached needs data.root=<folder written by `imgcls data cache SRC DST`>")
    root = Path(cfg.root).expanduser()
    train_dir = root if (root / MANIFEST).is_file() else _child(root, ("train",))
    if train_dir is None:
        read_manifest(root)  # raises the explanatory error
    train = read_cache(train_dir)
    test_dir = None if train_dir == root else _child(root, ("test", "val"))
    if test_dir is not None:
        test = _relabel(read_cache(test_dir), train.class_names, test_dir)
    else:
        keep, held = stratified_split(train.labels, cfg.test_fraction, cfg.split_seed)
        log.info(
            "cached data '%s' has no test split: %d images (data.test_fraction=%g, stratified, seed %d) "
            "carved out of %d as the test set",
            root,
            len(held),
            cfg.test_fraction,
            cfg.split_seed,
            len(train),
        )
        train, test = train.subset(keep), train.subset(held)
        notes = [
            f"no test split in the cache '{root}': the test set is {len(held)} of its {len(keep) + len(held)} images, "
            f"carved out by a stratified split (data.test_fraction={cfg.test_fraction}, seed {cfg.split_seed})"
        ]
    return DataSource(train, test, mean=[], std=[], notes=notes if test_dir is None else [])

"""Near-duplicate removal by perceptual hash (seed 001: ASL alphabet, "remove images with a Hamming
distance less than 2", which cut 166 k training images to 93 k, many duplicates *across* classes).

Each image is decoded, converted to grayscale and resized to ``size × size`` (96 in the seed) with
the same helper training uses (:func:`imgcls.data.decode.decode_image`), then hashed to 64 bits
with the ``imagehash`` package (pHash: DCT of a 32 × 32 downscale; dHash: horizontal gradient
signs of a 9 × 8 downscale). We use ``imagehash`` rather than our own batched hash because
hashing is not the cost: on a 400 × 400 JPEG, decoding to 96 px grayscale takes 1.26 ms and the pHash
0.19 ms (measured in ``benchmarks/data_pipeline.py``).

Rule (``threshold`` T, default 2 = the seed's rule): two images are duplicates when the Hamming
distance of their hashes is **< T** (T = 1: identical hashes only; T = 2: ≤ 1 differing bit).
Note that a pHash sets exactly the 32 of its 64 DCT coefficients that lie above their median, so
two pHashes always differ in an *even* number of bits: with pHash, T = 2 finds only identical
hashes, and T = 3 is the first threshold that admits near (2-bit) duplicates. dHash has no such
constraint.
Images are visited in a fixed order (class folder, then path); an image is removed when an
earlier *kept* image in scope is a duplicate of it, and the manifest names the nearest such kept
image and its distance. Scope ``within`` compares images of the same class only, ``across``
images of different classes only, ``both`` all pairs. The pair search is sub-quadratic
(:mod:`imgcls.data.hamming`). Source files are only read, never deleted or moved: the output is
a JSON manifest that ``imgcls data cache --exclude`` and ``data.exclude_manifest`` consume.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from imgcls.data.chunked import default_workers, run_chunks
from imgcls.data.decode import _BAD_IMAGE_ERRORS, decode_image, describe_decode_error
from imgcls.data.hamming import near_pairs
from imgcls.data.images import ImageData
from imgcls.data.tree import scan_class_tree
from imgcls.errors import DataError, UserError

log = logging.getLogger(__name__)

HASHES = ("phash", "dhash")
SCOPES = ("within", "across", "both")
MANIFEST_KIND = "imgcls-dedup"


def image_hash(pixels: np.ndarray, kind: str) -> int:
    """64-bit perceptual hash of a uint8 ``(H, W)`` grayscale image, as an int (bits row-major, MSB first)."""
    import imagehash
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels), mode="L")
    value = imagehash.phash(image) if kind == "phash" else imagehash.dhash(image)
    return int(str(value), 16)


def hash_file(path: str, size: int, kind: str) -> int:
    """Decode ``path`` to ``size × size`` grayscale (as training does) and hash it."""
    return image_hash(decode_image(path, size, 1)[0].numpy(), kind)


def _hash_chunk(paths: list[str], size: int, kind: str) -> list[tuple[int | None, str | None]]:
    """(hash, None) per readable file, (None, reason) per unreadable one (runs in a worker process)."""
    results: list[tuple[int | None, str | None]] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
            results.append((image_hash(decode_image(io.BytesIO(data), size, 1)[0].numpy(), kind), None))
        except _BAD_IMAGE_ERRORS as exc:
            results.append((None, describe_decode_error(exc)))
    return results


def hash_files(
    files: list[str],
    *,
    size: int = 96,
    kind: str = "phash",
    workers: int | None = None,
    progress: bool = False,
    chunk_size: int = 256,
) -> tuple[np.ndarray, list[str | None]]:
    """Hashes of ``files`` (uint64; 0 where unreadable) and the reason each unreadable file failed."""
    if kind not in HASHES:
        raise UserError(f"unknown hash '{kind}'; use one of {', '.join(HASHES)}")
    workers = default_workers() if workers is None else workers
    starts = list(range(0, len(files), chunk_size))
    jobs = [(files[s : s + chunk_size], size, kind) for s in starts]
    hashes = np.zeros(len(files), dtype=np.uint64)
    reasons: list[str | None] = [None] * len(files)
    sizes = [len(job[0]) for job in jobs]
    for k, results in run_chunks(
        _hash_chunk, jobs, sizes=sizes, workers=workers, label="hashing", progress=progress
    ):
        for offset, (value, reason) in enumerate(results):
            if value is not None:
                hashes[starts[k] + offset] = value
            reasons[starts[k] + offset] = reason
    return hashes, reasons


def check_options(threshold: int, scope: str, kind: str = "phash") -> None:
    """One-line errors for bad ``--threshold``, ``--scope`` or ``--hash`` values (checked before any work)."""
    if scope not in SCOPES:
        raise UserError(f"--scope must be one of {', '.join(SCOPES)}, not '{scope}'")
    if not 1 <= threshold <= 64:
        raise UserError(
            f"--threshold must be in 1..64 (duplicates: Hamming distance < threshold), not {threshold}"
        )
    if kind not in HASHES:
        raise UserError(f"--hash must be one of {', '.join(HASHES)}, not '{kind}'")


def find_duplicates(
    hashes: np.ndarray, labels: np.ndarray, threshold: int = 2, scope: str = "both"
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Greedy de-duplication in index order.

    Returns ``match`` (for each image, the index of the kept image it duplicates, or −1 when it is
    kept), ``distance`` (its Hamming distance, −1 when kept) and pair counts: ``pairs_within_class``
    and ``pairs_across_class`` count *all* pairs with distance < ``threshold`` (whatever the scope).
    """
    check_options(threshold, scope)
    hashes = np.asarray(hashes, dtype=np.uint64)
    labels = np.asarray(labels)
    n = hashes.shape[0]
    i, j, d = near_pairs(hashes, threshold - 1)
    same = labels[i] == labels[j]
    counts = {"pairs_within_class": int(same.sum()), "pairs_across_class": int((~same).sum())}
    in_scope = same if scope == "within" else ~same if scope == "across" else np.ones_like(same)
    i, j, d = i[in_scope], j[in_scope], d[in_scope]
    order = np.lexsort((i, d, j))  # by later image, then nearest, then earliest
    match = np.full(n, -1, dtype=np.int64)
    distance = np.full(n, -1, dtype=np.int64)
    for a, b, dist in zip(i[order].tolist(), j[order].tolist(), d[order].tolist(), strict=True):
        # pairs come sorted by b, and a < b: a's own fate was decided when its pairs were visited
        if match[b] < 0 and match[a] < 0:
            match[b], distance[b] = a, dist
    return match, distance, counts


def _hex(value: int) -> str:
    return f"{value:016x}"


def dedup_folder(
    src: str | Path,
    *,
    threshold: int = 2,
    scope: str = "both",
    kind: str = "phash",
    size: int = 96,
    workers: int | None = None,
    out: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Hash every image of the class tree ``src``, find near-duplicates, and write (to ``out``) and
    return the manifest. Files in ``src`` are only read."""
    check_options(threshold, scope, kind)
    start = time.perf_counter()
    root, files, labels, class_names = scan_class_tree(src)
    hashes, reasons = hash_files(files, size=size, kind=kind, workers=workers, progress=progress)
    readable = np.array([r is None for r in reasons], dtype=bool)
    index = np.flatnonzero(readable)
    label_array = np.asarray(labels, dtype=np.int64)
    match, distance, counts = find_duplicates(hashes[index], label_array[index], threshold, scope)
    rel = [os.path.relpath(f, root) for f in files]

    kept, removed = [], []
    removed_within = removed_across = 0
    for pos, k in enumerate(index.tolist()):
        entry = {"path": rel[k], "class": class_names[labels[k]], "hash": _hex(int(hashes[k]))}
        if match[pos] < 0:
            kept.append(entry)
            continue
        other = int(index[match[pos]])
        within = labels[other] == labels[k]
        removed_within += int(within)
        removed_across += int(not within)
        entry.update(
            duplicate_of=rel[other], duplicate_class=class_names[labels[other]], distance=int(distance[pos])
        )
        removed.append(entry)
    unreadable = [
        {"path": rel[k], "class": class_names[labels[k]], "reason": reasons[k]}
        for k in np.flatnonzero(~readable)
    ]
    manifest = {
        "kind": MANIFEST_KIND,
        "version": 1,
        "source": str(root),
        "hash": kind,
        "size": size,
        "threshold": threshold,
        "rule": f"duplicates: Hamming distance < {threshold} between 64-bit {kind} hashes of {size}x{size} grayscale images",
        "scope": scope,
        "counts": {
            "files": len(files),
            "hashed": int(readable.sum()),
            "unreadable": len(unreadable),
            "kept": len(kept),
            "removed": len(removed),
            "removed_within_class": removed_within,
            "removed_across_class": removed_across,
            **counts,
        },
        "seconds": round(time.perf_counter() - start, 3),
        "removed": removed,
        "kept": kept,
        "unreadable": unreadable,
    }
    if out is not None:
        write_json_atomic(Path(out), manifest)
    return manifest


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------------- consuming a manifest
def canonical_paths(paths: Iterable[str]) -> list[str]:
    """Absolute paths with symlinked folders resolved (each folder resolved once)."""
    folders: dict[str, str] = {}
    out = []
    for path in paths:
        head, tail = os.path.split(os.path.abspath(path))
        if head not in folders:
            folders[head] = os.path.realpath(head)
        out.append(os.path.join(folders[head], tail))
    return out


def load_exclusion_entries(path: str | Path) -> dict[str, dict]:
    """Removed files of a dedup manifest: canonical absolute path → ``{"reason": why it was removed,
    "duplicate_class": the class of the kept image it duplicates (None when the manifest lacks it)}``."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"exclude manifest '{path}' not found; write one with `imgcls data dedup SRC --out {path}`"
        ) from None
    except (OSError, ValueError) as exc:  # ValueError: JSON and UTF-8 decoding errors
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise DataError(
            f"cannot read exclude manifest '{path}' ({reason}); write it again with `imgcls data dedup`"
        ) from None
    not_ours = DataError(f"'{path}' is not a dedup manifest (written by `imgcls data dedup SRC --out FILE`)")
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise not_ours
    try:
        root = str(manifest["source"])
        entries = list(manifest.get("removed", []))
        paths = canonical_paths(os.path.join(root, str(e["path"])) for e in entries)
        return {
            p: {
                "reason": f"near-duplicate of {e['duplicate_of']} (Hamming distance {e['distance']})",
                "duplicate_class": e.get("duplicate_class"),
            }
            for p, e in zip(paths, entries, strict=True)
        }
    except (
        KeyError,
        TypeError,
        AttributeError,
    ):  # a manifest missing fields, or hand-edited into other shapes
        raise not_ours from None


def load_exclusions(path: str | Path) -> dict[str, str]:
    """Removed files of a dedup manifest: canonical absolute path → why it was removed."""
    return {p: e["reason"] for p, e in load_exclusion_entries(path).items()}


def exclude_removed(part: ImageData, removed: dict[str, str], what: str = "data") -> tuple[ImageData, int]:
    """``part`` without the files a dedup manifest removed, and how many it dropped (needs file paths)."""
    if not removed:
        return part, 0
    if part.files is None:
        raise DataError(
            f"data.exclude_manifest needs a data set read from image files (imagefolder, cached); the {what} set has no file paths"
        )
    keep = [p not in removed for p in canonical_paths(part.files)]
    n_removed = len(keep) - sum(keep)
    if n_removed:
        part = part.subset(torch.as_tensor(np.flatnonzero(keep), dtype=torch.long))
    return part, n_removed


def apply_exclude_manifest(
    train: ImageData, test: ImageData, manifest: str | Path
) -> tuple[ImageData, ImageData]:
    """Drop the files ``manifest`` removed from both parts (``data.exclude_manifest``); logs the counts."""
    removed = load_exclusions(manifest)
    train, n_train = exclude_removed(train, removed, "training")
    test, n_test = exclude_removed(test, removed, "test")
    if removed and not n_train + n_test:
        log.warning(
            "data.exclude_manifest: none of the %d files %s removed is in this data set (another folder?)",
            len(removed),
            manifest,
        )
    else:
        log.info(
            "data.exclude_manifest: skipped %d training and %d test image(s) as near-duplicates",
            n_train,
            n_test,
        )
    return train, test

"""Near-duplicate removal (imgcls.data.dedup, imgcls.data.hamming): a generated class tree with planted
exact and near duplicates within and across classes is de-duplicated exactly (right files, right
matches, right Hamming distances, right counts), the source folder is byte-identical afterwards, the
multi-index search returns exactly the brute-force pairs, the greedy rule is checked on hand-made
hashes, and ``data.exclude_manifest`` makes training skip the removed files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import imagehash
import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.config import load_config
from imgcls.data.dedup import dedup_folder, exclude_removed, find_duplicates, load_exclusions
from imgcls.data.hamming import brute_force_pairs, near_pairs, segments
from imgcls.data.images import ImageData
from imgcls.data.prepare import prepare_data
from imgcls.errors import DataError, UserError

SIZE = 96  # the seed's hash resolution (the dedup default)


def reference_hash(array: np.ndarray, kind: str = "phash") -> int:
    """The hash computed independently of imgcls: PIL grayscale → bilinear resize → imagehash."""
    image = Image.fromarray(array).convert("L").resize((SIZE, SIZE), Image.BILINEAR)
    value = imagehash.phash(image) if kind == "phash" else imagehash.dhash(image)
    return int(str(value), 16)


def distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def smooth_image(rng: np.random.Generator) -> np.ndarray:
    """A 48 × 48 RGB image of smooth random structure (distinct images get far-apart hashes)."""
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return np.asarray(small.resize((48, 48), Image.BILINEAR))


def perturbed(array: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``array`` plus a faint smooth random field, whose reference hash is exactly ``target`` bits away."""
    base = reference_hash(array)
    for amplitude in (1.0, 1.5, 2.0, 3.0, 4.0) * 60:
        field = Image.fromarray(rng.normal(0.0, amplitude, (4, 4)).astype(np.float32)).resize(
            (48, 48), Image.BILINEAR
        )
        candidate = np.clip(array + np.asarray(field)[:, :, None], 0, 255).astype(np.uint8)
        if distance(reference_hash(candidate), base) == target:
            return candidate
    raise AssertionError(f"no perturbation at distance {target} found")


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path → SHA-256 of every file under ``root`` (and so the set of files)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict]:
    """Classes a, b, c with 6 distinct images each, plus planted duplicates:

    within a: a/a1_dup.png (byte copy of a/a1.png, d=0), a/a2_near.png (shaded a/a2.png, d=2);
    across:   b/x_a3.png (a/a3.png re-encoded, d=0), b/x_a4_near.png (shaded a/a4.png, d=2);
    only from T=5 on: b/x_a5_far.png (shaded a/a5.png, d=4); c/broken.png is not an image.
    pHash distances are always even (the hash sets exactly the 32 DCT coefficients above their median),
    so the seed's "distance < 2" (T=2) means identical hashes and T=3 admits 2-bit differences.
    """
    root = tmp_path_factory.mktemp("dedup") / "tree"
    rng = np.random.default_rng(7)
    originals: dict[str, np.ndarray] = {}
    while len(originals) < 18:  # distinct images: every pair of hashes ≥ 8 bits apart
        array = smooth_image(rng)
        h = reference_hash(array)
        if all(distance(h, reference_hash(o)) >= 8 for o in originals.values()):
            cls = "abc"[len(originals) // 6]
            originals[f"{cls}/{cls}{len(originals) % 6}.png"] = array
    for rel, array in originals.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / rel)
    (root / "a/a1_dup.png").write_bytes((root / "a/a1.png").read_bytes())
    Image.fromarray(perturbed(originals["a/a2.png"], 2, rng)).save(root / "a/a2_near.png")
    Image.fromarray(originals["a/a3.png"]).save(root / "b/x_a3.png", compress_level=1)
    Image.fromarray(perturbed(originals["a/a4.png"], 2, rng)).save(root / "b/x_a4_near.png")
    Image.fromarray(perturbed(originals["a/a5.png"], 4, rng)).save(root / "b/x_a5_far.png")
    (root / "c/broken.png").write_bytes(b"\x89PNG but not really")
    expected = {
        "a/a1_dup.png": ("a/a1.png", 0),
        "a/a2_near.png": ("a/a2.png", 2),
        "b/x_a3.png": ("a/a3.png", 0),
        "b/x_a4_near.png": ("a/a4.png", 2),
    }
    return root, expected


def removed_map(manifest: dict) -> dict[str, tuple[str, int]]:
    return {e["path"]: (e["duplicate_of"], e["distance"]) for e in manifest["removed"]}


def test_planted_duplicates_are_found_exactly_and_the_source_is_untouched(planted, tmp_path):
    root, expected = planted
    before = tree_digest(root)
    out = tmp_path / "manifest.json"
    manifest = dedup_folder(root, threshold=3, workers=0, out=out)
    assert tree_digest(root) == before  # byte-identical, no file added, moved or deleted
    assert json.loads(out.read_text()) == manifest
    assert removed_map(manifest) == expected
    counts = manifest["counts"]
    assert counts == {
        "files": 24,
        "hashed": 23,
        "unreadable": 1,
        "kept": 19,
        "removed": 4,
        "removed_within_class": 2,
        "removed_across_class": 2,
        "pairs_within_class": 2,
        "pairs_across_class": 2,
    }
    assert [u["path"] for u in manifest["unreadable"]] == ["c/broken.png"]
    assert manifest["unreadable"][0]["reason"].startswith("UnidentifiedImageError")
    kept = {e["path"] for e in manifest["kept"]}
    assert kept.isdisjoint(expected) and len(kept) == 19 and "b/x_a5_far.png" in kept
    # every recorded hash is the independently computed one, every distance is the hashes' distance
    hashes = {e["path"]: int(e["hash"], 16) for e in manifest["kept"] + manifest["removed"]}
    for rel, h in hashes.items():
        assert h == reference_hash(np.asarray(Image.open(root / rel).convert("RGB"))), rel
    for entry in manifest["removed"]:
        assert distance(hashes[entry["path"]], hashes[entry["duplicate_of"]]) == entry["distance"]
        assert entry["class"] == entry["path"][0] and entry["duplicate_class"] == entry["duplicate_of"][0]
    assert all(bin(h).count("1") == 32 for h in hashes.values())  # why pHash distances are even


def test_default_is_the_seed_rule_distance_below_2(planted):
    root, _ = planted
    manifest = dedup_folder(root, workers=0)
    settings = (manifest["threshold"], manifest["scope"], manifest["hash"], manifest["size"])
    assert settings == (2, "both", "phash", 96)
    assert removed_map(manifest) == {"a/a1_dup.png": ("a/a1.png", 0), "b/x_a3.png": ("a/a3.png", 0)}


@pytest.mark.parametrize(
    "threshold, scope, removed",
    [
        (3, "within", {"a/a1_dup.png", "a/a2_near.png"}),
        (3, "across", {"b/x_a3.png", "b/x_a4_near.png"}),
        (1, "both", {"a/a1_dup.png", "b/x_a3.png"}),  # < 1 bit: identical hashes only
        (4, "both", {"a/a1_dup.png", "a/a2_near.png", "b/x_a3.png", "b/x_a4_near.png"}),
        (5, "both", {"a/a1_dup.png", "a/a2_near.png", "b/x_a3.png", "b/x_a4_near.png", "b/x_a5_far.png"}),
    ],
)
def test_threshold_and_scope(planted, threshold, scope, removed):
    root, _ = planted
    manifest = dedup_folder(root, threshold=threshold, scope=scope, workers=0)
    assert set(removed_map(manifest)) == removed
    if threshold == 5:
        assert removed_map(manifest)["b/x_a5_far.png"] == ("a/a5.png", 4)


def test_dhash_finds_the_exact_duplicates_with_a_process_pool(planted):
    root, _ = planted
    manifest = dedup_folder(root, threshold=1, kind="dhash", workers=2)
    assert {"a/a1_dup.png", "b/x_a3.png"} <= set(removed_map(manifest))
    h = {e["path"]: int(e["hash"], 16) for e in manifest["kept"]}
    assert h["a/a0.png"] == reference_hash(np.asarray(Image.open(root / "a/a0.png").convert("RGB")), "dhash")


# --------------------------------------------------------------------------- the pair search
def test_segments_partition_the_64_bits():
    for d in (0, 1, 2, 5, 7, 63):
        segs = segments(d)
        assert len(segs) == d + 1
        bits = [b for shift, width in segs for b in range(shift, shift + width)]
        assert bits == list(range(64))
        assert max(w for _, w in segs) - min(w for _, w in segs) <= 1


@pytest.mark.parametrize("max_distance", [0, 1, 2, 3, 5])
def test_multi_index_search_equals_brute_force(max_distance):
    rng = np.random.default_rng(max_distance)
    n = 3000
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    # planted near pairs at every distance 0..max_distance+2, an exact cluster, and clustered segments
    for k, target in enumerate(rng.integers(0, max_distance + 3, 400)):
        source = hashes[rng.integers(n)]
        flips = rng.choice(64, int(target), replace=False)
        hashes[k] = source ^ np.uint64(sum(1 << int(b) for b in flips))
    hashes[400:420] = hashes[420]
    # 200 hashes sharing their high segment (many candidates that are not near pairs)
    hashes[500:700] = (hashes[500:700] & np.uint64(0xFFFFFFFF)) | np.uint64(0xABCD << 40)
    fast = near_pairs(hashes, max_distance)
    slow = brute_force_pairs(hashes, max_distance, block=257)
    assert len(fast[0]) > 200
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
    assert (fast[0] < fast[1]).all()
    xor = hashes[fast[0]] ^ hashes[fast[1]]
    assert [int(x).bit_count() for x in xor] == fast[2].tolist()


def test_greedy_rule_on_hand_made_hashes():
    # T=3 (distance ≤ 2 is a duplicate), visited in index order
    hashes = np.array([0b0000, 0b1111, 0b0011, 0b0111, 0b0001, 0b11110000], dtype=np.uint64)
    labels = np.array([0, 0, 0, 1, 1, 1])
    match, dist, counts = find_duplicates(hashes, labels, threshold=3, scope="both")
    # 0b1111 is 4 from 0 → kept; 0b0011 is 2 from both kept → the earlier (0); 0b0111 is 3 from 0, 1 from
    # 0b1111 → matches 1; 0b0001 is 1 from 0 (and 1 from the removed 0b0011, which cannot match)
    assert match.tolist() == [-1, -1, 0, 1, 0, -1]
    assert dist.tolist() == [-1, -1, 2, 1, 1, -1]
    # all pairs with distance ≤ 2: (0,2)(0,4)(1,2)(1,3)(2,3)(2,4)(3,4)... counted by class
    pairs = [
        (a, b) for a in range(6) for b in range(a + 1, 6) if distance(int(hashes[a]), int(hashes[b])) <= 2
    ]
    within = sum(labels[a] == labels[b] for a, b in pairs)
    assert counts == {"pairs_within_class": within, "pairs_across_class": len(pairs) - within}
    # a chain a–b–c: c is a duplicate only of the removed b, so it is kept
    match, _, _ = find_duplicates(np.array([0b00, 0b01, 0b11], dtype=np.uint64), np.zeros(3), threshold=2)
    assert match.tolist() == [-1, 0, -1]
    # scope within: the class-1 image 0b0001 no longer matches class-0 images
    match, _, _ = find_duplicates(hashes, labels, threshold=3, scope="within")
    assert match[4] == 3 and match[3] == -1


def test_bad_threshold_and_scope_are_user_errors():
    with pytest.raises(UserError, match="threshold"):
        find_duplicates(np.zeros(2, dtype=np.uint64), np.zeros(2), threshold=0)
    with pytest.raises(UserError, match="scope"):
        find_duplicates(np.zeros(2, dtype=np.uint64), np.zeros(2), scope="between")


# --------------------------------------------------------------------------- the manifest consumed
def test_exclude_manifest_skips_removed_files_in_training(planted, tmp_path):
    root, expected = planted
    manifest_path = tmp_path / "m.json"
    dedup_folder(root, threshold=3, workers=0, out=manifest_path)
    removed = load_exclusions(manifest_path)
    assert {os.path.relpath(p, root) for p in removed} == set(expected)

    # an imagefolder tree whose train/ is (a symlink to) the de-duplicated folder
    data_root = tmp_path / "data"
    data_root.mkdir()
    (data_root / "train").symlink_to(root)
    (data_root / "test").symlink_to(root)
    overrides = [
        f"data.root={data_root}",
        "data.name=imagefolder",
        "data.val_fraction=0",
        "data.image_size=16",
        "data.num_workers=0",
        "data.in_memory=no",
    ]
    plain = prepare_data(load_config(None, overrides))
    deduped = prepare_data(load_config(None, [*overrides, f"data.exclude_manifest={manifest_path}"]))
    assert len(plain.train) - len(deduped.train) == 4 and len(plain.test) - len(deduped.test) == 4
    names = {os.path.relpath(os.path.realpath(f), root) for f in deduped.train.files}
    assert names.isdisjoint(expected) and "a/a1.png" in names


def test_exclude_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_exclusions(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(DataError, match="not a dedup manifest"):
        load_exclusions(tmp_path / "other.json")
    in_memory = ImageData(
        labels=torch.zeros(2, dtype=torch.long), class_names=["x"], images=torch.zeros(2, 1, 4, 4)
    )
    with pytest.raises(DataError, match="file"):
        exclude_removed(in_memory, {"/some/file.png": "dup"})


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe\x00garbage",
        b'{"kind": "imgcls-dedup"}',
        b'{"kind": "imgcls-dedup", "source": "/tmp", "removed": [{}]}',
        b'{"kind": "imgcls-dedup", "source": "/tmp", "removed": 5}',
    ],
)
def test_a_damaged_exclude_manifest_is_one_line(tmp_path, content):
    path = tmp_path / "m.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_exclusions(path)
    message = str(info.value)
    assert "\n" not in message and f"'{path}'" in message
    assert "is not a dedup manifest" in message or "cannot read exclude manifest" in message

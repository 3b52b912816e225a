"""Odd files and folders in image trees never crash a run or silently poison it.

A training class whose every image is unreadable (garbage, empty or truncated files) is one line naming its
folder and the count, before any training, on the in-memory and the streaming path; a few unreadable files give
ONE warning (count + example). Decompression bombs are skipped without being decoded; the image size comes from
the median shorter side of sampled headers (never below 8 px); a damaged resize cache is one line with the
rebuild command (damaged chunks of an unfinished build are redone); hidden/system junk never becomes a class
or an image, extensions match case-insensitively, symbolic links are followed and broken ones skipped; EXIF
orientation is not applied.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import imgcls.data.cache as cache_module
import imgcls.data.decode as decode_module
from imgcls.config import load_config
from imgcls.data.cache import build_cache, read_cache
from imgcls.data.decode import decode_image, probe_size, read_header
from imgcls.data.prepare import prepare_data
from imgcls.errors import DataError
from test_robust_inputs import TINY, assert_one_line_error, make_tree, run_cli
from tiny_runs import single_thread


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


def prepare(root: Path, *extra: str):
    return prepare_data(load_config(None, [*TINY, f"data.root={root}", *extra]))


def skip_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "unreadable" in r.getMessage()
    ]


def truncated_png(path: Path) -> None:
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])


def huge_png_header(path: Path, width: int, height: int) -> None:
    """A tiny PNG file whose header declares ``width`` × ``height`` pixels (8-bit gray)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------- 1, 2: unreadable classes
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_class_of_unreadable_files_is_one_line_before_training(
    tmp_path, capsys, monkeypatch, damage, in_memory
):
    root = make_tree(tmp_path / "data")
    for k, path in enumerate(sorted((root / "train" / "b").iterdir())):
        if damage == "truncated":  # headers intact: only decoding finds them (the streaming path probes)
            truncated_png(path)
        else:
            path.write_bytes(b"" if k % 2 else b"\x89PNG garbage")
    code, _, err = run_cli(
        [
            "train",
            *TINY,
            f"data.root={root}",
            f"data.in_memory={in_memory}",
            f"output.dir={tmp_path / 'runs'}",
        ],
        capsys,
        monkeypatch,
    )
    assert_one_line_error(
        code,
        err,
        "class 'b' has no readable image",
        "all 6 image file(s)",
        str(root / "train" / "b"),
        "remove",
    )
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_a_few_unreadable_files_are_skipped_with_one_warning(tmp_path, caplog, in_memory):
    root = make_tree(tmp_path / "data")
    bad = [root / "train" / "a" / "01.png", root / "train" / "a" / "02.png", root / "test" / "c" / "00.png"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(b"not an image")
    bad[2].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with caplog.at_level(logging.INFO):
        data = prepare(root, f"data.in_memory={in_memory}")
    assert data.skipped_files == sorted(map(str, bad))
    assert data.class_names == ["a", "b", "c"]
    labels = torch.cat([data.train.labels, data.val.labels])
    assert torch.bincount(labels).tolist() == [4, 6, 6] and len(data.test) == 5
    warnings = skip_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "skipped 3 unreadable image file(s)" in warnings[0] and str(bad[2]) in warnings[0]


def test_run_warns_once_and_lists_the_skipped_files(tmp_path, caplog):
    root = make_tree(tmp_path / "data")
    (root / "train" / "c" / "05.png").write_bytes(b"junk")
    from imgcls import api

    with caplog.at_level(logging.INFO):
        result = api.train(
            None, [*TINY, f"data.root={root}", f"output.dir={tmp_path / 'runs'}"], evaluate_after=False
        )
    assert (result.run_dir / "skipped_files.txt").read_text().split() == [
        str(root / "train" / "c" / "05.png")
    ]
    assert len(skip_warnings(caplog)) == 1


def test_cache_build_refuses_a_class_of_unreadable_files(tmp_path):
    root = make_tree(tmp_path / "data")
    for path in (root / "train" / "c").iterdir():
        path.write_bytes(b"")
    with pytest.raises(
        DataError, match=r"class 'c' has no readable image: all 6 image file\(s\) in '.*train/c'"
    ):
        build_cache(root / "train", tmp_path / "cache", size=8, workers=0)
    assert not (tmp_path / "cache" / "manifest.json").exists()


# ------------------------------------------------------------------------------- 3: decompression bombs
def test_decompression_bombs_are_skipped_without_decoding(tmp_path, caplog, monkeypatch):
    root = make_tree(tmp_path / "data")
    huge = root / "train" / "a" / "huge.png"
    huge_png_header(huge, 40_000, 40_000)  # > 2 × MAX_IMAGE_PIXELS: Pillow refuses it itself
    warned = root / "train" / "b" / "big.png"
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(warned)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # 24 × 24 = 576: Pillow would only warn and decode it
    loaded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(img):
        loaded.append(img.size)
        return real_load(img)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    for path in (huge, warned):
        with pytest.raises(Image.DecompressionBombError):
            decode_image(str(path), 16, 1)
        with pytest.raises(Image.DecompressionBombError):
            read_header(str(path))
    with caplog.at_level(logging.INFO):
        data = prepare(root)
    assert data.skipped_files == sorted([str(huge), str(warned)])
    assert (40_000, 40_000) not in loaded and (24, 24) not in loaded and (16, 16) in loaded
    warnings = skip_warnings(caplog)
    assert len(warnings) == 1 and "skipped 2 unreadable" in warnings[0]


# ------------------------------------------------------------------------------- 4: image size from headers
def test_image_size_is_the_median_shorter_side_of_headers(tmp_path, monkeypatch):
    root = tmp_path / "data" / "train"
    shapes = {"a": [(26, 30), (24, 24), (40, 18)], "b": [(18, 18), (30, 20), (22, 50)]}  # (height, width)
    for name, sizes in shapes.items():
        (root / name).mkdir(parents=True)
        for k, (h, w) in enumerate(sizes):
            Image.fromarray(np.full((h, w), 100 + k, np.uint8)).save(root / name / f"{k}.png")
        (tmp_path / "data" / "test" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "data" / "test" / name / "t.png")
    files = sorted(str(p) for p in root.rglob("*.png"))  # the training images only (test/ is 9 px)

    def no_decode(img):
        raise AssertionError("probe_size decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    assert probe_size(files) == 20  # shorter sides 26, 24, 18, 18, 20, 22 → median (low) 20
    monkeypatch.undo()
    data = prepare(tmp_path / "data", "data.image_size=null", "data.val_fraction=0")
    assert data.image_size == 20 and data.train.images.shape[-2:] == (20, 20)


def test_image_size_probe_reads_at_most_256_headers(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(path)
    calls = []
    real = decode_module.read_header
    monkeypatch.setattr(decode_module, "read_header", lambda p: calls.append(p) or real(p))
    assert probe_size([str(path)] * 5000) == 12
    assert len(calls) == 256


def test_images_smaller_than_8_px_are_refused(tmp_path, capsys, monkeypatch):
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(np.full((6, 7), 50 * k, np.uint8)).save(root / "train" / name / f"{k}.png")
    code, _, err = run_cli(
        ["train", *TINY, "data.image_size=null", f"data.root={root}", f"output.dir={tmp_path / 'runs'}"],
        capsys,
        monkeypatch,
    )
    assert_one_line_error(code, err, "median shorter side is 6 px", "8 px minimum", "data.image_size")
    # an explicit size upscales them on purpose
    assert prepare(root, "data.image_size=8").image_size == 8


# ------------------------------------------------------------------------------- 5: damaged caches
@pytest.fixture
def cache_dir(tmp_path) -> Path:
    root = make_tree(tmp_path / "data")
    build_cache(root / "train", tmp_path / "cache", size=8, grayscale=True, workers=0)
    return tmp_path / "cache"


@pytest.mark.parametrize(
    "damage, what",
    [
        ("truncate images", "images.npy cannot be read"),
        ("garbage labels", "labels.npy cannot be read"),
        ("missing images", "'images.npy' is missing"),
        ("garbage manifest", "manifest.json is unreadable"),
        ("short labels", "18 images, 17 labels"),
        ("labels out of range", "labels are not class indices 0..2"),
    ],
)
def test_damaged_cache_is_one_line_with_the_rebuild_command(
    cache_dir, tmp_path, capsys, monkeypatch, damage, what
):
    images, labels, manifest = (cache_dir / n for n in ("images.npy", "labels.npy", "manifest.json"))
    if damage == "truncate images":
        images.write_bytes(images.read_bytes()[:500])
    elif damage == "garbage labels":
        labels.write_bytes(b"\x00garbage" * 10)
    elif damage == "missing images":
        images.unlink()
    elif damage == "garbage manifest":
        manifest.write_text(manifest.read_text()[:40])
    elif damage == "short labels":
        np.save(labels, np.zeros(17, np.int64))
    else:
        np.save(labels, np.full(18, 7, np.int64))
    code, _, err = run_cli(
        ["train", *TINY, "data.name=cached", f"data.root={cache_dir}", f"output.dir={tmp_path / 'runs'}"],
        capsys,
        monkeypatch,
    )
    command = (
        "imgcls data cache SRC"
        if damage == "garbage manifest"
        else f"imgcls data cache {tmp_path / 'data' / 'train'}"
    )
    assert_one_line_error(code, err, f"the cache '{cache_dir}' is damaged", what, command, "--overwrite")
    if damage != "garbage manifest":
        assert "--size 8 --grayscale" in err


def test_damaged_chunks_of_an_unfinished_cache_are_decoded_again(tmp_path, monkeypatch, caplog):
    root = make_tree(tmp_path / "data") / "train"
    build_cache(root, tmp_path / "reference", size=8, workers=0, chunk_size=4)
    dst = tmp_path / "cache"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_assemble", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_cache(root, dst, size=8, workers=0, chunk_size=4)
    monkeypatch.undo()
    partial = dst / ".partial"
    npy = partial / "chunk_000001.npy"
    npy.write_bytes(npy.read_bytes()[:100])  # truncated images
    (partial / "chunk_000002.json").write_text('{"records": [')  # truncated record
    with caplog.at_level(logging.WARNING):
        summary = build_cache(root, dst, size=8, workers=0, chunk_size=4)
    assert summary["chunks"] == 5 and summary["chunks_resumed"] == 3
    assert sum("is damaged; decoding its images again" in r.getMessage() for r in caplog.records) == 2
    for name in ("images.npy", "labels.npy"):
        assert np.array_equal(np.load(dst / name), np.load(tmp_path / "reference" / name))


# ------------------------------------------------------------------------------- 6: junk entries, links, case
def test_junk_never_becomes_a_class_or_an_image(tmp_path, caplog):
    root = make_tree(tmp_path / "data")
    train, test = root / "train", root / "test"
    (train / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (train / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    for junk_dir in (train / "__MACOSX" / "a", train / ".hidden", test / "__MACOSX", train / "a" / ".thumbs"):
        junk_dir.mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(junk_dir / "x.png")
    (train / "__MACOSX" / "a" / "._00.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (train / "a" / "._00.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (train / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    for name in ("Thumbs.db", "desktop.ini", "notes.txt", "labels.csv"):
        (train / "b" / name).write_text("not an image")
    (train / "b" / "upper.JPG").write_bytes((train / "b" / "00.png").read_bytes())  # extensions in any case
    (train / "c" / "mixed.Png").write_bytes((train / "c" / "00.png").read_bytes())
    (train / "c" / "linked.png").symlink_to(train / "c" / "01.png")  # followed
    (train / "a" / "broken.png").symlink_to(tmp_path / "nowhere.png")  # skipped like an unreadable file
    with caplog.at_level(logging.INFO):
        data = prepare(root, "data.val_fraction=0")
    assert data.class_names == ["a", "b", "c"]
    assert torch.bincount(data.train.labels).tolist() == [6, 7, 8] and len(data.test) == 6
    assert data.skipped_files == [str(train / "a" / "broken.png")]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "left out" not in messages  # test/__MACOSX is no stray class
    assert len(skip_warnings(caplog)) == 1 and "broken.png" in skip_warnings(caplog)[0]


def test_class_folder_holding_only_junk_is_an_error(tmp_path, capsys, monkeypatch):
    root = make_tree(tmp_path / "data")
    empty = root / "train" / "d"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")
    (empty / "Thumbs.db").write_bytes(b"\0")
    (empty / "._00.png").write_bytes(b"\0")
    code, _, err = run_cli(
        ["train", *TINY, f"data.root={root}", f"output.dir={tmp_path / 'runs'}"], capsys, monkeypatch
    )
    assert_one_line_error(code, err, "class folder(s) d", "hold no images", "remove the folder")


def test_flat_test_folder_ignores_appledouble_files(tmp_path):
    root = tmp_path / "data"
    make_tree(root)
    flat = root / "test"
    for folder in list(flat.iterdir()):
        for k, path in enumerate(sorted(folder.iterdir())):
            path.rename(flat / f"{folder.name}_{k}.png")
        folder.rmdir()
    (flat / "._a_0.png").write_bytes(b"\x00\x05\x16\x07")
    (flat / ".DS_Store").write_bytes(b"\0")
    data = prepare(root)
    assert len(data.test) == 6 and data.skipped_files == []


# ------------------------------------------------------------------------------- 7: EXIF orientation
def test_exif_orientation_is_not_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(path, exif=exif)
    assert Image.open(path).getexif()[0x0112] == 6
    assert tuple(decode_image(str(path), None, 3).shape) == (3, 8, 16)  # pixels as stored: 16 wide, 8 high


def test_cached_round_trip_still_reads(cache_dir):
    data = read_cache(cache_dir)
    assert data.images.shape == (18, 1, 8, 8) and data.class_names == ["a", "b", "c"]
    assert json.loads((cache_dir / "manifest.json").read_text())["count"] == 18


# ------------------------------------------------------------------------------- audit findings
def test_a_dedup_manifest_that_would_empty_a_class_is_refused(tmp_path):
    from imgcls.data.dedup import dedup_folder

    root = make_tree(tmp_path / "data", classes=("cat", "owl"))
    dog = root / "train" / "dog"
    dog.mkdir()
    for i, f in enumerate(sorted((root / "train" / "cat").iterdir())[:3]):  # dog's images duplicate cat's
        (dog / f"copy{i}.png").write_bytes(f.read_bytes())
    manifest = tmp_path / "dedup.json"
    dedup_folder(root / "train", threshold=1, workers=0, out=manifest)
    with pytest.raises(DataError) as info:
        prepare(root, f"data.exclude_manifest={manifest}")
    message = str(info.value)
    assert "\n" not in message and f"data.exclude_manifest='{manifest}'" in message
    assert "would remove every training image of class(es) 'dog' (3)" in message


def test_one_grey_file_sorting_first_does_not_make_a_colour_set_grey(tmp_path, caplog):
    from imgcls.data.decode import probe_channels

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "-grey.png")
    files = [str(folder / "-grey.png")]
    for i in range(30):
        Image.new("RGB", (8, 8), (i, 2 * i, 3 * i)).save(folder / f"{i:02d}.png")
        files.append(str(folder / f"{i:02d}.png"))
    with caplog.at_level(logging.INFO):
        assert probe_channels(files) == 3
    assert "3 channel(s): 30 colour and 1 grey image(s) among 31 sampled headers" in caplog.text
    grey = [str(folder / "-grey.png")]
    for mode in ("LA", "1", "I;16"):
        Image.new(mode, (8, 8)).save(folder / f"{mode.replace(';', '')}.png")
        grey.append(str(folder / f"{mode.replace(';', '')}.png"))
    assert probe_channels(grey) == 1
    assert probe_channels([str(tmp_path / "missing.png"), *grey]) == 1  # unreadable files do not vote


def test_skipped_file_names_with_line_breaks_stay_one_entry(tmp_path):
    from imgcls.data.decode import record_skipped_files

    odd = [str(tmp_path / "bad\nname.png"), str(tmp_path / "back\\slash.png"), str(tmp_path / "plain.png")]
    assert record_skipped_files(tmp_path, odd[:2]) == sorted(odd[:2])
    assert record_skipped_files(tmp_path, odd) == sorted(odd)  # re-read: nothing split, nothing doubled
    assert len((tmp_path / "skipped_files.txt").read_text().splitlines()) == 3


def test_report_tables_escape_pipes_and_line_breaks():
    from imgcls.evaluation.report import _table

    lines = _table(["class", "f1"], [["a|b", 0.5], ["new\nline", 0.25]])
    assert lines[2:] == ["| a\\|b | 0.5000 |", "| new line | 0.2500 |"]

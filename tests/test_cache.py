"""The resize cache (imgcls.data.cache): cached pixels equal a direct decode + resize, the manifest records
source paths, classes, SHA-256 of the source files and the skipped unreadable files; a run interrupted by
a failing worker resumes without redoing finished chunks and ends with the same cache; ``data.name:
cached`` trains a step; dedup exclusions are honoured; command-line errors are one line with exit code 2."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls.data.cache as cache_module
from imgcls.config import load_config
from imgcls.data.cache import build_cache, read_cache
from imgcls.data.decode import decode_image
from imgcls.data.prepare import prepare_data
from imgcls.errors import DataError

SIZE = 24


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """3 classes × 9 JPEG/PNG photos of 40 × 40 (RGB and one grayscale), one corrupt and one empty file."""
    root = tmp_path_factory.mktemp("cache") / "tree"
    rng = np.random.default_rng(0)
    for c, name in enumerate(["alpha", "beta", "gamma"]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(9):
            base = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize(
                (40, 40), Image.BILINEAR
            )
            if c == 2 and i == 0:
                base.convert("L").save(folder / f"{i:02d}.png")
            else:
                base.save(folder / f"{i:02d}.jpg", quality=90)
    (root / "alpha" / "05_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "beta" / "empty.png").write_bytes(b"")
    return root


def readable_files(root: Path) -> list[Path]:
    return [
        p for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("05_corrupt.jpg", "empty.png")
    ]


@pytest.mark.parametrize("grayscale", [True, False])
def test_round_trip_pixels_equal_a_direct_decode(tree, tmp_path, grayscale):
    summary = build_cache(tree, tmp_path / "c", size=SIZE, grayscale=grayscale, workers=0, chunk_size=7)
    channels = 1 if grayscale else 3
    data = read_cache(tmp_path / "c")
    files = readable_files(tree)
    assert summary["count"] == len(files) == 27 and summary["skipped"] == 2
    assert data.images.shape == (27, channels, SIZE, SIZE) and data.images.dtype == torch.uint8
    assert data.class_names == ["alpha", "beta", "gamma"]
    assert data.files == [str(p) for p in files]
    assert data.labels.tolist() == [["alpha", "beta", "gamma"].index(p.parent.name) for p in files]
    for row, path in enumerate(files):
        assert torch.equal(data.images[row], decode_image(str(path), SIZE, channels)), path
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (manifest["size"], manifest["channels"], manifest["count"]) == (SIZE, channels, 27)
    assert [e["sha256"] for e in manifest["files"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    ]
    assert [e["class"] for e in manifest["files"]] == [p.parent.name for p in files]
    assert {e["path"]: e["class"] for e in manifest["skipped"]} == {
        "alpha/05_corrupt.jpg": "alpha",
        "beta/empty.png": "beta",
    }
    reasons = {e["path"]: e["reason"] for e in manifest["skipped"]}
    assert reasons == {
        "alpha/05_corrupt.jpg": "OSError: Truncated File Read",
        "beta/empty.png": "UnidentifiedImageError: not an image file PIL can identify",
    }
    assert not (tmp_path / "c" / ".partial").exists()
    assert sorted(data.skipped) == sorted(str(tree / e["path"]) for e in manifest["skipped"])


def failing_chunk(paths, size, channels, partial, k):
    """Stands in for the chunk worker: chunk 3 fails (as a crashing decode would), the others work."""
    if k == 3:
        raise RuntimeError("simulated crash in chunk 3")
    return REAL_CHUNK(paths, size, channels, partial, k)


REAL_CHUNK = cache_module._cache_chunk


def test_resume_after_an_interruption_redoes_only_unfinished_chunks(tree, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    build_cache(tree, reference, size=SIZE, workers=0, chunk_size=4)
    dst = tmp_path / "interrupted"
    monkeypatch.setattr(cache_module, "_cache_chunk", failing_chunk)  # forked pool workers inherit the patch
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_cache(tree, dst, size=SIZE, workers=2, chunk_size=4)
    monkeypatch.undo()
    partial = dst / ".partial"
    done = sorted(int(p.stem.split("_")[1]) for p in partial.glob("chunk_*.json"))
    assert 3 not in done and len(done) >= 1 and not (dst / "manifest.json").exists()
    # a chunk whose image file was written but whose done record was not is redone as well
    (partial / "chunk_000003.npy").write_bytes(b"half-written")

    calls = []

    def counting_chunk(paths, size, channels, partial_dir, k):
        calls.append(k)
        return REAL_CHUNK(paths, size, channels, partial_dir, k)

    monkeypatch.setattr(cache_module, "_cache_chunk", counting_chunk)
    summary = build_cache(tree, dst, size=SIZE, workers=0, chunk_size=4)
    assert sorted(calls) == [k for k in range(summary["chunks"]) if k not in done]
    assert summary["chunks_resumed"] == len(done) and summary["chunks"] == 8  # 29 files / 4
    for name in ("images.npy", "labels.npy"):
        assert np.array_equal(np.load(dst / name), np.load(reference / name))
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (dst, reference))
    assert a["files"] == b["files"] and a["skipped"] == b["skipped"]


def test_existing_destinations_are_protected(tree, tmp_path):
    dst = tmp_path / "c"
    build_cache(tree, dst, size=SIZE, workers=0)
    with pytest.raises(DataError, match="already holds a finished cache"):
        build_cache(tree, dst, size=SIZE, workers=0)
    summary = build_cache(tree, dst, size=16, workers=0, overwrite=True)
    assert read_cache(dst).images.shape[-1] == 16 and summary["chunks_resumed"] == 0
    # an unfinished cache of other settings is not mixed with new work
    (dst / "manifest.json").unlink()
    (dst / ".partial").mkdir()
    (dst / ".partial" / "plan.json").write_text(json.dumps({"size": 99}))
    with pytest.raises(DataError, match="unfinished cache of other files or settings"):
        build_cache(tree, dst, size=SIZE, workers=0)
    with pytest.raises(DataError, match="inside the source"):
        build_cache(tree, tree / "alpha" / "cache", size=SIZE, workers=0)
    with pytest.raises(DataError, match="not empty"):
        # never writes into a folder that holds anything but a cache
        build_cache(tree, tree.parent, size=SIZE, workers=0)
    with pytest.raises(DataError, match=r"holds split folder\(s\) test, train"):
        (tmp_path / "splits" / "train" / "a").mkdir(parents=True)
        (tmp_path / "splits" / "test").mkdir()
        build_cache(tmp_path / "splits", tmp_path / "c2", workers=0)


def test_cached_trains_a_step_and_honours_the_exclude_manifest(tree, tmp_path):
    from imgcls import api
    from imgcls.data.dedup import dedup_folder

    manifest = tmp_path / "dedup.json"
    dedup = dedup_folder(tree, threshold=1, workers=0, out=manifest)
    dst = tmp_path / "c"
    build_cache(tree, dst, size=SIZE, grayscale=True, workers=0)
    base = [
        f"data.root={dst}",
        "data.name=cached",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "data.num_workers=0",
    ]
    data = prepare_data(load_config(None, base))
    sizes = (len(data.train), len(data.val), len(data.test), data.channels, data.image_size)
    assert sizes == (18, 4, 5, 1, SIZE)
    # the test set: a stratified carve-out of round(0.2 × 27) images
    assert sorted(torch.bincount(data.test.labels).tolist()) == [1, 2, 2]

    # planted duplicate: copy one image into another class; the dedup manifest removes it from training
    dup_tree = tmp_path / "tree_dup"
    os.system(f"cp -r {tree} {dup_tree}")
    (dup_tree / "gamma" / "zz_copy.jpg").write_bytes((dup_tree / "alpha" / "00.jpg").read_bytes())
    dedup = dedup_folder(dup_tree, threshold=1, workers=0, out=manifest)
    assert [(e["path"], e["duplicate_of"]) for e in dedup["removed"]] == [
        ("gamma/zz_copy.jpg", "alpha/00.jpg")
    ]
    assert dedup["counts"]["removed_across_class"] == 1
    dup_cache = tmp_path / "dup_cache"
    build_cache(dup_tree, dup_cache, size=SIZE, grayscale=True, workers=0)
    assert read_cache(dup_cache).images.shape[0] == 28
    excluded_cache = tmp_path / "excluded_cache"
    summary = build_cache(
        dup_tree, excluded_cache, size=SIZE, grayscale=True, workers=0, exclude_manifest=manifest
    )
    assert summary["count"] == 27 and summary["excluded"] == 1
    record = json.loads((excluded_cache / "manifest.json").read_text())["excluded"]
    assert record == [
        {
            "path": "gamma/zz_copy.jpg",
            "class": "gamma",
            "reason": "near-duplicate of alpha/00.jpg (Hamming distance 0)",
        }
    ]
    with_exclusion = [
        f"data.root={dup_cache}",
        "data.name=cached",
        "data.num_workers=0",
        f"data.exclude_manifest={manifest}",
    ]
    prepared = prepare_data(load_config(None, with_exclusion))
    paths = prepared.train.files + prepared.val.files + prepared.test.files
    assert len(paths) == 27 and str(dup_tree / "gamma" / "zz_copy.jpg") not in paths

    tiny = [
        "model.backbone=adaptive_cnn",
        "model.backbone_args={layout: mnist, width_mult: 0.25}",
        "model.head=linear",
        "train.epochs=1",
        "train.batch_size=16",
        "train.progress=false",
        "output.tensorboard=false",
        "eval.plots=false",
        f"output.dir={tmp_path / 'runs'}",
        "train.device=cpu",
    ]
    result = api.train(None, [*base, *tiny], evaluate_after=False)
    row = result.history[-1]
    assert row["step"] == 1 and np.isfinite(row["train_loss"]) and 0.0 <= row["val_acc"] <= 1.0


def run_cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """``imgcls ARGS`` in this process (the CLI's own main: errors → one line + exit code 2)."""
    from imgcls.cli import main

    monkeypatch.setattr(sys, "argv", ["imgcls", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_errors_are_one_line_with_exit_code_2(tree, tmp_path, capsys, monkeypatch):
    cases = {
        "missing source": ("data", "cache", str(tmp_path / "no-such-folder"), str(tmp_path / "d")),
        "bad scope": ("data", "dedup", str(tree), "--scope", "between", "--out", str(tmp_path / "m.json")),
        "bad threshold": ("data", "dedup", str(tree), "--threshold", "0", "--out", str(tmp_path / "m.json")),
        "bad hash": ("data", "dedup", str(tree), "--hash", "ahash", "--out", str(tmp_path / "m.json")),
        "no cache": ("train", "data.name=cached", f"data.root={tmp_path}", f"output.dir={tmp_path / 'runs'}"),
    }
    for name, args in cases.items():
        code, _, stderr = run_cli(capsys, monkeypatch, *args)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (name, stderr)
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "d").exists()


def test_cli_cache_and_dedup_run(tree, tmp_path, capsys, monkeypatch):
    code, stdout, stderr = run_cli(
        capsys,
        monkeypatch,
        "data",
        "cache",
        str(tree),
        str(tmp_path / "c"),
        "--size",
        "16",
        "--grayscale",
        "--workers",
        "2",
    )
    assert code == 0, stderr
    assert "cached 27 images" in stdout and "2 unreadable skipped" in stdout
    assert np.load(tmp_path / "c" / "images.npy", mmap_mode="r").shape == (27, 1, 16, 16)
    code, stdout, stderr = run_cli(
        capsys, monkeypatch, "data", "dedup", str(tree), "--out", str(tmp_path / "m.json"), "--workers", "0"
    )
    assert code == 0, stderr
    assert "29 images, 2 unreadable: keep 27, remove 0" in " ".join(stdout.split())
    assert json.loads((tmp_path / "m.json").read_text())["counts"]["kept"] == 27


# ------------------------------------------------------------------ layouts, empty classes, symbolic links
def write_images(folder: Path, n: int, seed: int, prefix: str = "") -> list[Path]:
    """``n`` distinct tiny PNGs (smooth random 16 × 16 RGB) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        paths.append(folder / f"{prefix}{i:02d}.png")
        small.resize((16, 16), Image.BILINEAR).save(paths[-1])
    return paths


def no_decoding(*args, **kwargs):
    raise AssertionError("decoding started although the input is refused")


def test_a_folder_repeated_inside_itself_is_descended(tmp_path):
    # how Kaggle zips unpack: asl_alphabet_train/asl_alphabet_train/{A,B}/*.png (docs/data.md's example)
    from imgcls.data.dedup import dedup_folder

    src = tmp_path / "asl_alphabet_train"
    inner = src / "asl_alphabet_train"
    write_images(inner / "A", 3, 1)
    write_images(inner / "B", 2, 2)
    summary = build_cache(src, tmp_path / "c", size=8, workers=0)
    data = read_cache(tmp_path / "c")
    assert data.class_names == ["A", "B"] and summary["count"] == 5
    assert torch.bincount(data.labels).tolist() == [3, 2]
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["source"] == str(inner.resolve())
    manifest = dedup_folder(src, threshold=1, workers=0)
    assert sorted({e["class"] for e in manifest["kept"]}) == ["A", "B"] and manifest["counts"]["kept"] == 5


@pytest.mark.parametrize(
    "folders, splits, suggested",
    [
        (["training", "testing"], "testing, training", "training"),
        (["Train", "Test"], "Test, Train", "Train"),
        (
            ["asl_alphabet_train", "asl_alphabet_test"],
            "asl_alphabet_test, asl_alphabet_train",
            "asl_alphabet_train",
        ),
        (["validation", "cat", "dog"], "validation", "validation"),  # a mix of split and class folders
        (["Train"], "Train", "Train"),
        (["photos-test", "cat"], "photos-test", "photos-test"),
        (["train", "bus", "car"], "train", "train"),  # ambiguous: a class named train is refused too
    ],
)
def test_split_folders_are_refused_whatever_their_spelling(tmp_path, monkeypatch, folders, splits, suggested):
    from imgcls.data.dedup import dedup_folder

    src = tmp_path / "src"
    for k, name in enumerate(folders):
        write_images(src / name / "x", 2, k)
        write_images(src / name, 2, 10 + k)
    monkeypatch.setattr(cache_module, "_cache_chunk", no_decoding)
    root = src.resolve()
    expected = (
        f"'{src}' holds split folder(s) {splits}, not only class folders; run the command on one split's class tree, "
        f"e.g. on '{root / suggested}' (a class folder named like a split must be renamed)"
    )
    with pytest.raises(DataError) as caught:
        build_cache(src, tmp_path / "c", size=8, workers=0)
    assert str(caught.value) == expected
    assert not (tmp_path / "c").exists()
    with pytest.raises(DataError) as caught:
        dedup_folder(src, workers=0)
    assert str(caught.value) == expected


def test_split_folders_below_a_wrapper_folder_are_refused(tmp_path):
    # archive/ASL_Dataset/{Train,Test}: the wrapper is no class
    src = tmp_path / "archive"
    write_images(src / "ASL_Dataset" / "Train" / "A", 2, 0)
    write_images(src / "ASL_Dataset" / "Test" / "A", 2, 1)
    with pytest.raises(DataError, match=r"holds split folder\(s\) Test, Train") as caught:
        build_cache(src, tmp_path / "c", size=8, workers=0)
    assert f"e.g. on '{src.resolve() / 'ASL_Dataset' / 'Train'}'" in str(caught.value)


def test_a_single_class_is_refused_by_the_cache_but_not_by_dedup(tmp_path, capsys, monkeypatch):
    from imgcls.data.dedup import dedup_folder

    src = tmp_path / "src"
    write_images(src / "cat", 3, 0)
    code, _, stderr = run_cli(
        capsys, monkeypatch, "data", "cache", str(src), str(tmp_path / "c"), "--size", "8"
    )
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, stderr
    assert " ".join(lines[0].split()) == (
        f"error: '{src}' holds a single class folder ('cat'); a classification cache needs at least 2 classes: "
        "pass the folder that holds one sub-folder per class"
    )
    assert not (tmp_path / "c").exists()
    assert dedup_folder(src, threshold=1, workers=0)["counts"]["kept"] == 3


def test_an_empty_class_folder_is_refused_before_decoding(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    write_images(src / "cat", 3, 0)
    write_images(src / "dog", 3, 1)
    (src / "empty").mkdir()
    (src / "empty" / "notes.txt").write_text("no images here")
    (src / "empty" / ".DS_Store").write_bytes(b"junk")
    monkeypatch.setattr(cache_module, "_cache_chunk", no_decoding)
    expected = f"class folder '{src.resolve() / 'empty'}' has no image files; add images or remove the folder"
    with pytest.raises(DataError) as caught:
        build_cache(src, tmp_path / "c", size=8, workers=0)
    assert str(caught.value) == expected and not (tmp_path / "c").exists()
    code, _, stderr = run_cli(
        capsys, monkeypatch, "data", "cache", str(src), str(tmp_path / "c"), "--size", "8"
    )
    assert code == 2 and " ".join(stderr.split()) == f"error: {expected}"


def test_a_class_emptied_by_the_exclusions_is_refused_before_decoding(tmp_path, monkeypatch):
    from imgcls.data.dedup import dedup_folder

    src = tmp_path / "src"
    cats = write_images(src / "cat", 3, 0)
    write_images(src / "zebra", 3, 1)
    (src / "dog").mkdir()
    for path in cats:  # every dog image is a copy of a cat image: the dedup removes them all
        (src / "dog" / path.name).write_bytes(path.read_bytes())
    manifest = tmp_path / "dedup.json"
    dedup = dedup_folder(src, threshold=1, workers=0, out=manifest)
    assert {e["class"] for e in dedup["removed"]} == {"dog"} and dedup["counts"]["removed"] == 3
    monkeypatch.setattr(cache_module, "_cache_chunk", no_decoding)
    with pytest.raises(DataError) as caught:
        build_cache(src, tmp_path / "c", size=8, workers=0, exclude_manifest=manifest)
    assert str(caught.value) == (
        f"class 'dog' would lose all its 3 images to the exclusions in '{manifest}' (they duplicate images of "
        "other classes: cat); remove the class folder if its images are mislabelled, or write the manifest with "
        "`imgcls data dedup SRC --scope within` to keep duplicates across classes"
    )
    assert not (tmp_path / "c").exists()


def test_broken_and_looping_symbolic_links_are_skipped_and_listed(tmp_path, monkeypatch):
    from imgcls.data.dedup import dedup_folder

    src = tmp_path / "src"
    cats = write_images(src / "cat", 3, 0)
    write_images(src / "dog", 3, 1)
    (src / "cat" / "broken.png").symlink_to("/nonexistent/image.png")
    (src / "cat" / "loop.png").symlink_to("loop.png")
    summary = build_cache(src, tmp_path / "c", size=8, workers=0)
    assert summary["count"] == 6 and summary["skipped"] == 2
    skipped = json.loads((tmp_path / "c" / "manifest.json").read_text())["skipped"]
    assert skipped == [
        {"path": "cat/broken.png", "class": "cat", "reason": "FileNotFoundError: No such file or directory"},
        {"path": "cat/loop.png", "class": "cat", "reason": "OSError: Too many levels of symbolic links"},
    ]
    manifest = dedup_folder(src, threshold=1, workers=0)
    assert manifest["counts"]["kept"] == 6
    assert [(e["path"], e["reason"]) for e in manifest["unreadable"]] == [
        ("cat/broken.png", "FileNotFoundError: No such file or directory"),
        ("cat/loop.png", "OSError: Too many levels of symbolic links"),
    ]
    # an interrupted run, then the broken link becomes valid: resuming with other files is refused
    monkeypatch.setattr(cache_module, "_cache_chunk", failing_chunk)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_cache(src, tmp_path / "d", size=8, workers=0, chunk_size=2)
    monkeypatch.undo()
    (src / "cat" / "broken.png").unlink()
    (src / "cat" / "broken.png").symlink_to(cats[0])
    with pytest.raises(DataError, match="unfinished cache of other files or settings"):
        build_cache(src, tmp_path / "d", size=8, workers=0, chunk_size=2)

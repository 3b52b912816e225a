"""Tests of the image-folder layouts (issue 14, seed 001's Kaggle ASL trees): case-insensitive Train/Test,
explicit data.train_dir/test_dir, Kaggle wrapper folders, a flat test folder whose file names carry the class,
a train-only tree whose test set is carved out (stratified, seeded, stated in the report's notes), and the
one-line errors for everything else."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.config import load_config
from imgcls.data.layouts import class_from_filename, resolve_layout
from imgcls.data.prepare import prepare_data
from imgcls.errors import DataError
from imgcls.registry import DATASETS

CLASSES = ["A", "B", "Nothing", "S", "Space"]


def write_images(folder: Path, names: list[str], seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / name)


def class_tree(root: Path, per_class: int, classes: list[str] = CLASSES) -> None:
    for i, c in enumerate(classes):
        write_images(root / c, [f"{c}{k}.jpg" for k in range(per_class)], seed=i)


def source(root: Path | None, *extra: str):
    overrides = ["data.name=imagefolder", *([f"data.root={root}"] if root else []), *extra]
    return DATASETS.build("imagefolder", cfg=load_config(None, overrides).data)


def test_capitalised_train_and_test_folders(tmp_path):
    class_tree(tmp_path / "Train", 4)
    class_tree(tmp_path / "Test", 1)
    src = source(tmp_path)
    assert src.train.class_names == CLASSES
    assert len(src.train) == 20 and len(src.test) == 5
    assert src.test.labels.tolist() == [0, 1, 2, 3, 4]
    assert all("/Test/" in f for f in src.test.files) and src.notes == []


def test_kaggle_asl_archive_wrapper_and_lowercase_test_classes(tmp_path):
    """archive/ASL_Dataset/{Train,Test}: one wrapper folder, test class folders in another case."""
    base = tmp_path / "ASL_Dataset"
    class_tree(base / "Train", 3)
    class_tree(base / "Test", 2, [c.lower() for c in CLASSES])
    src = source(tmp_path)
    assert src.train.class_names == CLASSES and len(src.test) == 10
    assert torch.bincount(src.test.labels).tolist() == [2] * 5


def test_flat_test_folder_names_carry_the_class(tmp_path):
    """grassknoted/asl-alphabet style: asl_alphabet_train/asl_alphabet_train/<class>, asl_alphabet_test/.../A_test.jpg."""
    class_tree(tmp_path / "asl_alphabet_train" / "asl_alphabet_train", 3)
    flat = tmp_path / "asl_alphabet_test" / "asl_alphabet_test"
    write_images(
        flat, ["A_test.jpg", "B_test.jpg", "nothing_test.jpg", "S_test.jpg", "space_test.jpg", "A2.png"]
    )
    layout = resolve_layout(str(tmp_path))
    assert layout.test_flat and layout.train_dir.name == "asl_alphabet_train" and layout.test_dir == flat
    src = source(tmp_path)
    names = [Path(f).name for f in src.test.files]
    got = {n: CLASSES[int(y)] for n, y in zip(names, src.test.labels, strict=True)}
    assert got == {
        "A2.png": "A",
        "A_test.jpg": "A",
        "B_test.jpg": "B",
        "nothing_test.jpg": "Nothing",
        "S_test.jpg": "S",
        "space_test.jpg": "Space",
    }
    assert any("flat folder" in n for n in src.notes)


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("A_test", "A"),
        ("space_test", "Space"),
        ("SPACE", "Space"),
        ("s-01", "S"),
        ("Nothing_3", "Nothing"),
        ("A12", "A"),
        ("Sx_test", None),
        ("del_test", None),
        ("", None),
    ],
)
def test_class_from_filename_longest_prefix_then_non_letter(stem, expected):
    got = class_from_filename(stem, CLASSES)
    assert (None if got is None else CLASSES[got]) == expected


def test_flat_test_file_without_a_class_is_a_one_line_error(tmp_path):
    class_tree(tmp_path / "train", 2)
    write_images(tmp_path / "test", ["A_test.jpg", "del_test.jpg"])
    with pytest.raises(DataError, match=r"name no training class, e\.g\. 'del_test\.jpg'") as err:
        source(tmp_path)
    assert "\n" not in str(err.value)


def test_explicit_train_and_test_dirs(tmp_path):
    class_tree(tmp_path / "photos" / "fit", 3)
    class_tree(tmp_path / "elsewhere" / "holdout", 1)
    src = source(tmp_path, "data.train_dir=photos/fit", f"data.test_dir={tmp_path / 'elsewhere' / 'holdout'}")
    assert len(src.train) == 15 and len(src.test) == 5
    # without a root, train_dir is taken as it is and the test folder is looked for beside it
    class_tree(tmp_path / "solo" / "Train", 2)
    class_tree(tmp_path / "solo" / "TEST", 1)
    src = source(None, f"data.train_dir={tmp_path / 'solo' / 'Train'}")
    assert len(src.train) == 10 and len(src.test) == 5


@pytest.mark.parametrize("nested", [True, False], ids=["root/train", "root/<class>"])
def test_train_only_tree_carves_a_stratified_seeded_test_set(tmp_path, nested):
    class_tree(tmp_path / "train" if nested else tmp_path, 10)
    a = source(tmp_path, "data.test_fraction=0.2", "data.split_seed=3")
    b = source(tmp_path, "data.test_fraction=0.2", "data.split_seed=3")
    c = source(tmp_path, "data.test_fraction=0.2", "data.split_seed=4")
    assert len(a.test) == 10 and len(a.train) == 40
    assert torch.bincount(a.test.labels).tolist() == [2] * 5  # stratified
    assert not set(a.test.files) & set(a.train.files)  # disjoint
    assert a.test.files == b.test.files and a.test.files != c.test.files  # seeded
    assert (
        len(a.notes) == 1
        and "carved out by a stratified split" in a.notes[0]
        and "test_fraction=0.2" in a.notes[0]
    )


def test_carved_test_set_note_reaches_prepared_data(tmp_path):
    class_tree(tmp_path / "Train", 6)
    cfg = load_config(
        None, ["data.name=imagefolder", f"data.root={tmp_path}", "data.num_workers=0", "data.val_fraction=0"]
    )
    data = prepare_data(cfg)
    assert len(data.test) == 5 and len(data.train) == 25
    assert any("carved out" in n for n in data.notes)  # evaluation copies data.notes into report.md


def test_layout_errors_are_one_line(tmp_path):
    def err(*args, **kwargs) -> str:
        with pytest.raises(DataError) as info:
            resolve_layout(*args, **kwargs)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "is not a folder" in err(str(tmp_path / "missing"))
    assert "train/ and test/" in err(str(tmp_path))  # empty root
    assert "data.root" in err(None)
    class_tree(tmp_path / "train", 1)
    class_tree(tmp_path / "Train", 1)
    if len(list(tmp_path.iterdir())) == 2:  # a case-sensitive file system: two spellings
        assert "has both" in err(str(tmp_path))
    assert "are the same" in err(str(tmp_path), "train", "train")
    only_test = tmp_path / "only_test"
    class_tree(only_test / "test", 1)
    assert "no train/ folder" in err(str(only_test))
    assert "data.test_dir='nope'" in err(str(only_test), "test", "nope")
    empty_test = tmp_path / "empty_test"
    class_tree(empty_test / "train", 1)
    (empty_test / "test").mkdir()
    assert "has no images" in err(str(empty_test))


def test_test_class_folders_match_case_insensitively_and_strays_are_left_out(tmp_path, caplog):
    class_tree(tmp_path / "train", 2)
    class_tree(tmp_path / "test", 1, ["a", "SPACE", "Q"])
    with caplog.at_level(logging.WARNING):
        src = source(tmp_path)
    assert [CLASSES[int(y)] for y in src.test.labels] == ["A", "Space"]
    assert any("Q" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)


ASL_CLASSES = [*"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "Nothing", "Space"]


def test_shipped_asl_config_reads_the_kaggle_layout(tmp_path):
    """configs/asl/gfnet_base_polish.yaml on a miniature of the Kaggle archive: ASL_Dataset/{Train,Test}/<class>."""
    base = tmp_path / "archive" / "ASL_Dataset"
    class_tree(base / "Train", 4, ASL_CLASSES)
    class_tree(base / "Test", 1, ASL_CLASSES)
    config = Path(__file__).parent.parent / "configs" / "asl" / "gfnet_base_polish.yaml"
    cfg = load_config(
        config,
        [
            f"data.root={tmp_path / 'archive'}",
            "data.holdout_per_class=1",
            "data.val_fraction=0.25",
            "data.num_workers=0",
        ],
    )
    data = prepare_data(cfg)
    # ImageFolder order (SPEC §2.1): A…M, N, Nothing, O…R, S, Space, T…Z
    assert data.class_names == sorted(ASL_CLASSES) and data.class_names[13:16] == ["N", "Nothing", "O"]
    assert data.class_names[19:22] == ["S", "Space", "T"]
    assert len(data.test) == 28 and len(data.holdout) == 28 and len(data.train) + len(data.val) == 28 * 3
    assert data.channels == 1 and data.image_size == 96 and data.train.images.shape[1:] == (1, 96, 96)


# ------------------------------------------------------------------------------- ambiguous trees (audit findings)
def test_a_wrapper_beside_a_folder_of_images_is_refused_not_read_as_two_classes(tmp_path):
    class_tree(tmp_path / "ASL_Dataset" / "Train", 2)
    class_tree(tmp_path / "ASL_Dataset" / "Test", 1)
    write_images(tmp_path / "sample_images", ["x.jpg", "y.jpg"])
    with pytest.raises(DataError) as info:
        source(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "is no class tree" in message and "ASL_Dataset" in message
    assert f"'{tmp_path / 'ASL_Dataset'}'" in message
    # a wrapper beside a folder without images (docs, a licence) is still the data set
    (tmp_path / "sample_images").rename(tmp_path / "old")
    for f in (tmp_path / "old").iterdir():
        f.unlink()
    (tmp_path / "old" / "LICENSE.txt").write_text("cc-by")
    assert source(tmp_path).train.class_names == CLASSES


def test_a_class_named_train_in_a_train_only_tree_is_not_taken_for_the_train_folder(tmp_path):
    class_tree(tmp_path, 3, ["bus", "car"])
    write_images(
        tmp_path / "train" / "2019", ["a.jpg", "b.jpg"]
    )  # would make classes 2019/2020, dropping bus/car
    write_images(tmp_path / "train" / "2020", ["c.jpg", "d.jpg"])
    with pytest.raises(DataError) as info:
        source(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "has a train folder 'train' but no test folder" in message
    assert "(bus, car)" in message and f"data.train_dir='{tmp_path}'" in message
    # what the line says works: all three are classes
    assert source(tmp_path, f"data.train_dir={tmp_path}").train.class_names == ["bus", "car", "train"]


def test_a_train_folder_of_images_without_class_folders_says_so(tmp_path):
    write_images(tmp_path / "train", ["a.jpg", "b.jpg"])
    class_tree(tmp_path / "test", 1, ["a", "b"])
    with pytest.raises(DataError, match=r"holds images but no class sub-folders; put each class's images in"):
        source(tmp_path)


def test_classes_equal_but_for_case_keep_their_own_test_folders(tmp_path):
    class_tree(tmp_path / "train", 3, ["A", "a", "b"])
    class_tree(tmp_path / "test", 2, ["A", "a", "b"])
    src = source(tmp_path)
    assert src.train.class_names == ["A", "a", "b"]
    assert torch.bincount(src.test.labels).tolist() == [2, 2, 2]
    assert all(
        f"/test/{src.train.class_names[c]}/" in f
        for f, c in zip(src.test.files, src.test.labels.tolist(), strict=True)
    )
    # two test folders of one class, or one that could be either of two classes: an error, never a silent pick
    write_images(tmp_path / "test" / "B", ["extra.jpg"])
    with pytest.raises(DataError, match=r"has two folders for class 'b': 'b' and 'B'; merge them"):
        source(tmp_path)
    other = tmp_path / "other"
    class_tree(other / "train", 2, ["AB", "ab"])
    class_tree(other / "test", 1, ["Ab"])
    with pytest.raises(DataError, match=r"test folder '.*/Ab' could be class 'AB' or 'ab' .*rename it"):
        source(other)


def test_flat_test_names_prefer_the_exactly_spelled_class_and_refuse_ambiguity():
    names = ["A", "a", "b"]
    assert class_from_filename("a_test", names) == 1 and class_from_filename("A_test", names) == 0
    assert class_from_filename("B_test", names) == 2  # one class only, whatever the case
    with pytest.raises(DataError, match=r"test file name 'Ab_1' could be class 'AB' or 'ab'"):
        class_from_filename("Ab_1", ["AB", "ab"])


def test_unicode_normal_forms_match_class_folders(tmp_path):
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    class_tree(tmp_path / "train", 2, [nfc, "dog"])
    class_tree(tmp_path / "test", 1, [nfd, "dog"])  # as a zip made on macOS unpacks
    src = source(tmp_path)
    assert torch.bincount(src.test.labels, minlength=2).tolist() == [1, 1]
    assert class_from_filename(unicodedata.normalize("NFD", "Café_3"), [nfc, "dog"]) == 0


def test_a_class_folder_that_is_a_broken_link_is_an_error_not_a_missing_class(tmp_path):
    class_tree(tmp_path / "train", 2, ["cat", "dog"])
    class_tree(tmp_path / "test", 1, ["cat", "dog"])
    (tmp_path / "train" / "owl").symlink_to(tmp_path / "unmounted" / "owl")
    with pytest.raises(DataError) as info:
        source(tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"'{tmp_path / 'train' / 'owl'}' is a broken symbolic link" in message
    assert "unmounted" in message
    # a broken link with an image's name is a file: listed, then skipped as unreadable
    (tmp_path / "train" / "owl").unlink()
    (tmp_path / "train" / "cat" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert sum("gone.jpg" in f for f in source(tmp_path).train.files) == 1


def test_images_beside_class_folders_are_named_in_a_warning(tmp_path, caplog):
    class_tree(tmp_path / "train", 2, ["cat", "dog"])
    class_tree(tmp_path / "test", 1, ["cat", "dog"])
    write_images(tmp_path / "train", ["stray_0.jpg", "stray_1.jpg"])
    with caplog.at_level(logging.WARNING):
        src = source(tmp_path)
    assert len(src.train) == 4
    assert f"2 image file(s) directly in '{tmp_path / 'train'}' are in no class folder" in caplog.text


def test_training_classes_without_test_images_are_noted(tmp_path, caplog):
    class_tree(tmp_path / "train", 4, ["cat", "dog", "owl"])
    class_tree(tmp_path / "test", 2, ["cat", "owl"])
    (tmp_path / "test" / "owl" / "owl0.jpg").write_bytes(b"garbage")
    (tmp_path / "test" / "owl" / "owl1.jpg").write_bytes(b"")
    cfg = load_config(None, ["data.name=imagefolder", f"data.root={tmp_path}", "data.num_workers=0"])
    with caplog.at_level(logging.WARNING):
        data = prepare_data(cfg)
    line = "training class(es) without a readable test image: dog, owl; the test metrics cover 1 of 3 classes"
    assert line in caplog.text and line in data.notes

"""Tests of the IDX reader (LeCun et al.'s MNIST format, also Fashion-MNIST's): files written byte by byte
here (magic ``00 00 <type> <ndim>``, big-endian uint32 sizes, row-major data), gzipped and plain, and the
DataError for truncated files, bad magic numbers and broken gzip streams."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from imgcls.data.idx import read_idx, write_idx
from imgcls.errors import DataError


def idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape) + payload


#: two 3×4 uint8 "images" with pixel values 0..23
IMAGES = idx_bytes(0x08, (2, 3, 4), bytes(range(24)))
#: five uint8 labels
LABELS = idx_bytes(0x08, (5,), bytes([9, 0, 3, 7, 1]))


@pytest.mark.parametrize("compress", [False, True])
def test_uint8_images(tmp_path, compress):
    path = tmp_path / ("images-idx3-ubyte.gz" if compress else "images-idx3-ubyte")
    path.write_bytes(gzip.compress(IMAGES) if compress else IMAGES)
    array = read_idx(path)
    assert array.dtype == np.uint8
    assert array.shape == (2, 3, 4)
    assert array[0, 0].tolist() == [0, 1, 2, 3]
    assert array[1, 2].tolist() == [20, 21, 22, 23]
    assert array[1, 0, 1] == 13


@pytest.mark.parametrize("compress", [False, True])
def test_uint8_labels(tmp_path, compress):
    path = tmp_path / ("labels.gz" if compress else "labels")
    path.write_bytes(gzip.compress(LABELS) if compress else LABELS)
    array = read_idx(path)
    assert array.shape == (5,)
    assert array.tolist() == [9, 0, 3, 7, 1]


def test_big_endian_int32_and_float32_become_native(tmp_path):
    ints = idx_bytes(0x0C, (3,), struct.pack(">iii", 1, -2, 70000))
    (tmp_path / "ints").write_bytes(ints)
    array = read_idx(tmp_path / "ints")
    assert array.tolist() == [1, -2, 70000]
    assert array.dtype == np.int32 and array.dtype.isnative

    floats = idx_bytes(0x0D, (2, 2), struct.pack(">ffff", 0.5, -1.25, 3.0, 1e-3))
    (tmp_path / "floats").write_bytes(floats)
    array = read_idx(tmp_path / "floats")
    assert array.shape == (2, 2)
    np.testing.assert_allclose(array, [[0.5, -1.25], [3.0, 1e-3]], rtol=1e-7)
    assert array.dtype == np.float32 and array.dtype.isnative


def test_int16_signed(tmp_path):
    (tmp_path / "shorts").write_bytes(idx_bytes(0x0B, (2,), struct.pack(">hh", -300, 300)))
    assert read_idx(tmp_path / "shorts").tolist() == [-300, 300]


def test_write_idx_produces_the_same_bytes(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "plain", array)
    assert (tmp_path / "plain").read_bytes() == IMAGES
    write_idx(tmp_path / "packed.gz", array)
    assert gzip.decompress((tmp_path / "packed.gz").read_bytes()) == IMAGES
    np.testing.assert_array_equal(read_idx(tmp_path / "packed.gz"), array)


def test_write_read_round_trip_int32(tmp_path):
    array = np.array([[1, -5], [123456, 0]], dtype=np.int32)
    write_idx(tmp_path / "ints", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "ints"), array)


def test_a_file_read_again_is_not_decompressed_again_until_it_changes(tmp_path, monkeypatch):
    import imgcls.data.idx as idx

    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(IMAGES))
    parsed, parse = [], idx._parse_idx

    def counted_parse(p):
        parsed.append(p)
        return parse(p)

    monkeypatch.setattr(idx, "_parse_idx", counted_parse)
    first = read_idx(path)
    again = read_idx(tmp_path / "." / "images.gz")  # the same file by another spelling
    assert again is first and len(parsed) == 1
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0, 0] = 99  # shared between readers, so nobody may change it
    changed = bytearray(IMAGES)
    changed[-1] = 99
    path.write_bytes(gzip.compress(bytes(changed)))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # coarse clocks
    assert read_idx(path)[1, 2, 3] == 99 and len(parsed) == 2


# ------------------------------------------------------------------------------------ broken files
@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("truncated-data", IMAGES[:-5], "19 data bytes, expected 24"),
        ("extra-data", IMAGES + b"\x00", "25 data bytes, expected 24"),
        ("truncated-header", IMAGES[:9], "truncated"),
        ("bad-magic", b"\x01\x00" + IMAGES[2:], "bad magic"),
        ("bad-type", bytes([0, 0, 0x07, 3]) + IMAGES[4:], "bad magic"),
        ("empty", b"", "bad magic"),
        ("png-instead", b"\x89PNG\r\n\x1a\n" + bytes(40), "bad magic"),
    ],
)
def test_broken_file_is_a_data_error(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and words in message and "\n" not in message


def test_truncated_gzip_data_is_a_data_error(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(IMAGES[:-3]))
    with pytest.raises(DataError, match="expected 24"):
        read_idx(path)


def test_truncated_gzip_stream_is_a_data_error(tmp_path):
    path = tmp_path / "images.gz"
    packed = gzip.compress(IMAGES)
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(path)


def test_gz_name_without_gzip_content_is_a_data_error(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(IMAGES)
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "absent")

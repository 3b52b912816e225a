"""Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al.; Xiao et al., 2017).

An IDX file starts with a magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the data in row-major order. Files may be gzip-compressed (``.gz``).

Decompressing Fashion-MNIST's training images takes about half a second, and one process may read the same
files many times (the trials of an in-process sweep, the runs of a comparison, the benchmarks' trainers), so
the arrays read are kept, read-only, keyed by the file's path, size and modification time.
"""

from __future__ import annotations

import gzip
from collections import OrderedDict
from pathlib import Path

import numpy as np

from imgcls.errors import DataError

_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


#: arrays already read, most recently used last: (resolved path, size, mtime in ns) → read-only array
_READ: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
_READ_MAX_BYTES = 256 * 2**20


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX (optionally gzipped) file into a numpy array of its stored shape.

    The array is read-only and may be shared with earlier and later reads of the unchanged file: copy it
    before changing it."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _READ:
        _READ.move_to_end(key)
        return _READ[key]
    array = _parse_idx(path)
    array.setflags(write=False)
    _READ[key] = array
    while sum(a.nbytes for a in _READ.values()) > _READ_MAX_BYTES and len(_READ) > 1:
        _READ.popitem(last=False)
    return array


def _unreadable(path: Path, exc: Exception) -> DataError:
    return DataError(f"cannot read IDX file '{path}': {exc}; delete it so it is fetched again")


def _parse_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise _unreadable(path, exc) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"'{path}' is not an IDX file (bad magic number); delete it so it is fetched again")
    dtype, ndim = np.dtype(_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file '{path}' is truncated (header); delete it so it is fetched again")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file '{path}' has {len(raw) - header} data bytes, expected {expected} for shape {shape}; "
            "delete it so it is fetched again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an array as an IDX file (gzipped when the name ends in .gz); used by tests and caches."""
    codes = {
        np.dtype(np.uint8): 0x08,
        np.dtype(np.int8): 0x09,
        np.dtype(np.int16): 0x0B,
        np.dtype(np.int32): 0x0C,
        np.dtype(np.float32): 0x0D,
        np.dtype(np.float64): 0x0E,
    }
    code = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(data)

"""Near neighbours among 64-bit hashes in Hamming space: multi-index hashing, and brute force as reference.

Multi-index hashing (Norouzi, Punjani & Fleet, "Fast Search in Hamming Space with Multi-Index
Hashing", CVPR 2012), in its exact form for small radii: split the 64 bits into ``d + 1``
disjoint segments. Two hashes at distance ≤ ``d`` differ in at most ``d`` bits, so by the
pigeonhole principle they agree *exactly* on at least one segment. Grouping the hashes by each
segment's value (one sort per segment) therefore yields a candidate set that contains every
pair within distance ``d``; candidates are then verified with a full 64-bit popcount. For
hashes that are not concentrated on a few segment values, the candidate count is
``≈ N² (d + 1) / 2^(64 / (d + 1))``, so the search costs ``O(N log N)`` sorts plus the output,
against ``N² / 2`` comparisons for brute force (measured in ``benchmarks/data_pipeline.py``).
Everything is vectorised numpy (no Python loop over hashes).
"""

from __future__ import annotations

import numpy as np

BITS = 64


def popcount(values: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64 (numpy ≥ 2.0 has a vectorised popcount)."""
    return np.bitwise_count(np.asarray(values, dtype=np.uint64))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance between two uint64 arrays."""
    return popcount(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))).astype(
        np.int64
    )


def segments(max_distance: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of the ``max_distance + 1`` disjoint bit segments (widths differ by at most 1)."""
    m = max_distance + 1
    if not 1 <= m <= BITS:
        raise ValueError(f"max_distance must be in 0..{BITS - 1}, got {max_distance}")
    widths = [BITS // m + (1 if k < BITS % m else 0) for k in range(m)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
    return list(zip(shifts, widths, strict=True))


def _equal_key_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs ``(i, j)``, ``i < j``, with ``keys[i] == keys[j]``; work ∝ N log N + pairs."""
    n = keys.shape[0]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    ends = np.append(starts[1:], n)
    run_end = np.repeat(ends, ends - starts)  # end of the run of equal keys each sorted position is in
    firsts, seconds = [], []
    pos = np.flatnonzero(run_end - np.arange(n) > 1)  # sorted positions followed by an equal key
    k = 1
    while pos.size:  # pair each position with its k-th follower in the same run
        firsts.append(order[pos])
        seconds.append(order[pos + k])
        k += 1
        pos = pos[run_end[pos] - pos > k]
    if not firsts:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    return np.minimum(a, b), np.maximum(a, b)


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` with ``hamming(hashes[i], hashes[j]) ≤ max_distance`` (multi-index hashing).

    Returns ``(i, j, distance)`` int64 arrays sorted by ``(i, j)``.
    """
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = hashes.shape[0]
    if max_distance < 0 or n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    codes = []
    for shift, width in segments(max_distance):
        keys = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        i, j = _equal_key_pairs(keys)
        codes.append(i * n + j)
    pair_codes = np.unique(np.concatenate(codes))  # a pair may agree on several segments
    i, j = pair_codes // n, pair_codes % n
    distance = hamming(hashes[i], hashes[j])
    keep = distance <= max_distance
    return i[keep], j[keep], distance[keep]


def brute_force_pairs(
    hashes: np.ndarray, max_distance: int, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same pairs as :func:`near_pairs` by comparing all ``N (N − 1) / 2`` pairs (in row blocks)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = hashes.shape[0]
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, block):
        rows = hashes[start : start + block]
        dist = popcount(rows[:, None] ^ hashes[None, start:])  # (rows, n - start): upper triangle only
        r, c = np.nonzero(dist <= max_distance)
        c = c + start
        upper = c > r + start
        out_i.append(r[upper] + start)
        out_j.append(c[upper])
        out_d.append(dist[r[upper], c[upper] - start].astype(np.int64))
    if not out_i:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    i, j, d = (np.concatenate(x).astype(np.int64) for x in (out_i, out_j, out_d))
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]

"""Issue 14: the offline data tools measured.

1. ``imgcls data cache``: images/s converting a generated folder of 400 × 400 RGB JPEGs (28 classes, as
   the ASL alphabet) to 96 × 96 grayscale, with 1 and with all worker processes; beside it the per-image
   cost of decoding vs pHash (why the dedup hashes with ``imagehash``), the seconds to read the finished
   cache back into memory, and ``imgcls data dedup`` end to end on the same folder.
2. ``imgcls data dedup`` search: seconds and peak memory (tracemalloc) of the multi-index Hamming search
   plus the greedy keep/remove pass over N random 64-bit hashes with planted near-duplicates, for several
   N up to ≥ 100 k, against brute-force pairwise comparison — timed on subsets, extrapolated as c·N², and
   checked pair-for-pair equal to the multi-index result on the largest subset.

    flock /tmp/imgcls-heavy.lock .venv/bin/python benchmarks/data_pipeline.py          # ≈ 3-5 min on 2 cores
    .venv/bin/python benchmarks/data_pipeline.py --quick                               # smoke run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results

from imgcls.data.cache import build_cache, read_cache
from imgcls.data.chunked import default_workers
from imgcls.data.decode import decode_image
from imgcls.data.dedup import dedup_folder, find_duplicates, image_hash
from imgcls.data.hamming import brute_force_pairs, near_pairs


def make_jpeg_folder(root: Path, n_images: int, n_classes: int, size: int = 400, seed: int = 0) -> None:
    """``n_images`` 400 × 400 RGB JPEGs (quality 90) of smooth structure plus noise, in ``n_classes`` folders."""
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        folder = root / f"class_{i % n_classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
            (size, size), Image.BILINEAR
        )
        pixels = np.clip(np.asarray(base, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def per_image_costs(files: list[str], n: int = 100) -> dict:
    """Milliseconds per image: read + decode + grayscale + resize to 96, and the pHash/dHash of the result."""
    sample = files[:n]
    start = time.perf_counter()
    pixels = [decode_image(f, 96, 1)[0].numpy() for f in sample]
    decode_ms = (time.perf_counter() - start) / len(sample) * 1e3
    out = {"decode_resize_ms": decode_ms}
    for kind in ("phash", "dhash"):
        start = time.perf_counter()
        for p in pixels:
            image_hash(p, kind)
        out[f"{kind}_ms"] = (time.perf_counter() - start) / len(sample) * 1e3
    return out


def bench_cache(n_images: int, n_classes: int, workers_list: list[int]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="imgcls-bench-cache-"))
    try:
        src = tmp / "src"
        start = time.perf_counter()
        make_jpeg_folder(src, n_images, n_classes)
        gen_s = time.perf_counter() - start
        files = sorted(str(p) for p in src.rglob("*.jpg"))
        result = {
            "images": n_images,
            "classes": n_classes,
            "source_mb": sum(Path(f).stat().st_size for f in files) / 2**20,
            "generate_s": gen_s,
            "per_image": per_image_costs(files),
            "cache": {},
        }
        for workers in workers_list:
            dst = tmp / f"cache_w{workers}"
            start = time.perf_counter()
            summary = build_cache(src, dst, size=96, grayscale=True, workers=workers)
            wall = time.perf_counter() - start
            result["cache"][workers] = {
                "wall_s": wall,
                "images_per_s": n_images / wall,
                "decode_images_per_s": summary["images_per_s"],
            }
            print(f"cache workers={workers}: {n_images / wall:.0f} images/s (wall {wall:.1f} s)", flush=True)
        dst = tmp / f"cache_w{workers_list[-1]}"
        start = time.perf_counter()
        data = read_cache(dst)
        result["read_back_s"] = time.perf_counter() - start
        result["cache_mb"] = (dst / "images.npy").stat().st_size / 2**20
        assert data.images.shape == (n_images, 1, 96, 96)
        start = time.perf_counter()
        manifest = dedup_folder(src, workers=workers_list[-1])
        result["dedup_wall_s"] = time.perf_counter() - start
        result["dedup_images_per_s"] = n_images / result["dedup_wall_s"]
        result["dedup_removed"] = manifest["counts"]["removed"]
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def planted_hashes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uniform random 64-bit hashes and labels (28 classes); 2 % are copies of another hash with
    0 or 1 bits flipped (half of them in another class), 1 % with 2–4 bits flipped (not duplicates at T=2)."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    labels = rng.integers(0, 28, n)
    planted = rng.choice(n, size=3 * n // 100, replace=False)
    for k, target in enumerate(planted):
        source = int(rng.integers(n))
        flips = int(rng.integers(0, 2)) if k < 2 * n // 100 else int(rng.integers(2, 5))
        mask = sum(1 << int(b) for b in rng.choice(64, flips, replace=False))
        hashes[target] = hashes[source] ^ np.uint64(mask)
    return hashes, labels


def measure(fn, *args) -> tuple[float, float, object]:
    """(seconds, peak MiB of Python/numpy allocations, result) of one call."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, result


def bench_search(sizes: list[int], brute_sizes: list[int], threshold: int) -> dict:
    d = threshold - 1
    rows = []
    for n in sizes:
        hashes, labels = planted_hashes(n)
        search_s, search_mb, (i, _, _) = measure(near_pairs, hashes, d)
        dedup_s, dedup_mb, (match, _, counts) = measure(find_duplicates, hashes, labels, threshold, "both")
        rows.append(
            {
                "n": n,
                "search_s": search_s,
                "search_peak_mb": search_mb,
                "dedup_s": dedup_s,
                "dedup_peak_mb": dedup_mb,
                "pairs": len(i),
                "removed": int((match >= 0).sum()),
                **counts,
            }
        )
        print(
            f"search N={n}: multi-index {search_s:.3f} s ({search_mb:.1f} MiB), dedup {dedup_s:.3f} s, pairs {len(i)}",
            flush=True,
        )
    brute = []
    for n in brute_sizes:
        hashes, _ = planted_hashes(n)
        seconds, peak, pairs = measure(brute_force_pairs, hashes, d)
        brute.append({"n": n, "seconds": seconds, "peak_mb": peak, "pairs": len(pairs[0])})
        print(f"brute force N={n}: {seconds:.2f} s ({peak:.1f} MiB)", flush=True)
    # c from the largest brute-force run (quadratic: N (N − 1) / 2 comparisons)
    c = brute[-1]["seconds"] / (brute_sizes[-1] * (brute_sizes[-1] - 1) / 2)
    measured = {b["n"]: b["seconds"] for b in brute}
    for row in rows:
        row["brute_force_s_extrapolated"] = c * row["n"] * (row["n"] - 1) / 2
        row["speedup"] = measured.get(row["n"], row["brute_force_s_extrapolated"]) / row["search_s"]
    # exactness: identical pair lists on the largest brute-force subset
    hashes, _ = planted_hashes(brute_sizes[-1])
    fast, slow = near_pairs(hashes, d), brute_force_pairs(hashes, d)
    equal = all(np.array_equal(a, b) for a, b in zip(fast, slow, strict=True))
    assert equal, "multi-index pairs differ from brute force"
    ns = np.array([r["n"] for r in rows], dtype=float)
    exponent = (
        float(np.polyfit(np.log(ns), np.log([r["search_s"] for r in rows]), 1)[0])
        if len(rows) > 1
        else float("nan")
    )
    bn = np.array(brute_sizes, dtype=float)
    brute_exponent = (
        float(np.polyfit(np.log(bn), np.log([b["seconds"] for b in brute]), 1)[0])
        if len(brute) > 1
        else float("nan")
    )
    return {
        "threshold": threshold,
        "rows": rows,
        "brute_force": brute,
        "equal_pairs_on_n": brute_sizes[-1],
        "equal": equal,
        "brute_pairs_checked": len(fast[0]),
        "search_exponent": exponent,
        "brute_force_exponent": brute_exponent,
    }


def render(cache: dict, search: dict) -> str:
    w = sorted(cache["cache"], key=int)
    p = cache["per_image"]
    md = [
        f"**`imgcls data cache`** — {cache['images']} generated 400 × 400 RGB JPEGs ({cache['classes']} classes, "
        f"{cache['source_mb']:.0f} MiB) → 96 × 96 grayscale uint8 ({cache['cache_mb']:.1f} MiB), this CPU:",
        "",
        "| workers | images/s | wall s |",
        "|---|---|---|",
        *[
            f"| {k} | {cache['cache'][k]['images_per_s']:.0f} | {cache['cache'][k]['wall_s']:.1f} |"
            for k in w
        ],
        "",
        f"Per image (1 process): read + decode + grayscale + resize {p['decode_resize_ms']:.2f} ms; pHash of the 96 px "
        f"image {p['phash_ms']:.3f} ms, dHash {p['dhash_ms']:.3f} ms — decoding dominates, so `imagehash` is kept. "
        f"Reading the finished cache into memory: {cache['read_back_s']:.2f} s "
        f"({cache['images'] / max(cache['read_back_s'], 1e-9):.0f} images/s). "
        f"`imgcls data dedup` end to end on the same folder ({w[-1]} workers): {cache['dedup_wall_s']:.1f} s "
        f"({cache['dedup_images_per_s']:.0f} images/s).",
        "",
        f"**`imgcls data dedup` search** — N random 64-bit hashes (2 % planted duplicates at distance 0–1, 1 % at 2–4), "
        f"threshold {search['threshold']} (distance < {search['threshold']}), multi-index hashing on "
        f"{search['threshold']} segments vs brute force (timed up to N = {search['brute_force'][-1]['n']:,}, "
        f"extrapolated as c·N²; pairs identical on N = {search['equal_pairs_on_n']:,}: {search['equal']}):",
        "",
        "| N | multi-index search s | whole dedup (search + greedy) s | peak MiB | pairs found | removed | brute force s | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    measured = {b["n"]: b["seconds"] for b in search["brute_force"]}
    for r in search["rows"]:
        brute = (
            f"{measured[r['n']]:.2f}"
            if r["n"] in measured
            else f"≈ {r['brute_force_s_extrapolated']:.1f} (extrap.)"
        )
        md.append(
            f"| {r['n']:,} | {r['search_s']:.3f} | {r['dedup_s']:.3f} | {max(r['search_peak_mb'], r['dedup_peak_mb']):.1f} "
            f"| {r['pairs']:,} | {r['removed']:,} | {brute} | {r['speedup']:.0f}× |"
        )
    md += [
        "",
        f"Fitted growth exponents (time ∝ N^k): multi-index k = {search['search_exponent']:.2f}, brute force "
        f"k = {search['brute_force_exponent']:.2f}.",
    ]
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 112 images, N ≤ 20 k")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--threshold", type=int, default=2)
    args = ap.parse_args()
    all_workers = default_workers()
    workers_list = sorted({1, all_workers})
    if args.quick:
        cache = bench_cache(112, 28, workers_list)
        search = bench_search([5_000, 20_000], [2_000, 5_000], args.threshold)
    else:
        cache = bench_cache(args.images, 28, workers_list)
        search = bench_search(
            [10_000, 20_000, 30_000, 100_000, 300_000, 1_000_000],
            [2_500, 5_000, 10_000, 20_000],
            args.threshold,
        )
    payload = {"quick": args.quick, "cache": cache, "search": search}
    write_results("data_pipeline_quick" if args.quick else "data_pipeline", payload, render(cache, search))


if __name__ == "__main__":
    main()

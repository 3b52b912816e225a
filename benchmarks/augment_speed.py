"""Speed of batched augmentation with per-sample parameters on CPU: ours vs torchvision v2 vs kornia.

Backs the choice of kernels in ``imgcls.data.augment`` (DESIGN "Data path and speed"). For each
op and image size (B = 256 RGB images, float in [0, 1]) it times:

* ``ours``: the vectorised kernels of :mod:`imgcls.data.augment_ops` / ``augment_policies``;
* ``tv loop``: torchvision.transforms.v2, one call per sample (its functional kernels take one
  parameter set per call, so this is how it gets per-sample parameters);
* ``kornia``: ``kornia.augmentation`` (per-sample parameters for single ops; its RandAugment /
  AutoAugment pick the *same* sub-policy for the whole batch, so they do less work than the others).

Writes ``benchmarks/results/augment_speed.{json,md}``. Runs in well under a minute on 2 cores:
``.venv/bin/python benchmarks/augment_speed.py``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.transforms import v2

from imgcls.data.augment_ops import (
    ColorJitter,
    Cutout,
    RandomAffine,
    RandomCropPad,
    RandomHFlip,
    RandomPerspective,
)
from imgcls.data.augment_policies import AutoAugment, RandAugment

try:
    import kornia
    import kornia.augmentation as K
    from kornia.augmentation import auto as KA
except ImportError:  # kornia is optional: only measured when installed
    kornia = None

BATCH = 256
SIZES = (28, 32, 64, 96)
REPEATS = 7
LOOP_SAMPLES = 64  # per-sample loops are timed on 64 images and scaled to 256 (their cost is linear)
OUT_DIR = Path(__file__).parent / "results"


def _time_round_robin(
    impls: dict[str, Callable[[torch.Tensor], torch.Tensor]], images: torch.Tensor
) -> dict[str, float]:
    """ms per batch of B images for each implementation: best of ``REPEATS`` runs after a warm-up.

    The implementations take turns within each repeat, so load from other processes on a shared
    machine hits them alike; the minimum is the least disturbed run. Per-sample loops run on
    ``LOOP_SAMPLES`` images and are scaled to B (their cost is linear in the number of images).
    """
    inputs = {name: images[:LOOP_SAMPLES] if name == "tv loop" else images for name in impls}
    scale = {name: BATCH / LOOP_SAMPLES if name == "tv loop" else 1.0 for name in impls}
    best = dict.fromkeys(impls, float("inf"))
    with torch.no_grad():
        for name, fn in impls.items():
            fn(inputs[name])
        for _ in range(REPEATS):
            for name, fn in impls.items():
                start = time.perf_counter()
                fn(inputs[name])
                best[name] = min(best[name], 1000.0 * (time.perf_counter() - start) * scale[name])
    return best


def _per_sample(transform: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda images: torch.stack([transform(img) for img in images])


def _ours(*ops) -> Callable[[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(0)

    def run(images: torch.Tensor) -> torch.Tensor:
        for op in ops:
            images = op(images, generator)
        return images

    return run


def candidates(size: int) -> dict[str, dict[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """op name -> implementation name -> batch function."""
    table: dict[str, dict[str, Callable[[torch.Tensor], torch.Tensor]]] = {
        "crop pad 4 + flip": {
            "ours": _ours(RandomCropPad(4), RandomHFlip(0.5)),
            "tv loop": _per_sample(v2.Compose([v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()])),
        },
        "affine (rot 15, tr 0.1, sc 0.9-1.1, sh 10)": {
            "ours": _ours(RandomAffine(15, 0.1, (0.9, 1.1), 10)),
            "tv loop": _per_sample(
                v2.RandomAffine(15, (0.1, 0.1), (0.9, 1.1), 10, interpolation=v2.InterpolationMode.BILINEAR)
            ),
        },
        "perspective 0.2 (p 0.5)": {
            "ours": _ours(RandomPerspective(0.2, 0.5)),
            "tv loop": _per_sample(v2.RandomPerspective(0.2, 0.5)),
        },
        "brightness+contrast 0.2": {
            "ours": _ours(ColorJitter(0.2, 0.2)),
            "tv loop": _per_sample(v2.ColorJitter(0.2, 0.2)),
        },
        "cutout 1x16": {
            "ours": _ours(Cutout(1, 16)),
            "tv loop": _per_sample(v2.RandomErasing(1.0, scale=(0.1, 0.3), ratio=(1.0, 1.0))),
        },
        "RandAugment(2, 9)": {
            "ours": _ours(RandAugment(2, 9)),
            "tv loop": _per_sample(v2.RandAugment(2, 9)),
        },
        "AutoAugment(cifar10)": {
            "ours": _ours(AutoAugment("cifar10")),
            "tv loop": _per_sample(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)),
        },
    }
    if kornia is not None:
        table["crop pad 4 + flip"]["kornia"] = K.AugmentationSequential(
            K.RandomCrop((size, size), padding=4), K.RandomHorizontalFlip()
        )
        table["affine (rot 15, tr 0.1, sc 0.9-1.1, sh 10)"]["kornia"] = K.RandomAffine(
            15, (0.1, 0.1), (0.9, 1.1), 10, p=1.0
        )
        table["perspective 0.2 (p 0.5)"]["kornia"] = K.RandomPerspective(0.2, p=0.5)
        table["brightness+contrast 0.2"]["kornia"] = K.ColorJitter(0.2, 0.2, p=1.0)
        table["cutout 1x16"]["kornia"] = K.RandomErasing(scale=(0.1, 0.3), ratio=(1.0, 1.0), p=1.0)
        table["RandAugment(2, 9)"]["kornia"] = KA.RandAugment(n=2, m=9)
        table["AutoAugment(cifar10)"]["kornia"] = KA.AutoAugment("cifar10")
    return table


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # stable timings on a shared machine; also what one loader worker gets
    start = time.perf_counter()
    results = []
    for size in SIZES:
        images = torch.rand(BATCH, 3, size, size)
        for op, impls in candidates(size).items():
            for impl, ms in _time_round_robin(impls, images).items():
                results.append({"op": op, "size": size, "impl": impl, "ms_per_batch": round(ms, 2)})
                print(f"{op:45s} {size:3d}px {impl:8s} {ms:8.2f} ms")
    meta = {
        "batch": BATCH,
        "channels": 3,
        "sizes": list(SIZES),
        "repeats": REPEATS,
        "statistic": "min",
        "loop_samples": LOOP_SAMPLES,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": __import__("torchvision").__version__,
        "kornia": None if kornia is None else kornia.__version__,
        "cpu": platform.processor() or platform.machine(),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "augment_speed.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
    )
    impls = sorted({r["impl"] for r in results}, key=["ours", "tv loop", "kornia"].index)
    lines = [
        "# Batched augmentation speed (CPU)",
        "",
        f"B = {BATCH} RGB float images, {meta['threads']} thread, best of {REPEATS} runs, ms per batch; "
        f"torch {meta['torch']}, torchvision {meta['torchvision']}, kornia {meta['kornia']}. "
        f"`tv loop` = torchvision v2, one call per sample (timed on {LOOP_SAMPLES} images, scaled); kornia's RandAugment/AutoAugment use one sub-policy "
        "per batch. Generated by `benchmarks/augment_speed.py`.",
        "",
        "| op | size | " + " | ".join(impls) + " | fastest |",
        "|---|---|" + "---|" * len(impls) + "---|",
    ]
    for size in SIZES:
        for op in dict.fromkeys(r["op"] for r in results):
            row = {r["impl"]: r["ms_per_batch"] for r in results if r["op"] == op and r["size"] == size}
            best = min(row, key=row.get)
            cells = " | ".join(f"{row[i]:.1f}" if i in row else "–" for i in impls)
            lines.append(f"| {op} | {size} | {cells} | {best} |")
    (OUT_DIR / "augment_speed.md").write_text("\n".join(lines) + "\n")
    print(f"total {meta['total_seconds']} s -> {OUT_DIR}")


if __name__ == "__main__":
    main()

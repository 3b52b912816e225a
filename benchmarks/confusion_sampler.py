"""Issue 14: the confusion-aware sampler (``data.sampler: confusion``; seed 001's suggested targeted sampling of
confusable classes) against the balanced sampler it refines, on Fashion-MNIST — whose Shirt / T-shirt /
Pullover / Coat play the part of the ASL alphabet's A/F, M/N, R/S/V. Both draw ``samples_per_class`` × 10
images per epoch (400 × 10 = 4,000 by default) for the quickstart AdaptiveCNN at half width; the confusion
sampler re-weights classes every epoch by the previous epoch's validation error (floor 0.25). Reported over
seeds (mean ± std): test accuracy, balanced accuracy, the mean recall of the three worst classes, the worst
class's recall. ``--quick``: 2,000 training images, 2 epochs, one seed.

    flock /tmp/imgcls-heavy.lock .venv/bin/python benchmarks/confusion_sampler.py [--seeds 0 1 2] [--epochs 6]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import grid_main, grid_table

CONFIG = str(Path(__file__).parent.parent / "configs" / "quickstart.yaml")


def rows_for(args) -> list[tuple[str, str, list[str]]]:
    common = [
        "model.backbone_args={layout: mnist, width_mult: 0.5}",
        f"data.samples_per_class={args.per_class}",
        "eval.checkpoint=last",
        "train.threads=1",  # steadiest on a shared, loaded 2-core machine
    ]
    if args.quick:
        common += ["data.train_subset=2000", "data.test_subset=1000"]
    return [
        ("balanced", CONFIG, [*common, "data.sampler=balanced"]),
        (
            f"confusion (floor {args.floor})",
            CONFIG,
            [*common, "data.sampler=confusion", f"data.confusion_floor={args.floor}"],
        ),
    ]


def extract(metrics: dict, history: list[dict]) -> dict[str, float]:
    recalls = sorted(r["recall"] for r in metrics["per_class"].values())
    return {
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "worst3_recall": sum(recalls[:3]) / 3,
        "worst_recall": recalls[0],
    }


def render(results: dict, epochs: int, seeds: list[int]) -> str:
    return "\n".join(
        grid_table(
            f"Fashion-MNIST, quickstart AdaptiveCNN (width 0.5), {epochs} epochs of samples_per_class × 10 sampled images, "
            f"seeds {seeds} (mean ± std, %):",
            results,
            [
                ("test accuracy", "accuracy", 100, 2),
                ("balanced accuracy", "balanced_accuracy", 100, 2),
                ("mean recall, 3 worst classes", "worst3_recall", 100, 2),
                ("worst class recall", "worst_recall", 100, 2),
            ],
        )
    ).replace("| head |", "| sampler |")


def add_arguments(ap) -> None:
    ap.add_argument("--quick", action="store_true", help="2,000 training images, 2 epochs (smoke run)")
    ap.add_argument("--per-class", type=int, default=400, help="images per class per epoch (both samplers)")
    ap.add_argument("--floor", type=float, default=0.25, help="confusion sampler floor")


if __name__ == "__main__":
    if "--quick" in sys.argv:
        sys.argv += ["--epochs", "2", "--seeds", "0", "--name", "confusion_sampler_quick"]
    grid_main(
        "confusion_sampler", __doc__, rows_for, extract, render, default_epochs=6, add_arguments=add_arguments
    )

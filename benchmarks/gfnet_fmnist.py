"""Issue 14 target: Fashion-MNIST test accuracy of the small GFNet config (``configs/fashion_mnist/gfnet.yaml``,
seed 001's architecture at width 64, depth 4, on a 7 × 7 token grid, 15,000 training images) over ≥ 3 seeds on this machine, with
its wall-clock training time. ``--quick`` trains 1,000 images for one epoch (a smoke run).

    flock /tmp/imgcls-heavy.lock .venv/bin/python benchmarks/gfnet_fmnist.py [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import grid_main, grid_table

CONFIG = str(Path(__file__).parent.parent / "configs" / "fashion_mnist" / "gfnet.yaml")


def rows_for(args) -> list[tuple[str, str, list[str]]]:
    quick = ["data.train_subset=1000", "data.test_subset=500"] if args.quick else []
    return [("gfnet", CONFIG, [f"train.threads={args.threads}", *quick])]


def extract(metrics: dict, history: list[dict]) -> dict[str, float]:
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "best_val_acc": max(h["val_acc"] for h in history),
        "train_min": metrics["train_time_s"] / 60,
        "params_m": metrics["params"] / 1e6,
    }


def render(results: dict, epochs: int, seeds: list[int]) -> str:
    return "\n".join(
        grid_table(
            f"Fashion-MNIST, `configs/fashion_mnist/gfnet.yaml`, {epochs} epochs, seeds {seeds} (mean ± std):",
            results,
            [
                ("test accuracy %", "accuracy", 100, 2),
                ("macro F1", "macro_f1", 1, 4),
                ("best val acc %", "best_val_acc", 100, 2),
                ("train time (min)", "train_min", 1, 1),
                ("parameters (M)", "params_m", 1, 3),
            ],
        )
    )


def add_arguments(ap) -> None:
    ap.add_argument("--quick", action="store_true", help="1,000 training images, one epoch (smoke run)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadiest on a shared, loaded CPU)"
    )


if __name__ == "__main__":
    if "--quick" in sys.argv and "--epochs" not in sys.argv:
        sys.argv += ["--epochs", "1", "--name", "gfnet_fmnist_quick"]
    grid_main(
        "gfnet_fmnist", __doc__, rows_for, extract, render, default_epochs=6, add_arguments=add_arguments
    )

"""Issue 6: frozen-trunk training with cached features (``model.cache_features``) vs recomputing the
frozen trunk every epoch. Same config, seed and data; reports the time of the first epoch (features
computed) and of the later epochs (served from the cache), and the largest weight difference between
the two runs' final checkpoints.

    .venv/bin/python benchmarks/feature_cache.py [--backbone timm:resnet18] [--image-size 64] [--epochs 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results

from imgcls import api


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="timm:resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    base = [
        "data.name=fashion_mnist",
        f"data.train_subset={args.train_subset}",
        "data.test_subset=1000",
        f"data.image_size={args.image_size}",
        f"model.backbone={args.backbone}",
        "model.head=mlp",
        "model.head_args={hidden: [256], dropout: 0.0}",
        "stages=[{name: head, freeze: [backbone]}]",
        f"train.epochs={args.epochs}",
        "train.batch_size=128",
        "train.progress=false",
        "output.tensorboard=false",
        "output.dir=runs/bench_feature_cache",
    ]
    runs = {}
    for cached in (False, True):
        res = api.train(
            None,
            [
                *base,
                f"model.cache_features={str(cached).lower()}",
                f"output.name={'cached' if cached else 'plain'}",
            ],
            evaluate_after=False,
        )
        runs[cached] = res
    epoch_times = {c: [h["epoch_time_s"] for h in r.history] for c, r in runs.items()}
    weights = [
        torch.load(runs[c].run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        for c in (False, True)
    ]
    max_diff = max(float((weights[0][k].float() - weights[1][k].float()).abs().max()) for k in weights[0])
    later = {c: sum(t[1:]) / max(len(t) - 1, 1) for c, t in epoch_times.items()}
    payload = {
        **vars(args),
        "epoch_times_s": {"plain": epoch_times[False], "cached": epoch_times[True]},
        "later_epoch_speedup": later[False] / later[True],
        "max_weight_difference": max_diff,
    }
    md = [
        f"Frozen {args.backbone} trunk at {args.image_size} px, {args.train_subset} Fashion-MNIST images (10 % validation), "
        f"{args.epochs} epochs, this CPU:",
        "",
        "| trunk features | epoch 1 s | later epochs s (mean) |",
        "|---|---|---|",
        f"| recomputed every epoch | {epoch_times[False][0]:.1f} | {later[False]:.1f} |",
        f"| cached (`model.cache_features: true`) | {epoch_times[True][0]:.1f} | {later[True]:.1f} |",
        "",
        f"Later epochs {later[False] / later[True]:.1f}× faster; final weights differ by at most {max_diff:.1e}.",
    ]
    write_results("feature_cache", payload, "\n".join(md))


if __name__ == "__main__":
    main()

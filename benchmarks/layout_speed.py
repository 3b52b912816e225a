"""AdaptiveCNN layouts on 2 CPU cores (issue 11, P3): what capacity costs per training step, so a 30-minute
recipe can trade epochs for width knowingly. Each variant is best30min.yaml's model with other residual
blocks (``model.backbone_args.blocks``), batch size or input size (the smaller sizes progressive resizing,
``augment.resize_min``, trains on first); the trainer's step on one ready batch in bf16 + channels_last,
variants timed in interleaved rounds (medians), so machine drift hits all alike.

    .venv/bin/python benchmarks/layout_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_trainer import build_trainer, fixed_batch_step
from common import FMNIST_RECIPES, time_steps, write_results

from imgcls.models.classifier import count_parameters

#: name → (overrides of best30min.yaml, batch size[, input size in px; default 28])
VARIANTS = {
    "seed layout": ([], 256),
    "seed layout, batch 512": ([], 512),
    "seed layout at 24 px": ([], 256, 24),
    "seed layout at 20 px": ([], 256, 20),
    "3 blocks per stage": (
        ["model.backbone_args.blocks=[[32,1],[32,1],[32,1],[64,2],[64,1],[64,1],[128,2],[128,1],[128,1]]"],
        256,
    ),
    "last stage 256": (["model.backbone_args.blocks=[[32,1],[32,1],[64,2],[64,1],[256,2],[256,1]]"], 256),
    "last two stages 128/256": (
        ["model.backbone_args.blocks=[[32,1],[32,1],[128,2],[128,1],[256,2],[256,1]]"],
        256,
    ),
    "no stem pool, 0.5x width": (
        ["model.backbone_args.stem_pool=false", "model.backbone_args.width_mult=0.5"],
        256,
    ),
}
EPOCH_IMAGES = 57_000  # best30min's training split (95 % of 60,000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()
    steps, params = {}, {}
    for name, (overrides, batch, *size) in VARIANTS.items():
        fixed = ["train.precision=bf16", "train.channels_last=true", "data.train_subset=4096", *overrides]
        _, data, trainer = build_trainer(fixed, batch, FMNIST_RECIPES["best30min"])
        trainer._setup_stage()
        trainer._set_train_mode()
        steps[name] = (fixed_batch_step(trainer, data, batch, *size), batch)
        params[name] = count_parameters(trainer.model)
    ips: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (step, batch) in steps.items():
            ips[name].append(batch / time_steps(step, warmup=2, steps=args.steps))
    rows = {
        name: {
            "params": params[name],
            "img_per_s": statistics.median(v),
            "rounds": v,
            "overrides": VARIANTS[name][0],
        }
        for name, v in ips.items()
    }
    base = rows["seed layout"]["img_per_s"]
    lines = [
        "best30min.yaml's AdaptiveCNN with other blocks or input sizes: the trainer's step on one ready batch, "
        "bf16 + channels_last, "
        f"medians of {args.rounds} interleaved rounds:",
        "",
        "| variant | parameters | img/s | s per 57,000 images | step time vs the seed layout |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['params']:,} | {r['img_per_s']:,.0f} | {EPOCH_IMAGES / r['img_per_s']:.1f} | "
            f"{base / r['img_per_s']:.2f}× |"
        )
    write_results("layout_speed", {"rounds": args.rounds, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()

"""Training throughput of the real data path vs the model's raw compute ceiling (issue 2 target ≥ 0.95).

Ceiling: forward + backward + optimiser step on a random tensor already on the device.
Pipeline: the trainer's own ``train_epoch`` on Fashion-MNIST (in-memory uint8 loader, batched
augmentation, preprocessing, loss terms, metrics), same model, batch, precision and layout.

    .venv/bin/python benchmarks/throughput.py [--backbone timm:resnet18] [--batch 256] [--steps 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_trainer import build_trainer, fixed_batch_step
from common import time_steps, write_results

from imgcls.engine.trainer import Trainer


def measure(overrides: list[str], batch: int, steps: int) -> dict:
    """Ceiling and pipeline img/s for the config given by ``overrides``."""
    overrides = [
        *overrides,
        f"train.batch_size={batch}",
        "train.progress=false",
        "output.tensorboard=false",
        f"data.train_subset={batch * (steps + 3)}",
        "data.val_fraction=0",
    ]
    _, data, trainer = build_trainer(overrides, batch)
    device = trainer.device
    trainer._setup_stage()
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)

    # Ceiling: the same trainer step on a pre-made normalised batch (no loading, no augmentation).
    trainer._set_train_mode()
    ceiling_step = fixed_batch_step(trainer, data, batch)

    ceiling = batch / time_steps(ceiling_step, warmup=3, steps=steps, sync=sync)
    # Pipeline: a real training epoch, after one warm-up epoch (allocator, oneDNN kernels).
    trainer.train_epoch()
    sync()
    start = time.perf_counter()
    metrics = trainer.train_epoch()
    sync()
    pipeline = metrics["train_images"] / (time.perf_counter() - start)
    data_s = data_path_seconds(trainer, sync)
    return {
        "input": [data.channels, data.image_size, data.image_size],
        "precision": str(trainer.amp_dtype or "fp32"),
        "channels_last": trainer.prep.channels_last,
        "ceiling_img_per_s": ceiling,
        "pipeline_img_per_s": pipeline,
        "ratio": pipeline / ceiling,
        "data_augment_s_per_batch": data_s,
        "step_s_per_batch": batch / pipeline,
        "data_augment_fraction": data_s * pipeline / batch,
    }


def data_path_seconds(trainer: Trainer, sync) -> float:
    """Mean seconds per batch of the trainer's data path alone: loader → device → augmentation →
    normalisation, exactly as in ``Trainer.train_epoch`` but without the model."""
    from imgcls.data.loader import epoch_generator

    loader = trainer.train_loader
    loader.set_epoch(0)
    gen = epoch_generator(trainer.cfg.train.seed, 0, salt=2)
    n = 0
    sync()
    start = time.perf_counter()
    for batch in loader:
        batch = batch.to(trainer.device)
        batch = batch.with_images(trainer.prep.to_unit(batch.images))
        if trainer.augment is not None:
            batch = trainer.augment(batch, gen, 0)
        batch = batch.with_images(trainer.prep.normalize(batch.images))
        n += 1
    sync()
    return (time.perf_counter() - start) / max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="timm:resnet18")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"])
    ap.add_argument("--augment", default="crop_padding=2,hflip=0.5")
    ap.add_argument("--name", default="throughput")
    args = ap.parse_args()
    overrides = [f"model.backbone={args.backbone}", "model.head=linear", f"train.precision={args.precision}"]
    if args.channels_last != "auto":
        overrides.append(f"train.channels_last={args.channels_last}")
    overrides += [f"augment.{kv}" for kv in args.augment.split(",") if kv]
    r = measure(overrides, args.batch, args.steps)
    payload = {
        "backbone": args.backbone,
        "batch_size": args.batch,
        "augment": args.augment,
        **r,
        "target_ratio": 0.95,
    }
    c, h, w = r["input"]
    md = (
        "| backbone | input | batch | precision | channels_last | ceiling img/s | pipeline img/s | ratio |\n"
        "|---|---|---|---|---|---|---|---|\n"
        f"| {args.backbone} | {c}×{h}×{w} | {args.batch} | {r['precision']} | {r['channels_last']} | "
        f"{r['ceiling_img_per_s']:,.0f} | {r['pipeline_img_per_s']:,.0f} | {r['ratio']:.3f} |"
    )
    write_results(args.name, payload, md)


if __name__ == "__main__":
    main()

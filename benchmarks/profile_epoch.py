"""Where one training epoch's time goes (issue 11: engine overhead vs the compute ceiling).

Runs the trainer's own epoch on timm ``resnet18`` (1×28×28 Fashion-MNIST, batch 256, the execution that
``train.precision/channels_last: auto`` picks) in two ways, one after another in one process:

1. **phases**: the epoch loop unrolled with a clock around each phase (next batch from the loader, unit
   conversion + augmentation + normalisation, forward + loss + backward, optimiser + scheduler, metric
   bookkeeping), so the non-compute share of the epoch is explicit;
2. **torch.profiler**: the trainer's ``train_epoch`` under the CPU profiler; the top operators by self CPU
   time go to the Markdown summary.

Plus the compute ceiling: the same forward/backward/step on one fixed batch, alternated with whole
epochs so that the machine's drift hits both alike.

    .venv/bin/python benchmarks/profile_epoch.py            # → benchmarks/results/profile_epoch.{json,md}
    .venv/bin/python benchmarks/profile_epoch.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_trainer import fixed_batch_step
from common import time_steps, write_results
from peers import make_trainer

from imgcls.data.loader import epoch_generator


def phases(trainer, epochs: int) -> dict[str, float]:
    """Seconds per phase summed over ``epochs`` epochs of the trainer's loop, unrolled."""
    clock = {"loader": 0.0, "augment": 0.0, "forward_backward": 0.0, "optimizer": 0.0, "metrics": 0.0}
    images = 0
    total_start = time.perf_counter()
    for epoch in range(epochs):
        trainer._set_train_mode()
        gen = epoch_generator(0, epoch, salt=2)
        trainer.train_loader.set_epoch(epoch)
        correct = torch.zeros((), dtype=torch.long)
        it = iter(trainer.train_loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            t1 = time.perf_counter()
            batch = batch.with_images(trainer.prep.to_unit(batch.images))
            if trainer.augment is not None:
                batch = trainer.augment(batch, gen, epoch)
            batch = replace(batch, images=trainer.prep.normalize(batch.images), unit_images=batch.images)
            t2 = time.perf_counter()
            _, _, output = trainer._forward_backward(batch, sync=True)
            t3 = time.perf_counter()
            trainer._optimizer_step()
            t4 = time.perf_counter()
            correct += (trainer.model.head.predict(output).argmax(-1) == batch.targets).sum()
            images += len(batch)
            t5 = time.perf_counter()
            for key, dt in zip(clock, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                clock[key] += dt
    total = time.perf_counter() - total_start
    return {"total_s": total, "images": images, **{f"{k}_s": v for k, v in clock.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="timm:resnet18")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30, help="batches per epoch")
    ap.add_argument("--repeats", type=int, default=3, help="ceiling/epoch pairs (median ratio reported)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.steps, args.repeats = 32, 3, 1
    overrides = [f"model.backbone={args.backbone}", "model.head=linear"]
    _, data, trainer = make_trainer(overrides, args.batch, args.batch * args.steps)
    trainer._tune_execution()
    trainer._setup_stage()
    ex = trainer.execution
    trainer.train_epoch()  # warm-up (allocator, oneDNN kernels)

    step = fixed_batch_step(trainer, data, args.batch)
    # alternate ceiling and epoch (this machine drifts by 10-20 % between minutes): median of the pairs
    pairs = []
    for _ in range(args.repeats):
        trainer._set_train_mode()
        ceiling = args.batch / time_steps(step, warmup=1, steps=args.steps)
        start = time.perf_counter()
        epoch = trainer.train_epoch()
        pairs.append((ceiling, epoch["train_images"] / (time.perf_counter() - start)))
    pairs.sort(key=lambda p: p[1] / p[0])
    ceiling, epoch_ips = pairs[len(pairs) // 2]
    split = phases(trainer, 1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_epoch()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    total_self = sum(e.self_cpu_time_total for e in prof.key_averages())
    ops = [
        {"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total_self}
        for e in top
    ]
    compute = split["forward_backward_s"] + split["optimizer_s"]
    result = {
        "backbone": args.backbone,
        "batch": args.batch,
        "steps": args.steps,
        "execution": {"precision": ex.precision, "channels_last": ex.channels_last},
        "ceiling_img_per_s": ceiling,
        "epoch_img_per_s": epoch_ips,
        "ratio_to_ceiling": epoch_ips / ceiling,
        "pairs": [{"ceiling_img_per_s": c, "epoch_img_per_s": e} for c, e in pairs],
        "phases": split,
        "compute_share": compute / split["total_s"],
        "top_ops": ops,
    }
    lines = [
        f"One training epoch of `{args.backbone}` (batch {args.batch}, {args.steps} batches, "
        f"{ex.precision}{' + channels_last' if ex.channels_last else ''}), phases timed in one process:",
        "",
        "| phase | s | share |",
        "|---|---|---|",
    ]
    for k in ("loader", "augment", "forward_backward", "optimizer", "metrics"):
        lines.append(f"| {k} | {split[k + '_s']:.3f} | {split[k + '_s'] / split['total_s']:.1%} |")
    lines += [
        f"| total | {split['total_s']:.3f} | |",
        "",
        f"Compute ceiling (same step on one fixed batch): {ceiling:,.0f} img/s; the trainer's epoch: "
        f"{epoch_ips:,.0f} img/s = **{epoch_ips / ceiling:.2f}×** the ceiling (median of {len(pairs)} "
        "alternating ceiling/epoch pairs; all ratios: " + ", ".join(f"{e / c:.2f}" for c, e in pairs) + ").",
        "",
        "Top operators by self CPU time (torch.profiler over one trainer epoch):",
        "",
        "| operator | self CPU ms | share |",
        "|---|---|---|",
        *[f"| `{o['op']}` | {o['self_cpu_ms']:.0f} | {o['share']:.1%} |" for o in ops],
    ]
    print(table)
    write_results("profile_epoch_quick" if args.quick else "profile_epoch", result, "\n".join(lines))


if __name__ == "__main__":
    main()

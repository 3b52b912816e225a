"""Issue 4 target: the FCH head's share of the training step at B = 256 with the quickstart backbone
(AdaptiveCNN, mnist layout) must be ≤ 10 %.

Whole-step timings of two models differ by a few percent from run to run on a shared CPU, more than the
head costs, so the head is timed on its own: forward + loss terms + backward of the head on a fixed
(256, 128) batch of backbone features, under the training autocast, median of ``--rounds`` rounds of
``--steps`` steps; the same for the quickstart ``mlp`` head. The full quickstart training step (forward +
backward + optimiser step on a pre-made batch) is timed the same way, and

    FCH share = (t_head(FCH) - t_head(mlp)) / (t_step(quickstart) - t_head(mlp) + t_head(FCH)).

FCH settings are those of configs/fashion_mnist/fch_*.yaml (p = 1 and the seed's p per graph).

    .venv/bin/python benchmarks/fch_overhead.py [--steps 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import time_steps, write_results
from cpu_precision import quickstart_overrides

from imgcls.config import load_config
from imgcls.engine.optim import build_optimizer
from imgcls.models.classifier import build_head, build_model
from imgcls.runtime.batch import Batch
from imgcls.runtime.precision import (
    autocast,
    channels_last_enabled,
    configure_backends,
    resolve_device,
    resolve_precision,
)

CONFIGS = Path(__file__).parent.parent / "configs" / "fashion_mnist"
GRAPHS = (("rbf", 1), ("knn", 4), ("att", 5), ("cl", 1))


def median_time(step, steps: int, rounds: int) -> float:
    return statistics.median(time_steps(step, warmup=2 if r else 5, steps=steps) for r in range(rounds))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    cfg = load_config(None, quickstart_overrides())
    device = resolve_device(cfg.train.device)
    configure_backends(cfg.train, device)
    amp = resolve_precision(cfg.train, device)
    ctx = lambda: autocast(device, amp)  # noqa: E731
    torch.manual_seed(0)

    model = build_model(cfg.model, 10, 1).train()
    if channels_last_enabled(cfg.train, device):
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim, device)
    images = torch.randn(args.batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (args.batch,))
    batch = Batch(images=images, targets=targets)

    def full_step() -> None:
        with ctx():
            out = model(images, targets)
            loss = sum(v.float() for v in model.head.loss(out, batch).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    t_step = median_time(full_step, args.steps, args.rounds)
    features = torch.randn(args.batch, model.backbone.num_features, requires_grad=True)

    def head_time(name: str, head_args: dict) -> float:
        head = build_head(name, head_args, model.backbone.num_features, 10, 0.0).train()

        def step() -> None:
            with ctx():
                out = head(features, targets)
                loss = sum(v.float() for v in head.loss(out, batch).values())
            loss.backward()
            head.zero_grad(set_to_none=True)
            features.grad = None

        return median_time(step, args.steps, args.rounds)

    t_mlp = head_time(cfg.model.head, cfg.model.head_args)
    rows = [
        {
            "head": f"{cfg.model.head} (quickstart)",
            "head_ms": 1e3 * t_mlp,
            "step_ms": 1e3 * t_step,
            "share": 0.0,
        }
    ]
    for graph, seed_p in GRAPHS:
        base_args = load_config(CONFIGS / f"fch_{graph}.yaml").model.head_args
        for order in sorted({1, seed_p}):
            t = head_time("fch", {**base_args, "order": order})
            step = t_step - t_mlp + t
            rows.append(
                {
                    "head": f"fch {graph} p={order}",
                    "head_ms": 1e3 * t,
                    "step_ms": 1e3 * step,
                    "share": (t - t_mlp) / step,
                }
            )
            print(rows[-1], flush=True)
    md = [
        f"FCH head cost at batch {args.batch}, quickstart backbone (AdaptiveCNN, 128-d features), {amp or 'fp32'} autocast, "
        f"this CPU, median of {args.rounds} × {args.steps} steps:",
        "",
        "| head | head fwd + loss + bwd ms | training step ms | FCH share of the step |",
        "|---|---|---|---|",
    ]
    md += [f"| {r['head']} | {r['head_ms']:.2f} | {r['step_ms']:.1f} | {r['share']:.1%} |" for r in rows]
    worst = max(r["share"] for r in rows[1:])
    md += ["", f"Target: FCH share ≤ 10 % — worst {worst:.1%} ({'met' if worst <= 0.10 else 'not met'})."]
    write_results("fch_overhead", {"batch_size": args.batch, "rows": rows, "target": 0.10}, "\n".join(md))


if __name__ == "__main__":
    main()

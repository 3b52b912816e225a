"""How close the trainer's batch-memory estimate comes to a training step's real peak (``runtime/memory.py``,
``PEAK_OVER_SAVED``): for each recipe and precision, in a fresh process, the bytes autograd saves for backward,
scaled from 2 and 4 images to the batch (what ``Trainer._check_batch_memory`` measures), against the rise of
the process's peak resident memory over one forward + backward step on that batch.

    .venv/bin/python benchmarks/memory_estimate.py [--batch 4096]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import FMNIST_RECIPES, write_results

CASES = [("quickstart", "fp32"), ("quickstart", "bf16"), ("airbench", "fp32"), ("airbench", "bf16")]


def measure(recipe: str, precision: str, batch: int) -> dict:
    """In this process: the estimate and the peak rise of one training step (run in a fresh process each)."""
    import torch

    from imgcls.config import load_config
    from imgcls.models.classifier import build_model
    from imgcls.runtime.memory import activation_bytes_per_image
    from imgcls.runtime.precision import autocast

    torch.manual_seed(0)
    cfg = load_config(FMNIST_RECIPES[recipe])
    model = build_model(cfg.model, num_classes=10, in_chans=1).train()
    images, targets = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    dtype = torch.bfloat16 if precision == "bf16" else None
    device = torch.device("cpu")
    with autocast(device, dtype):
        per_image = activation_bytes_per_image(lambda n: model(images[:n], targets[:n]), 2)
    resident = Path("/proc/self/statm").read_text().split()[1]
    before = max(
        int(resident) * resource.getpagesize(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    with autocast(device, dtype):
        loss = torch.nn.functional.cross_entropy(model(images, targets).logits.float(), targets)
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"estimate_bytes": per_image * batch, "peak_rise_bytes": peak - before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--child", nargs=2, metavar=("RECIPE", "PRECISION"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.batch)))
        return
    rows = []
    for recipe, precision in CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--batch", str(args.batch), "--child", recipe, precision],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        row = {"recipe": recipe, "precision": precision, **json.loads(out.strip().splitlines()[-1])}
        row["peak_over_estimate"] = row["peak_rise_bytes"] / row["estimate_bytes"]
        rows.append(row)
    lines = [
        f"Batch-memory estimate against one training step's peak, {args.batch} images of 28 × 28 × 1, a fresh process "
        "per row (`python benchmarks/memory_estimate.py`):",
        "",
        "| recipe | precision | saved for backward (estimate) MiB | peak resident rise MiB | peak / estimate |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['precision']} | {r['estimate_bytes'] / 2**20:.0f} | "
            f"{r['peak_rise_bytes'] / 2**20:.0f} | {r['peak_over_estimate']:.2f} |"
        )
    ratios = [r["peak_over_estimate"] for r in rows]
    lines += [
        "",
        f"Peak over estimate: {min(ratios):.2f}–{max(ratios):.2f} (`PEAK_OVER_SAVED` in `runtime/memory.py`).",
    ]
    write_results("memory_estimate", {"batch": args.batch, "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()

"""Issue 3 target: data loading + augmentation must not become the bottleneck — at most 10 % of the
training step time for the quickstart model (AdaptiveCNN + mlp head, batch 256) with RandAugment on.

Two measurements per augmentation setting, same model, batch, precision and layout:
``data_augment_fraction`` = (seconds per batch of the data path alone: loader → device → augment →
normalise) / (seconds per batch of a real training epoch), and ``1 - ratio`` = the share of a real
step not explained by the model's own compute (pipeline vs pre-made-batch ceiling).

    .venv/bin/python benchmarks/augment_overhead.py [--steps 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results
from cpu_precision import quickstart_overrides
from throughput import measure

SETTINGS = {
    "quickstart (crop + flip)": [],
    "+ RandAugment (2, 9)": ["augment.randaugment=[2, 9]"],
    "+ RandAugment (2, 9) + erasing 0.5": ["augment.randaugment=[2, 9]", "augment.erasing=0.5"],
    "+ TrivialAugment + MixUp/CutMix": [
        "augment.trivialaugment=true",
        "augment.mixup_alpha=0.2",
        "augment.cutmix_alpha=1.0",
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    rows = []
    for name, extra in SETTINGS.items():
        r = measure([*quickstart_overrides(), *extra], args.batch, args.steps)
        rows.append({"setting": name, "overrides": extra, **r})
        print({k: v for k, v in rows[-1].items() if k != "overrides"}, flush=True)
    md = [
        "| augmentation (quickstart model, batch 256) | step ms | data + augment ms | data + augment share | pipeline / ceiling |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {r['setting']} | {r['step_s_per_batch'] * 1e3:.1f} | {r['data_augment_s_per_batch'] * 1e3:.1f} | "
        f"{r['data_augment_fraction']:.1%} | {r['ratio']:.3f} |"
        for r in rows
    ]
    md += [
        "",
        "Target: data + augmentation ≤ 10 % of the step with RandAugment on "
        f"({'met' if all(r['data_augment_fraction'] <= 0.10 for r in rows[1:3]) else 'not met'}).",
    ]
    write_results(
        "augment_overhead", {"batch_size": args.batch, "rows": rows, "target_fraction": 0.10}, "\n".join(md)
    )


if __name__ == "__main__":
    main()

"""CPU precision and memory layout for the quickstart model (issue 2): fp32 vs bf16 autocast
(this CPU has AVX-512 BF16), contiguous vs channels_last. Training img/s of the real pipeline
for each combination; with ``--accuracy``, also Fashion-MNIST test accuracy of the quickstart
recipe trained with the fastest bf16 combination vs fp32 (same seed), to state the accuracy cost.

    .venv/bin/python benchmarks/cpu_precision.py [--accuracy]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results
from throughput import measure

from imgcls import api
from imgcls.config import load_config

QUICKSTART = Path(__file__).parent.parent / "configs" / "quickstart.yaml"


def quickstart_overrides() -> list[str]:
    cfg = load_config(QUICKSTART)
    return [
        f"model.backbone={cfg.model.backbone}",
        f"model.backbone_args={cfg.model.backbone_args}".replace("'", ""),
        f"model.head={cfg.model.head}",
        f"model.head_args={cfg.model.head_args}".replace("'", ""),
        f"augment.crop_padding={cfg.augment.crop_padding}",
        f"augment.hflip={cfg.augment.hflip}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--accuracy",
        action="store_true",
        help="also train the quickstart recipe in fp32 and in the best bf16 setting",
    )
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    base = quickstart_overrides()
    rows = []
    for precision in ("fp32", "bf16"):
        for cl in ("false", "true"):
            r = measure([*base, f"train.precision={precision}", f"train.channels_last={cl}"], 256, args.steps)
            rows.append({"precision": precision, "channels_last": cl == "true", **r})
            print(rows[-1], flush=True)
    fp32 = next(r for r in rows if r["precision"] == "fp32" and not r["channels_last"])
    for r in rows:
        r["speedup_vs_fp32_contiguous"] = r["pipeline_img_per_s"] / fp32["pipeline_img_per_s"]
    md = ["| precision | channels_last | pipeline img/s | speed-up vs fp32 contiguous |", "|---|---|---|---|"]
    md += [
        f"| {r['precision']} | {r['channels_last']} | {r['pipeline_img_per_s']:,.0f} | {r['speedup_vs_fp32_contiguous']:.2f}× |"
        for r in rows
    ]
    accuracy = {}
    if args.accuracy:
        best_fp32 = max((r for r in rows if r["precision"] == "fp32"), key=lambda r: r["pipeline_img_per_s"])
        best_bf16 = max((r for r in rows if r["precision"] == "bf16"), key=lambda r: r["pipeline_img_per_s"])
        md += ["", "| setting | test accuracy (quickstart recipe) | train time s |", "|---|---|---|"]
        for r in (best_fp32, best_bf16):
            res = api.train(
                QUICKSTART,
                [
                    f"train.precision={r['precision']}",
                    f"train.channels_last={str(r['channels_last']).lower()}",
                    "train.progress=false",
                    "eval.plots=false",
                    "output.dir=/tmp/imgcls-bench",
                ],
            )
            key = f"{r['precision']}_channels_last={r['channels_last']}"
            accuracy[key] = {
                "test_accuracy": res.metrics["accuracy"],
                "train_time_s": res.metrics["train_time_s"],
            }
            md.append(f"| {key} | {res.metrics['accuracy']:.4f} | {res.metrics['train_time_s']:.0f} |")
    write_results("cpu_precision", {"model": "quickstart", "rows": rows, "accuracy": accuracy}, "\n".join(md))


if __name__ == "__main__":
    main()

"""Validation accuracy of an ensemble of finished runs (issue 11, P3 screens): each run's weights and the
average of their class probabilities, on the validation split of the first run's config (the runs must share
it: same data and ``data.split_seed``). The test set is not read; screens choose on validation only.

    .venv/bin/python benchmarks/ensemble_val.py RUN_DIR RUN_DIR [...] [--checkpoint ema] [--tta 2]
"""

from __future__ import annotations

import argparse
import json

import torch

from imgcls.api import load
from imgcls.config import load_config
from imgcls.data.prepare import prepare_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--checkpoint", default="ema", help="which weights of each run (best, last, ema, swa)")
    ap.add_argument("--tta", type=int, default=2, help="views per image (2: identity + flip)")
    args = ap.parse_args()
    data = prepare_data(load_config(f"{args.runs[0]}/config.yaml", []))
    if data.val is None or len(data.val) == 0:
        raise SystemExit(f"'{args.runs[0]}' has no validation split (data.val_fraction is 0)")
    images, labels = data.val.images, data.val.labels
    probs, result = [], {"validation_images": len(labels), "runs": {}}
    for run in args.runs:
        p = load(run, args.checkpoint).predict_proba(images, tta=args.tta)
        probs.append(p)
        result["runs"][run] = float((p.argmax(1) == labels).float().mean())
    result["ensemble"] = float((torch.stack(probs).mean(0).argmax(1) == labels).float().mean())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

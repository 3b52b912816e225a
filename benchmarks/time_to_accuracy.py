"""Time to accuracy on Fashion-MNIST, airbench-style (issue 11): each recipe is fixed in advance (tuned on
the validation split only), run with several seeds, and reported as training wall-clock seconds and the
mean ± std of each run's **final** test accuracy (the test set is evaluated once per run).

Training seconds are ``train_summary.json``'s ``train_time_s`` (the trainer's fit: every epoch's training
and validation, precision autotuning included); data loading (decoding Fashion-MNIST into memory) and the
final test evaluation are timed and reported separately. Rows: our fastest recipe for ≥ 92 %
(``configs/fashion_mnist/fast92.yaml``), our best recipe within 30 minutes (``airbench.yaml``; before it the
AdaptiveCNN's ``best30min.yaml``), the quickstart, the long ``strong.yaml`` recipe, and the peer loop (``peer_loop.py``: DataLoader + per-sample
torchvision transforms, fp32) on the quickstart's model and recipe at the same epochs.

    .venv/bin/python benchmarks/time_to_accuracy.py --rows fast92,quickstart,peer --seeds 0,1,2,3,4
    .venv/bin/python benchmarks/time_to_accuracy.py --rows airbench --seeds 0,1,2 --name time_to_accuracy_airbench
    .venv/bin/python benchmarks/time_to_accuracy.py --rows best30min --seeds 0,1,2 --name time_to_accuracy_best30min
    .venv/bin/python benchmarks/time_to_accuracy.py --quick        # CI-sized smoke run, no accuracy claim
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import FMNIST_RECIPES as RECIPES
from common import mean_std, quiet_run_overrides, write_results


def run_imgcls(config: Path, seed: int, out: Path, extra: list[str]) -> dict:
    from imgcls import api
    from imgcls.config import load_config
    from imgcls.engine.sweep import objective_value

    start = time.perf_counter()
    res = api.train(
        config,
        [f"train.seed={seed}", *quiet_run_overrides(out), *extra],
        evaluate_after=False,
    )
    total_train_call = time.perf_counter() - start
    summary = json.loads((res.run_dir / "train_summary.json").read_text())
    start = time.perf_counter()
    metrics = api.evaluate(res.run_dir)
    eval_s = time.perf_counter() - start
    return {
        "seed": seed,
        "train_s": summary["train_time_s"],
        "setup_s": total_train_call - summary["train_time_s"],
        "eval_s": eval_s,
        "test_acc": metrics["accuracy"],
        # validation accuracy of the weights that are tested (best epoch, last, or the EMA/SWA copy), the
        # score a recipe is chosen by, since the test set is read once
        "val_acc": objective_value(res.history, "val_acc", load_config(config, extra).eval.checkpoint),
        "epochs": summary["epochs"],
    }


def run_peer(seed: int, extra: list[str], quick: bool) -> dict:
    """The quickstart's model and recipe (epochs, lr, wd, label smoothing, warm-up) through the plain loop."""
    from peer_loop import accuracy, loader, train_plain

    from imgcls.config import load_config
    from imgcls.data.prepare import prepare_data
    from imgcls.models.classifier import build_model

    cfg = load_config(RECIPES["quickstart"], [f"train.seed={seed}", *extra])
    start = time.perf_counter()
    data = prepare_data(cfg)
    setup_s = time.perf_counter() - start
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(data.class_names), data.channels, cfg.train.label_smoothing)
    train = loader(
        data.train.images, data.train.labels, data.mean, data.std, cfg.train.batch_size, True, seed=seed
    )
    test = loader(data.test.images, data.test.labels, data.mean, data.std, 1024, False)
    r = train_plain(
        model,
        train,
        cfg.train.epochs,
        cfg.optim.lr,
        cfg.optim.weight_decay,
        cfg.train.label_smoothing,
        cfg.schedule.warmup_epochs,
    )
    start = time.perf_counter()
    acc = accuracy(model, test)
    return {
        "seed": seed,
        "train_s": r["seconds"],
        "setup_s": setup_s,
        "eval_s": time.perf_counter() - start,
        "test_acc": acc,
        "epochs": cfg.train.epochs,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--rows", default="fast92,quickstart,peer", help=f"comma-separated: {', '.join(RECIPES)}, peer"
    )
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch on 2,000 images")
    ap.add_argument("--name", default="time_to_accuracy")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for the imgcls rows"
    )
    args = ap.parse_args()
    unknown = sorted(set(args.rows.split(",")) - {*RECIPES, "peer"})
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(RECIPES)}, peer")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    extra = (
        ["train.epochs=1", "data.train_subset=2000", "data.test_subset=500", "eval.throughput_s=0"]
        if args.quick
        else []
    )
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            runs = []
            for seed in seeds:
                if row == "peer":
                    r = run_peer(seed, extra, args.quick)
                else:
                    r = run_imgcls(RECIPES[row], seed, Path(tmp), [*extra, *args.set])
                print(f"{row} seed {seed}: {r['test_acc']:.4f} in {r['train_s']:.1f} s", flush=True)
                runs.append(r)
                rows[row] = summarise(runs)
                write_table(rows, args)  # after every run: a stopped benchmark keeps the runs it finished


def summarise(runs: list[dict]) -> dict:
    acc_m, acc_s = mean_std([r["test_acc"] for r in runs])
    t_m, t_s = mean_std([r["train_s"] for r in runs])
    return {
        "runs": runs,
        "test_acc_mean": acc_m,
        "test_acc_std": acc_s,
        "train_s_mean": t_m,
        "train_s_std": t_s,
        "eval_s_mean": mean_std([r["eval_s"] for r in runs])[0],
        "setup_s_mean": mean_std([r["setup_s"] for r in runs])[0],
    }


def write_table(rows: dict, args: argparse.Namespace) -> None:
    lines = [
        "| recipe | seeds | test accuracy % (final, mean ± std) | training s (mean ± std) | data loading s | "
        "test evaluation s |",
        "|---|---|---|---|---|---|",
    ]
    for row, r in rows.items():
        lines.append(
            f"| {row} | {len(r['runs'])} | {100 * r['test_acc_mean']:.2f} ± {100 * r['test_acc_std']:.2f} | "
            f"{r['train_s_mean']:.1f} ± {r['train_s_std']:.1f} | {r['setup_s_mean']:.1f} | "
            f"{r['eval_s_mean']:.1f} |"
        )
    lines += [
        "",
        "| recipe | seed | test accuracy % | validation accuracy % (tested weights) | training s | epochs "
        "| s per epoch (the machine's pace: budgeted recipes plan their epochs from it) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row, r in rows.items():
        for run in r["runs"]:
            val = "–" if run.get("val_acc") is None else f"{100 * run['val_acc']:.2f}"
            lines.append(
                f"| {row} | {run['seed']} | {100 * run['test_acc']:.2f} | {val} | {run['train_s']:.1f} | "
                f"{run['epochs']} | {run['train_s'] / run['epochs']:.1f} |"
            )
    if args.quick:
        lines.append("\n(--quick smoke run: 1 epoch on 2,000 images; no accuracy claim)")
    if args.set:
        lines.append(f"\nOverrides on the imgcls rows: `{' '.join(args.set)}`")
    write_results(
        args.name + ("_quick" if args.quick else ""),
        {"quick": args.quick, "overrides": args.set, "rows": rows},
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()

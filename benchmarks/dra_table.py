"""Issue 13 (seed 003, DRA-Net): does the attractor head help, and does the seed's regulariser do anything?

One frozen stage-1 backbone for every row: the AdaptiveCNN (MNIST layout) is trained once with a linear
head (stage 1 of configs/fashion_mnist/dra.yaml, through the public API), its features of the train,
validation and test splits are computed once, and every head is then trained on those cached features with
the trainer's optimiser and schedule (AdamW lr 1e-3, wd 0.01 without decay on biases, cosine, batch 128,
the same epochs) — stage 2 of the recipe, minus the per-run backbone passes. Rows: linear head, MLP head
(hidden 256 = the DRA classifier alone), DRA (squared aggregation, λ = 1e-3 as in the seed) with
regulariser none / learned / diversity, and diversity with class-mean initialisation. The last epoch is evaluated (no selection on anything).

Columns: test accuracy, macro F1, compactness and separation of the backbone features (before the head,
the same for every row) and of the head embeddings (after: DRA's refined ``f + g``, the MLP's hidden layer,
the linear head's input), the unweighted regulariser R(A) at the end (does ``learned`` collapse to 0?),
and test ECE before/after temperature scaling fitted on the validation split. Mean ± std over seeds.

    .venv/bin/python benchmarks/dra_table.py [--seeds 0 1 2] [--epochs 8] [--pretrain-epochs 4] [--backbone-run RUN]
    .venv/bin/python benchmarks/dra_table.py --quick      # smoke run: small subsets, 1 seed, 1 epoch each
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_label, fmt, mean_std, write_results

from imgcls import api
from imgcls.config import OptimConfig, ScheduleConfig, load_config
from imgcls.data.prepare import make_loader, prepare_data
from imgcls.engine.attractor_init import class_feature_means
from imgcls.engine.optim import build_optimizer, build_scheduler
from imgcls.evaluation.calibration import fit_head_temperature
from imgcls.evaluation.embedding_metrics import embedding_geometry
from imgcls.evaluation.metrics import classification_metrics
from imgcls.models.classifier import build_head
from imgcls.runs import load_run_checkpoint, model_from_checkpoint
from imgcls.runtime.batch import Batch

CONFIG = Path(__file__).parent.parent / "configs" / "fashion_mnist" / "dra.yaml"
ROWS: dict[str, tuple[str, dict]] = {
    "linear": ("linear", {}),
    "mlp": ("mlp", {"hidden": [256]}),
    "dra_none": ("dra", {"regularizer": "none"}),
    "dra_learned": ("dra", {"regularizer": "learned"}),
    "dra_diversity": ("dra", {"regularizer": "diversity"}),
    "dra_diversity_class_means": ("dra", {"regularizer": "diversity", "attractor_init": "class_means"}),
}


def pretrain_backbone(args) -> Path:
    """Stage 1 of the DRA recipe only (backbone + linear head); returns the run directory."""
    cfg = load_config(
        CONFIG,
        [
            f"output.dir={args.out}",
            "output.name=stage1_backbone",
            "train.progress=false",
            "output.tensorboard=false",
            *args.data,
        ],
    )
    cfg.stages = [cfg.stages[0].model_copy(update={"epochs": args.pretrain_epochs})]
    cfg.model.cache_features = False  # nothing is frozen in stage 1
    return api.train(cfg, evaluate_after=False).run_dir


@torch.no_grad()
def split_features(run_dir: Path, args) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """Backbone features ``(N, D)`` and labels of the train / val / test splits of the stage-1 run."""
    ckpt, which = load_run_checkpoint(run_dir, "last")
    model, cfg, _ = model_from_checkpoint(ckpt, which)
    data = prepare_data(cfg)
    from imgcls.data.preprocess import Preprocess

    prep = Preprocess.from_meta(ckpt["preprocess"], torch.device("cpu"))
    out = {}
    for split in ("train", "val", "test"):
        loader = make_loader(getattr(data, split), data, cfg, train=False, batch_size=512)
        feats, labels = [], []
        for batch in loader:
            feats.append(model.forward_features(prep(batch.images)).float())
            labels.append(batch.targets)
        out[split] = (torch.cat(feats), torch.cat(labels))
    return out, data.class_names


def train_head(
    name: str, head_args: dict, feats: dict, num_classes: int, seed: int, args
) -> dict[str, float]:
    x, y = feats["train"]
    torch.manual_seed(seed)
    head = build_head(name, head_args, x.shape[1], num_classes, 0.0)
    if getattr(head, "wants_class_mean_init", False):  # what the ClassMeanInit callback does at stage start
        sums, counts = class_feature_means(x, y, num_classes)
        head.init_from_class_means((sums / counts.clamp_min(1)[:, None]).float(), counts > 0)
    steps = math.ceil(len(x) / args.batch_size)
    opt = build_optimizer(head, OptimConfig(name="adamw", lr=args.lr, weight_decay=0.01), torch.device("cpu"))
    sched = build_scheduler(opt, ScheduleConfig(name="cosine"), args.epochs, steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(args.epochs):
        head.train()
        sums: dict[str, float] = {}
        for idx in torch.randperm(len(x), generator=gen).split(args.batch_size):
            batch = Batch(x[idx], y[idx])
            terms = head.loss(head(batch.images, batch.targets), batch)
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
    train_s = time.perf_counter() - start
    head.eval()
    with torch.no_grad():
        test_out, val_out = head(feats["test"][0]), head(feats["val"][0])
    probs = head.predict(test_out)
    metrics = classification_metrics(probs, feats["test"][1], [str(c) for c in range(num_classes)], [1])
    fit = fit_head_temperature(head, val_out, feats["val"][1])
    calibrated = head.predict(head.scale_logits(test_out, fit.temperature)).detach()
    ece_after = classification_metrics(
        calibrated, feats["test"][1], [str(c) for c in range(num_classes)], [1]
    )["ece"]
    after = embedding_geometry(test_out.embeddings.detach(), feats["test"][1])
    trained_reg = getattr(getattr(head, "regularizer", None), "kind", "none") != "none"
    reg = float(head.regularizer_value().detach()) if trained_reg else float("nan")
    with torch.no_grad():
        val_acc = float((head.predict(val_out).argmax(1) == feats["val"][1]).float().mean())
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "val_accuracy": val_acc,
        "compactness_after": after["compactness"],
        "separation_after": after["separation"],
        "relative_compactness_after": after["relative_compactness"],
        "reg_value": reg,
        "reg_term_last_epoch": sums.get("attractor_reg", float("nan")) / len(x),
        "ece_before": metrics["ece"],
        "ece_after": ece_after,
        "temperature": fit.temperature,
        "train_s": train_s,
    }


def render(results: dict, before: dict, args, backbone_note: str) -> str:
    cols = [
        ("test acc %", "accuracy", 100, 2),
        ("macro F1 %", "macro_f1", 100, 2),
        ("compactness after", "compactness_after", 1, 3),
        ("relative compactness after", "relative_compactness_after", 1, 3),
        ("separation after", "separation_after", 1, 3),
        ("R(A) at the end", "reg_value", 1, 4),
        ("ECE % (T = 1)", "ece_before", 100, 2),
        ("ECE % (fitted T)", "ece_after", 100, 2),
        ("T", "temperature", 1, 3),
    ]
    md = [
        f"Fashion-MNIST, one frozen AdaptiveCNN backbone ({backbone_note}); heads trained {args.epochs} epochs on its "
        f"cached features, seeds {args.seeds} (mean ± std), last epoch evaluated on the test set "
        f"({results[next(iter(results))]['device']}).",
        "",
        f"Backbone features (before any head, D = {before['dim']}): compactness {before['compactness']:.3f}, "
        f"separation {before['separation']:.3f}, relative compactness {before['relative_compactness']:.3f}.",
        "",
        "| head | " + " | ".join(c[0] for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, r in results.items():
        md.append(f"| {name} | " + " | ".join(fmt(r[k], s, d) for _, k, s, d in cols) + " |")
    md += [
        "",
        "R(A) is the unweighted regulariser of the final attractors (learned: the seed's MLP distance; diversity: "
        "mean pairwise cosine; none: not trained, shown for reference as –). Compactness/separation after = of the "
        "head's embeddings on the test set (DRA: the refined f + g; MLP: its hidden layer; linear: the backbone "
        "features themselves).",
    ]
    if "dra_learned" in results:
        per_seed = [s["reg_value"] for s in results["dra_learned"]["per_seed"]]
        collapsed = sum(v == 0.0 for v in per_seed)
        md.append(
            f"\nThe learned regulariser ended at exactly 0 in {collapsed} of {len(per_seed)} seeds "
            f"(values: {', '.join(f'{v:.3g}' for v in per_seed)})."
        )
    if "mlp" in results:
        ref = results["mlp"]["accuracy"]
        for name in (n for n in results if n.startswith("dra")):
            d = 100 * (results[name]["accuracy"][0] - ref[0])
            md.append(
                f"{name} vs MLP head: {d:+.2f} accuracy points (std {100 * results[name]['accuracy'][1]:.2f} / "
                f"{100 * ref[1]:.2f})."
            )
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8, help="epochs of every head on the cached features")
    ap.add_argument("--pretrain-epochs", type=int, default=4, help="stage-1 epochs of the shared backbone")
    ap.add_argument("--backbone-run", help="reuse this stage-1 run directory instead of training one")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rows", nargs="*", choices=list(ROWS), help="only these rows")
    ap.add_argument("--out", default="runs/bench_dra_table")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3000 training images, 1 seed, 1 epoch")
    ap.add_argument("--name", default="dra_table")
    args = ap.parse_args()
    args.data = []
    if args.quick:
        args.data = ["data.train_subset=3000", "data.test_subset=1000"]
        args.seeds, args.epochs, args.pretrain_epochs, args.name = [0], 1, 1, "dra_table_quick"
    start = time.perf_counter()
    run_dir = Path(args.backbone_run) if args.backbone_run else pretrain_backbone(args)
    pretrain_s = time.perf_counter() - start
    feats, classes = split_features(run_dir, args)
    features_s = time.perf_counter() - start - pretrain_s
    before = embedding_geometry(feats["test"][0], feats["test"][1])
    results: dict[str, dict] = {}
    for row in args.rows or list(ROWS):
        name, head_args = ROWS[row]
        per_seed = []
        for seed in args.seeds:
            values = train_head(name, head_args, feats, len(classes), seed, args)
            per_seed.append(values)
            print(row, seed, {k: round(v, 4) for k, v in values.items()}, flush=True)
        results[row] = {
            "head": name,
            "head_args": head_args,
            "seeds": args.seeds,
            "per_seed": per_seed,
            "device": device_label(),
            **{k: mean_std([s[k] for s in per_seed]) for k in per_seed[0]},
        }
    note = (
        f"stage 1 = {args.pretrain_epochs} epochs with a linear head, run `{run_dir}`"
        if not args.backbone_run
        else f"stage-1 run `{run_dir}`"
    )
    payload = {k: v for k, v in vars(args).items() if k != "name"}
    payload.update(
        results=results,
        features_before=before,
        backbone_run=str(run_dir),
        pretrain_s=pretrain_s,
        features_s=features_s,
        total_s=time.perf_counter() - start,
    )
    write_results(args.name, payload, render(results, before, args, note))


if __name__ == "__main__":
    main()

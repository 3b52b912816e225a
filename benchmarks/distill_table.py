"""Issue 10: does knowledge distillation help a small DeiT-hybrid student on Fashion-MNIST?

Rows (configs/fashion_mnist/, same data subset, epochs, batch and schedule for every row): the CNN teacher
(distill_teacher.yaml), the DeiT student alone (deit_student.yaml), + hard KD (deit_hard_kd.yaml), + soft KD
(deit_soft_kd.yaml), + CST token distillation from the teacher's feature maps (deit_cst.yaml). Per seed the
teacher is trained first and every student row of that seed distils from it. Columns: test accuracy, macro F1,
CLS-only / DIST-only / averaged accuracy of the two-token student, teacher–student agreement on the test set
(the same measurement for every row, also for students trained without the teacher), training time. Mean ± std
over seeds. Then the step-time overhead at batch 256 (teacher forward included) of each objective against the
student alone, measured side by side in one process.

    .venv/bin/python benchmarks/distill_table.py [--seeds 0 1 2] [--train-subset 5000] [--epochs 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, device_label, fmt, mean_std, time_steps, write_results

CONFIGS = Path(__file__).parent.parent / "configs" / "fashion_mnist"
ROWS = [
    ("teacher (AdaptiveCNN ½)", "distill_teacher"),
    ("student alone", "deit_student"),
    ("+ hard KD", "deit_hard_kd"),
    ("+ soft KD", "deit_soft_kd"),
    ("+ CST tokens", "deit_cst"),
]


@torch.no_grad()
def test_predictions(run_dir: Path, data) -> torch.Tensor:
    """Arg-max class of every test image (data order) for the run's evaluated checkpoint."""
    from imgcls.data.prepare import make_loader
    from imgcls.data.preprocess import Preprocess
    from imgcls.runs import load_run_checkpoint, model_from_checkpoint

    ckpt, which = load_run_checkpoint(run_dir)
    model, cfg, _ = model_from_checkpoint(ckpt, which)
    prep = Preprocess.from_meta(ckpt["preprocess"], torch.device("cpu"))
    loader = make_loader(data.test, data, cfg, train=False, batch_size=500)
    preds, index = [], []
    for batch in loader:
        preds.append(model(prep(batch.images)).logits.argmax(-1))
        index.append(batch.index)
    return torch.cat(preds)[torch.argsort(torch.cat(index))]


def overhead(teacher_run: Path, common: list[str], batch_size: int = 256, steps: int = 5) -> dict[str, float]:
    """ms per training step (forward, teacher, loss, backward, AdamW step) of each row's objective."""
    from imgcls.config import load_config
    from imgcls.data.prepare import prepare_data
    from imgcls.data.preprocess import Preprocess
    from imgcls.engine.objective import build_objective
    from imgcls.engine.optim import build_optimizer
    from imgcls.models.classifier import build_model
    from imgcls.runtime.batch import Batch

    out = {}
    data = None
    for label, name in ROWS[1:]:
        cfg = load_config(
            CONFIGS / f"{name}.yaml",
            [*common, f"distill.teacher={teacher_run}"] if name != "deit_student" else common,
        )
        data = data or prepare_data(cfg)
        torch.manual_seed(0)
        model = build_model(cfg.model, len(data.class_names), data.channels)
        objective = build_objective(cfg, model, device=torch.device("cpu"), data=data)
        objective.on_epoch_start(cfg.train.epochs, cfg.train.epochs)  # every term switched on
        optimizer = build_optimizer(model, cfg.optim, torch.device("cpu"), extra=objective)
        prep = Preprocess.from_meta(data.preprocess, torch.device("cpu"))
        unit = prep.to_unit(data.train.images[:batch_size])
        batch = Batch(images=prep.normalize(unit), targets=data.train.labels[:batch_size], unit_images=unit)
        model.train()
        objective.train()
        out[label] = 1000 * time_steps(
            training_step(model, objective, optimizer, batch), warmup=2, steps=steps
        )
    return out


def training_step(model, objective, optimizer, batch):
    def step():
        result = objective(model, model.head, batch)
        weights = objective.term_weights()
        loss = sum(weights.get(k, 1.0) * v for k, v in result.terms.items())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--test-subset", type=int, default=5000)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 600 images, 1 epoch")
    ap.add_argument("--name", default="distill_table")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.train_subset, args.epochs, args.test_subset = [0], 600, 1, 1000
        args.name = "distill_table_quick"
    from imgcls import api
    from imgcls.config import load_config
    from imgcls.data.prepare import prepare_data

    common = [
        f"data.train_subset={args.train_subset}",
        f"train.epochs={args.epochs}",
        "train.progress=false",
        "eval.plots=false",
        "output.tensorboard=false",
        f"output.dir=runs/bench_{args.name}",
    ]
    data = prepare_data(load_config(CONFIGS / "distill_teacher.yaml", common))
    per_row: dict[str, list[dict]] = {label: [] for label, _ in ROWS}
    teacher_runs = {}
    for seed in args.seeds:
        teacher_pred = None
        for label, name in ROWS:
            overrides = [*common, f"train.seed={seed}", f"output.name={name}-s{seed}"]
            if name != "distill_teacher" and name != "deit_student":
                overrides.append(f"distill.teacher={teacher_runs[seed]}")
            start = time.perf_counter()
            res = api.train(CONFIGS / f"{name}.yaml", overrides)
            wall = time.perf_counter() - start
            m = res.metrics
            d = m.get("distillation", {})
            pred = test_predictions(res.run_dir, data)
            if name == "distill_teacher":
                teacher_runs[seed], teacher_pred = res.run_dir, pred
            row = {
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "cls_acc": d.get("cls_acc", float("nan")),
                "dist_acc": d.get("dist_acc", float("nan")),
                "avg_acc": d.get("avg_acc", float("nan")),
                "teacher_agreement": float((pred == teacher_pred).float().mean())
                if name != "distill_teacher"
                else float("nan"),
                "train_time_s": m["train_time_s"],
                "wall_s": wall,
            }
            per_row[label].append(row)
            (RESULTS / f"{args.name}.partial.json").write_text(json.dumps(per_row, indent=1))
            print(label, seed, {k: round(v, 4) for k, v in row.items()}, flush=True)
    results = {
        label: {
            "config": f"configs/fashion_mnist/{name}.yaml",
            "per_seed": per_row[label],
            "device": device_label(),
            **{k: mean_std([r[k] for r in per_row[label]]) for k in per_row[label][0]},
        }
        for label, name in ROWS
    }
    step_ms = overhead(teacher_runs[args.seeds[0]], common)
    write_results(
        args.name,
        {
            "seeds": args.seeds,
            "train_subset": args.train_subset,
            "epochs": args.epochs,
            "results": results,
            "step_ms_batch256": step_ms,
        },
        render(results, step_ms, args),
    )


def render(results: dict, step_ms: dict[str, float], args) -> str:
    cols = [
        ("test acc %", "accuracy", 100, 2),
        ("macro F1 %", "macro_f1", 100, 2),
        ("CLS acc %", "cls_acc", 100, 2),
        ("DIST acc %", "dist_acc", 100, 2),
        ("avg acc %", "avg_acc", 100, 2),
        ("teacher agreement %", "teacher_agreement", 100, 1),
        ("train time s", "train_time_s", 1, 0),
    ]
    md = [
        f"Fashion-MNIST, {args.train_subset} training images (stratified), {args.epochs} epochs, batch 128, seeds "
        f"{args.seeds} (mean ± std); {args.test_subset} test images (stratified). Student: DeiT hybrid (stem 16/32, patch 4, 4 × 64, "
        "CLS + DIST, averaged inference); teacher: AdaptiveCNN (mnist layout, width ½) trained with the same budget.",
        "",
        "| row | " + " | ".join(c[0] for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for label, r in results.items():
        md.append(
            f"| {label} | " + " | ".join(fmt(r[key], scale, digits) for _, key, scale, digits in cols) + " |"
        )
    base = step_ms["student alone"]
    md += [
        "",
        f"Training step at batch 256 (forward, teacher forward, losses, backward, AdamW), one process, {device_label()}:",
        "",
        "| objective | ms / step | × student alone |",
        "|---|---|---|",
    ]
    md += [f"| {label} | {ms:.1f} | {ms / base:.2f} |" for label, ms in step_ms.items()]
    alone = results["student alone"]["accuracy"]
    verdicts = []
    for label in ("+ hard KD", "+ soft KD", "+ CST tokens"):
        acc = results[label]["accuracy"]
        diff = acc[0] - alone[0]
        spread = max(acc[1], alone[1])
        word = (
            "helps"
            if diff > spread
            else "hurts"
            if diff < -spread
            else "makes no difference beyond the seed spread"
        )
        verdicts.append(f"{label}: {100 * diff:+.2f} points → {word}")
    md += [
        "",
        "Against the student alone (difference of means, judged against the larger std): "
        + "; ".join(verdicts)
        + ".",
    ]
    return "\n".join(md)


if __name__ == "__main__":
    main()

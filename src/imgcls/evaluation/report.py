"""``report.md``: one page per run tying together the config, the training history, the test
metrics (and which checkpoint produced them), embedding geometry, complexity, every figure with
a line on how to read it, the time each step took, and notes on what was skipped and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from imgcls.evaluation.plots import read_history

SUMMARY_KEYS = [
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy (mean recall)"),
    ("top3_accuracy", "top-3 accuracy"),
    ("top5_accuracy", "top-5 accuracy"),
    ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"),
    ("macro_f1", "macro F1"),
    ("weighted_f1", "weighted F1"),
    ("roc_auc_macro", "ROC-AUC (one-vs-rest, macro)"),
    ("roc_auc_weighted", "ROC-AUC (one-vs-rest, weighted)"),
    ("nll", "NLL (mean −log p of the true class)"),
    ("ece", "ECE"),
]

COMPLEXITY_KEYS = [
    ("params", "parameters"),
    ("params_backbone", "parameters (backbone)"),
    ("params_head", "parameters (head)"),
    ("trainable_params", "trainable parameters"),
    ("gflops", "GFLOPs (forward, 1 image)"),
    ("inference_img_per_s", "inference img/s"),
    ("eval_batch_size", "evaluation batch size"),
]

#: how to read each figure, by file name
FIGURE_GUIDE = {
    "curves.png": "Loss, accuracy and learning rate per epoch; a widening train–validation gap means overfitting.",
    "confusion.png": "Rows are true classes, normalised to 100 %: the diagonal is each class's recall, off-diagonal cells show which classes are confused.",
    "per_class.png": "Precision, recall and F1 of every class with its test support.",
    "roc.png": "One-vs-rest ROC curve per class and their macro average; the area under each curve is its AUC.",
    "reliability.png": "Accuracy against confidence per bin: bars below the diagonal are over-confident, above it under-confident; the lower panel shows where the predictions fall.",
    "misclassified.png": "The wrong predictions the model was most sure about — often label noise or genuinely ambiguous images.",
    "embeddings_tsne.png": "t-SNE of the representation, coloured by true class (distances between far-apart clusters are not meaningful).",
    "embeddings_umap.png": "UMAP of the same points; it keeps more of the global layout than t-SNE.",
    "gradcam.png": "Where the evidence for the predicted class lies (one test image per class).",
    "feature_maps.png": "What the first convolution's filters respond to on one test image.",
}

HISTORY_COLUMNS = [
    ("epoch", "epoch"),
    ("stage", "stage"),
    ("lr", "lr"),
    ("train_loss", "train loss"),
    ("train_acc", "train acc"),
    ("val_loss", "val loss"),
    ("val_acc", "val acc"),
    ("ema_val_acc", "EMA val acc"),
    ("swa_val_acc", "SWA val acc"),
    ("epoch_time_s", "time (s)"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if 0 < abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    # a class named "a|b" or one with a line break in its folder name must not split the Markdown table
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows],
    ]


def _history_cell(key: str, value: Any) -> Any:
    if key == "epoch" and isinstance(value, float):
        return int(value)
    if key == "lr" and isinstance(value, float):
        return f"{value:.2e}"
    return value


def history_section(
    history: list[dict[str, Any]], monitor: str = "val_acc", max_rows: int = 30, curves: bool = True
) -> list[str]:
    """Summary of the training history (best epoch by ``monitor``) and a per-epoch table (thinned past ``max_rows``);
    ``curves``: whether ``curves.png`` was drawn (``eval.plots``), so the summary points to it."""
    if not history:
        return []
    lines = ["", "## Training history", ""]
    numeric = [r for r in history if isinstance(r.get(monitor), float)]
    if numeric:
        pick = min if monitor.endswith("loss") else max
        best = pick(numeric, key=lambda r: r[monitor])
        lines.append(
            f"{len(history)} epoch(s); best {monitor} {_fmt(best[monitor])} at epoch {int(best.get('epoch', 0))}; "
            f"last epoch: {monitor} {_fmt(history[-1].get(monitor))}."
            + (" Curves: `curves.png`." if curves else "")
        )
    else:
        lines.append(f"{len(history)} epoch(s), no validation split.")
    columns = [(k, label) for k, label in HISTORY_COLUMNS if any(k in r and r[k] != "" for r in history)]
    step = max(1, -(-len(history) // max_rows))
    rows = [r for i, r in enumerate(history) if i % step == 0 or i == len(history) - 1]
    body = [[_history_cell(k, r.get(k)) for k, _ in columns] for r in rows]
    lines += ["", *_table([label for _, label in columns], body)]
    if step > 1:
        lines.append(f"\n(every {step}th epoch shown, and the last)")
    return lines


def write_report(
    run_dir: Path, metrics: dict[str, Any], config: dict[str, Any], figures: dict[str, str], notes: list[str]
) -> Path:
    """Write ``run_dir/report.md``; ``figures`` maps a caption to a file name inside ``run_dir``."""
    m = metrics
    name = config.get("output", {}).get("name") or run_dir.parent.name
    model = config["model"]
    lines = [
        f"# Run report: {name}",
        "",
        f"- run directory: `{run_dir}`",
        f"- model: backbone `{model['backbone']}`, head `{model['head']}`"
        + (f" (head_args `{model['head_args']}`)" if model.get("head_args") else ""),
        f"- data: `{config['data']['name']}` — test set evaluated once, {m.get('num_samples', '?')} images",
        f"- **evaluated weights: `{m.get('checkpoint', '?')}`** ({m.get('checkpoint_detail', '')})",
        f"- head inference mode: `{m.get('head_inference_mode', 'sample')}`"
        + (f"; test-time augmentation: {m['tta_views']} views" if m.get("tta_views", 1) > 1 else ""),
        f"- training time: {_fmt(m.get('train_time_s'))} s; seed {config.get('train', {}).get('seed', '?')}",
        "",
        "## Test metrics",
        "",
    ]
    rows = [
        [f"{label} ({m.get('ece_bins')} equal-width bins)" if key == "ece" else label, m[key]]
        for key, label in SUMMARY_KEYS
        if key in m
    ]
    lines += _table(["metric", "value"], rows)

    for title, table in m.get("extra_tables", {}).items():
        lines += ["", f"## {title}", "", *_table(["metric", "value"], [[k, v] for k, v in table.items()])]

    geometry = m.get("embedding_geometry")
    if geometry:
        names = {
            "features": str(geometry.get("features", {}).get("name", "backbone features")),
            "head_embeddings": "head embeddings",
        }
        if "features" not in geometry:
            names["head_embeddings"] = "head embeddings (= backbone features)"
        lines += [
            "",
            "## Embedding geometry",
            "",
            "Compactness = mean over classes of the mean Euclidean distance to the class mean (lower is tighter); "
            "separation = mean over pairs of class means of 1 − cosine similarity (higher is more spread); "
            "relative compactness = compactness / mean distance between class means (scale-free).",
            "",
            *_table(
                ["representation", "dim", "compactness", "separation", "relative compactness"],
                [
                    [names.get(k, k), r["dim"], r["compactness"], r["separation"], r["relative_compactness"]]
                    for k, r in geometry.items()
                ],
            ),
        ]

    complexity = [[label, m[key]] for key, label in COMPLEXITY_KEYS if key in m]
    if complexity:
        lines += ["", "## Complexity and speed", "", *_table(["quantity", "value"], complexity)]
        if "flops_convention" in m:
            lines.append(f"\nFLOPs convention: {m['flops_convention']}.")

    if "per_class" in m:
        lines += [
            "",
            "## Per class",
            "",
            *_table(
                ["class", "precision", "recall", "F1", "support"],
                [[c, r["precision"], r["recall"], r["f1"], r["support"]] for c, r in m["per_class"].items()],
            ),
        ]

    monitor = config.get("train", {}).get("monitor", "val_acc")
    lines += history_section(
        read_history(run_dir / "history.csv"), monitor, curves="curves.png" in figures.values()
    )

    if figures:
        lines += ["", "## Figures", ""]
        for caption, file in figures.items():
            lines += [f"### {caption}", ""]
            if file in FIGURE_GUIDE:
                lines += [FIGURE_GUIDE[file], ""]
            lines += [f"![{caption}]({file})", ""]

    timing = [["prediction on the test set", m["eval_time_s"]]] if "eval_time_s" in m else []
    timing += [[f"`{file}`", seconds] for file, seconds in m.get("figure_time_s", {}).items()]
    if timing:
        lines += ["", "## Evaluation timing", "", *_table(["step", "seconds"], timing)]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path

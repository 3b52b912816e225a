"""``report.md``: one page per run tying together the config, the training history, the test
metrics (and which checkpoint produced them) and every figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

SUMMARY_KEYS = [
    ("accuracy", "accuracy"), ("top5_accuracy", "top-5 accuracy"), ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"), ("macro_f1", "macro F1"), ("roc_auc_macro", "ROC-AUC (macro, one-vs-rest)"),
    ("nll", "NLL"), ("ece", "ECE"), ("params", "parameters"), ("gflops", "GFLOPs (forward, 1 image)"),
    ("inference_img_per_s", "inference img/s"),
]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(run_dir: Path, metrics: dict[str, Any], config: dict[str, Any], figures: dict[str, str], notes: list[str]) -> Path:
    """Write ``run_dir/report.md``; ``figures`` maps a caption to a file name inside ``run_dir``."""
    m = metrics
    lines = [
        f"# Run report: {config.get('output', {}).get('name') or run_dir.parent.name}",
        "",
        f"- run directory: `{run_dir}`",
        f"- model: backbone `{config['model']['backbone']}`, head `{config['model']['head']}`",
        f"- data: `{config['data']['name']}` — test set evaluated once, {m.get('num_samples', '?')} images",
        f"- **evaluated weights: `{m.get('checkpoint', '?')}`** ({m.get('checkpoint_detail', '')})",
        f"- training time: {_fmt(m.get('train_time_s', float('nan')))} s",
        "",
        "## Test metrics",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {label} | {_fmt(m[key])} |" for key, label in SUMMARY_KEYS if key in m]
    if "ece" in m:
        lines.append(f"| ECE bins | {m.get('ece_bins')} |")
    extra_tables = m.get("extra_tables", {})
    for title, rows in extra_tables.items():
        lines += ["", f"## {title}", "", "| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows.items()]
    if "per_class" in m:
        lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for name, row in m["per_class"].items():
            lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |")
    if figures:
        lines += ["", "## Figures", ""]
        for caption, name in figures.items():
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path

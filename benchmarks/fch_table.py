"""Issue 4: linear head vs the four FCH graphs on Fashion-MNIST (same backbone, epochs and seeds).

Rows: linear; RBF/kNN/attention/class-label FCH at p = 1 and at the seed's p (RBF 1, kNN 4,
attention 5, CL 1 — SPEC §1.3). Columns: test accuracy in batch mode at the training batch
size, accuracy at B = 1 and in memory mode, macro F1, training step time. Mean ± std over seeds.

    .venv/bin/python benchmarks/fch_table.py [--epochs 5] [--seeds 0 1 2] [--rows fch_att_p1 ...] [--extra k=v ...]
    .venv/bin/python benchmarks/fch_table.py --merge results/a.json results/b.json --name fch_table
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import grid_main, grid_table

CONFIGS = Path(__file__).parent.parent / "configs" / "fashion_mnist"


def extract(metrics: dict, history: list[dict]) -> dict[str, float]:
    dep = metrics.get("batch_dependence", {})
    b1 = next((v for k, v in dep.items() if "B=1" in k), metrics["accuracy"])
    memory = next((v for k, v in dep.items() if k.startswith("memory")), float("nan"))
    steps = sum(r["train_images"] for r in history) / metrics["eval_batch_size"]
    return {
        "accuracy": metrics["accuracy"],
        "accuracy_b1": b1,
        "accuracy_memory": memory,
        "macro_f1": metrics["macro_f1"],
        "step_ms": 1000 * sum(r["train_time_s"] for r in history) / max(steps, 1),
    }


def rows_for(args) -> list[tuple[str, str, list[str]]]:
    rows = [("linear", str(CONFIGS / "fch_rbf.yaml"), ["model.head=linear", "model.head_args={}"])]
    for graph, seed_p in (("rbf", 1), ("knn", 4), ("att", 5), ("cl", 1)):
        cfg = str(CONFIGS / f"fch_{graph}.yaml")
        rows.append((f"fch_{graph}_p1", cfg, ["model.head_args.order=1"]))
        if seed_p != 1:
            rows.append((f"fch_{graph}_p{seed_p}", cfg, [f"model.head_args.order={seed_p}"]))
    return rows


def main() -> None:
    grid_main("fch_table", __doc__, rows_for, extract, render, default_epochs=5)


def render(results: dict, epochs: int, seeds: list[int]) -> str:
    md = grid_table(
        f"Fashion-MNIST, AdaptiveCNN (mnist layout), batch 256, {epochs} epochs, seeds {seeds} (mean ± std).",
        results,
        [
            ("accuracy (batch, B=256) %", "accuracy", 100, 2),
            ("accuracy (B=1) %", "accuracy_b1", 100, 2),
            ("accuracy (memory) %", "accuracy_memory", 100, 2),
            ("macro F1 %", "macro_f1", 100, 2),
            ("step ms", "step_ms", 1, 1),
        ],
    )
    if "linear" not in results:
        return "\n".join(md)
    base = results["linear"]["accuracy"][0]
    best = max((n for n in results if n != "linear"), key=lambda n: results[n]["accuracy"][0])
    verdict = (
        "beats" if results[best]["accuracy"][0] > base + results["linear"]["accuracy"][1] else "does not beat"
    )
    md += [
        "",
        f"Best FCH row: {best} ({100 * results[best]['accuracy'][0]:.2f} %) {verdict} the linear head "
        f"({100 * base:.2f} ± {100 * results['linear']['accuracy'][1]:.2f} %) beyond one standard deviation.",
    ]
    return "\n".join(md)


if __name__ == "__main__":
    main()

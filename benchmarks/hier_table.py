"""Issue 6: Fashion-MNIST with its WordNet class tree, five heads through the hierarchical machinery.

Columns: leaf accuracy, hierarchical F1, mistake severity (mean LCA height of wrong predictions),
violation rate, coverage at 99 % precision of confidence-thresholded prediction; then (issue 13) test ECE
and coverage at 99 % precision before (T = 1) and after temperature scaling fitted on the validation split
(``eval.calibration=temperature``, set for every row); mean ± std over seeds. Also checks that the flat (linear) head's accuracy through the hierarchical machinery is
within 0.5 points of the same head trained without a taxonomy.

    .venv/bin/python benchmarks/hier_table.py [--epochs 8] [--seeds 0 1 2] [--taxonomy wordnet] [--rows sphere_hier ...]
    .venv/bin/python benchmarks/hier_table.py --merge results/a.json results/b.json --name hier_table
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import grid_main, grid_table

CONFIGS = Path(__file__).parent.parent / "configs" / "fashion_mnist_hier"
HEADS = ["linear", "arcface", "sphere_multi", "sphere_hier", "arcface_multihead"]


def extract(metrics: dict, history: list[dict]) -> dict[str, float]:
    h = metrics.get("hierarchical", {})
    value = lambda key: float("nan") if h.get(key) is None else float(h[key])  # noqa: E731
    cal = metrics.get("calibration", {}).get("test", {})
    nan = float("nan")
    return {
        "accuracy": metrics["accuracy"],
        "hf1": value("hierarchical_f1"),
        "severity": value("mistake_severity"),
        "violation_rate": value("violation_rate"),
        # without calibration the hierarchical metrics are the T = 1 ones; with it, the report keeps both
        "coverage_at_99": cal.get("coverage_at_99_precision_before", value("coverage_at_99_precision")),
        "coverage_at_99_calibrated": cal.get("coverage_at_99_precision_after", nan),
        "ece": cal.get("ece_before", metrics.get("ece", nan)),
        "ece_calibrated": cal.get("ece_after", nan),
        "temperature": metrics.get("calibration", {}).get("temperature", nan),
    }


def render(results: dict, epochs: int, seeds: list[int]) -> str:
    md = grid_table(
        f"Fashion-MNIST + WordNet tree (15 nodes, depth 4), AdaptiveCNN, {epochs} epochs, seeds {seeds} (mean ± std).",
        results,
        [
            ("leaf accuracy %", "accuracy", 100, 2),
            ("hF1 %", "hf1", 100, 2),
            ("mistake severity (LCA height)", "severity", 1, 3),
            ("violation rate %", "violation_rate", 100, 2),
            ("coverage at 99 % precision %", "coverage_at_99", 100, 2),
            ("ECE % (T = 1)", "ece", 100, 2),
            ("ECE % (fitted T)", "ece_calibrated", 100, 2),
            ("coverage at 99 % precision, fitted T %", "coverage_at_99_calibrated", 100, 2),
            ("T", "temperature", 1, 3),
        ],
    )
    if "linear_flat" in results and "linear" in results:
        hier, flat = (100 * results[k]["accuracy"][0] for k in ("linear", "linear_flat"))
        md += [
            "",
            f"Linear head through the hierarchical machinery {hier:.2f} % vs without a taxonomy {flat:.2f} %: "
            f"a change of {hier - flat:+.2f} points (target: no drop larger than 0.5 points).",
        ]
    return "\n".join(md)


def rows_for(args) -> list[tuple[str, str, list[str]]]:
    cal = "eval.calibration=temperature"
    rows = [(head, str(CONFIGS / f"{head}.yaml"), [f"data.taxonomy={args.taxonomy}", cal]) for head in HEADS]
    return [*rows, ("linear_flat", str(CONFIGS / "linear.yaml"), ["data.taxonomy=null", cal])]


def main() -> None:
    grid_main(
        "hier_table",
        __doc__,
        rows_for,
        extract,
        render,
        default_epochs=8,
        add_arguments=lambda ap: ap.add_argument(
            "--taxonomy",
            default="wordnet",
            help="wordnet, or a parent-map file (e.g. configs/taxonomies/fashion_mnist.yaml)",
        ),
    )


if __name__ == "__main__":
    main()

"""Issue 4 target: the FCH head's share of the training step at B = 256 with the quickstart backbone
(AdaptiveCNN, mnist layout) must be ≤ 10 %. For each graph (p = 1 and the seed's p), the step time of
forward + backward + optimiser step on a pre-made batch (``throughput.measure``'s ceiling) with the FCH
head is compared with the same backbone under the quickstart ``mlp`` head:
overhead = (t_fch - t_mlp) / t_fch. The FCH settings are those of configs/fashion_mnist/fch_*.yaml.

    .venv/bin/python benchmarks/fch_overhead.py [--steps 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results
from cpu_precision import quickstart_overrides
from throughput import measure

from imgcls.config import load_config

CONFIGS = Path(__file__).parent.parent / "configs" / "fashion_mnist"
GRAPHS = (("rbf", 1), ("knn", 4), ("att", 5), ("cl", 1))


def fch_overrides(graph: str, order: int) -> list[str]:
    head_args = {**load_config(CONFIGS / f"fch_{graph}.yaml").model.head_args, "order": order}
    return ["model.head=fch", "model.head_args={" + ", ".join(f"{k}: {v}" for k, v in head_args.items()) + "}"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    base = quickstart_overrides()
    rows = [{"head": "mlp (quickstart)", **measure(base, args.batch, args.steps)}]
    for graph, seed_p in GRAPHS:
        for order in sorted({1, seed_p}):
            rows.append({"head": f"fch {graph} p={order}", **measure([*base, *fch_overrides(graph, order)], args.batch, args.steps)})
            print(rows[-1], flush=True)
    t_base = args.batch / rows[0]["ceiling_img_per_s"]
    for r in rows:
        r["step_ms"] = 1e3 * args.batch / r["ceiling_img_per_s"]
        r["overhead"] = 1 - t_base * 1e3 / r["step_ms"]
    md = [f"FCH head cost, quickstart backbone, batch {args.batch}, {rows[0]['precision']}, this CPU:", "",
          "| head | step ms (fwd + bwd + opt) | FCH share of the step | pipeline img/s |", "|---|---|---|---|"]
    md += [f"| {r['head']} | {r['step_ms']:.1f} | {r['overhead']:.1%} | {r['pipeline_img_per_s']:,.0f} |" for r in rows]
    worst = max(r["overhead"] for r in rows[1:])
    md += ["", f"Target: FCH share ≤ 10 % — worst {worst:.1%} ({'met' if worst <= 0.10 else 'not met'})."]
    write_results("fch_overhead", {"batch_size": args.batch, "rows": rows, "target": 0.10}, "\n".join(md))


if __name__ == "__main__":
    main()

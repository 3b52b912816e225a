"""Shared helpers for benchmark scripts: machine description, timing, and result files
(JSON for machines, Markdown for the README) under benchmarks/results/."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: the Fashion-MNIST recipes the speed benchmarks time (issue 11), by row name
FMNIST_RECIPES = {
    "fast92": ROOT / "configs/fashion_mnist/fast92.yaml",
    "best30min": ROOT / "configs/fashion_mnist/best30min.yaml",
    "airbench": ROOT / "configs/fashion_mnist/airbench.yaml",
    "strong": ROOT / "configs/fashion_mnist/strong.yaml",
    "quickstart": ROOT / "configs/quickstart.yaml",
}


def quiet_run_overrides(out: Path) -> list[str]:
    """Overrides for a benchmarked ``api.train`` run: into ``out``, no progress bar, TensorBoard or plots."""
    return [f"output.dir={out}", "train.progress=false", "output.tensorboard=false", "eval.plots=false"]


# IMGCLS_BENCHMARK_RESULTS redirects the result files (the tests' smoke runs write to a temporary folder)
RESULTS = Path(os.environ.get("IMGCLS_BENCHMARK_RESULTS") or Path(__file__).parent / "results")


def machine() -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else platform.processor() or "cpu",
    }
    try:
        flags = Path("/proc/cpuinfo").read_text()
        info["avx512_bf16"] = "avx512_bf16" in flags
        info["cpu_model"] = next(
            (line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")),
            "",
        )
    except OSError:
        pass
    return info


def time_steps(
    step: Callable[[], None], warmup: int, steps: int, sync: Callable[[], None] = lambda: None
) -> float:
    """Mean seconds per call of ``step`` over ``steps`` back-to-back calls after ``warmup`` calls
    (one device sync at each end, so asynchronous GPU work is not serialised per step)."""
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def write_results(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(markdown)


def mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def run_grid(
    rows: list[tuple[str, str, list[str]]],
    seeds: list[int],
    common: list[str],
    extract: Callable[[dict, list[dict]], dict[str, float]],
    partial: Path | None = None,
) -> dict[str, dict]:
    """Train every (name, config, overrides) row once per seed through the public API and
    aggregate ``extract(metrics, history)`` over seeds as mean/std. With ``partial``, the results
    so far are written there after every run (so an interrupted grid keeps what it measured)."""
    from imgcls import api

    results: dict[str, dict] = {}
    for name, config, overrides in rows:
        per_seed = []
        for seed in seeds:
            start = time.perf_counter()
            res = api.train(
                config, [*common, *overrides, f"train.seed={seed}", f"output.name={name}-s{seed}"]
            )
            values = extract(res.metrics, res.history)
            values["wall_s"] = time.perf_counter() - start
            per_seed.append(values)
            print(name, seed, {k: round(v, 4) for k, v in values.items()}, flush=True)
            keys = per_seed[0].keys()
            results[name] = {
                "config": config,
                "overrides": overrides,
                "seeds": seeds[: len(per_seed)],
                "per_seed": per_seed,
                "device": device_label(),
                **{k: mean_std([s[k] for s in per_seed]) for k in keys},
            }
            if partial is not None:
                partial.write_text(json.dumps({"results": results}, indent=1))
    return results


def fmt(ms: tuple[float, float], scale: float = 1.0, digits: int = 2) -> str:
    if ms[0] != ms[0]:  # NaN: not applicable to this row
        return "–"
    return f"{ms[0] * scale:.{digits}f} ± {ms[1] * scale:.{digits}f}"


def device_label() -> str:
    info = machine()
    return (
        info["device"]
        if info["device"] != "cpu"
        else f"CPU ({info.get('cpu_model', '?')}, {info['torch_threads']} threads)"
    )


def grid_table(title: str, results: dict, columns: list[tuple[str, str, float, int]]) -> list[str]:
    """Markdown lines of a table benchmark: a title, then one row per result with ``columns`` given as
    (header, result key, scale, digits) and a final "measured on" column."""
    md = [
        title,
        "",
        "| head | " + " | ".join(c[0] for c in columns) + " | measured on |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for name, r in results.items():
        cells = [
            fmt(r.get(key, (float("nan"), 0.0)), scale, digits) for _, key, scale, digits in columns
        ]  # older results: –
        md.append(f"| {name} | " + " | ".join(cells) + f" | {r.get('device', '?')} |")
    return md


def merge_grids(paths: list[str]) -> dict[str, dict]:
    """Combine ``results`` of grid runs over disjoint seeds (e.g. one process per seed on one GPU) or
    disjoint rows (e.g. rows measured on another machine); each row keeps the device it ran on."""
    merged: dict[str, dict] = {}
    for path in paths:
        for name, r in json.loads(Path(path).read_text())["results"].items():
            m = merged.setdefault(
                name,
                {
                    "config": r["config"],
                    "overrides": r["overrides"],
                    "seeds": [],
                    "per_seed": [],
                    "device": r.get("device", "?"),
                },
            )
            m["seeds"] += r["seeds"]
            m["per_seed"] += r["per_seed"]
    for m in merged.values():
        for key in m["per_seed"][0]:
            m[key] = mean_std([s[key] for s in m["per_seed"]])
    return merged


def grid_main(
    name: str,
    doc: str,
    rows_for: Callable[[argparse.Namespace], list[tuple[str, str, list[str]]]],
    extract: Callable[[dict, list[dict]], dict[str, float]],
    render: Callable[[dict, int, list[int]], str],
    default_epochs: int,
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda ap: None,
) -> None:
    """The command line shared by the table benchmarks: train every row for every seed (or only
    ``--rows``), or ``--merge`` earlier result files; write JSON + Markdown under results/."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=default_epochs)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--extra", nargs="*", default=[], help="more config overrides for every run")
    ap.add_argument("--name", default=name, help="results file stem")
    ap.add_argument("--rows", nargs="*", help="train only these rows (names as in the table)")
    ap.add_argument(
        "--merge", nargs="*", help="combine result JSONs (disjoint seeds or rows) instead of training"
    )
    add_arguments(ap)
    args = ap.parse_args()
    if args.merge:
        results = merge_grids(args.merge)
        seeds = sorted({s for r in results.values() for s in r["seeds"]})
        write_results(
            args.name,
            {"epochs": args.epochs, "seeds": seeds, "results": results},
            render(results, args.epochs, seeds),
        )
        return
    rows = rows_for(args)
    unknown = sorted(set(args.rows or []) - {row[0] for row in rows})
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {[row[0] for row in rows]}")
    rows = [row for row in rows if not args.rows or row[0] in args.rows]
    common = [
        f"train.epochs={args.epochs}",
        "train.progress=false",
        f"output.dir=runs/bench_{args.name}",
        "eval.plots=false",
        *args.extra,
    ]
    results = run_grid(rows, args.seeds, common, extract, partial=RESULTS / f"{args.name}.partial.json")
    extra = {k: v for k, v in vars(args).items() if k not in ("merge", "name")}
    write_results(args.name, {**extra, "results": results}, render(results, args.epochs, args.seeds))

"""Issue 12: untuned vs tuned — the FCH table's and the hierarchical table's key rows, every method given
the same Optuna budget on the validation split (``imgcls sweep``), then 3 final seeds on the test set.

Rows: from the FCH table (benchmarks/fch_table.py) linear, RBF p=1, attention p=1, class-label p=1; from
the hierarchical table (benchmarks/hier_table.py) linear, arcface, sphere_hier. Each row is swept over
lr, weight decay and its own main knob (configs/sweeps/{linear,fch,arcface,sphere}.yaml) with the same
number of trials, sampler seed and median pruner, at the table's epochs; the best config is re-trained
with seeds 0..S-1 and only those runs are evaluated on the test set.

Untuned numbers come from benchmarks/results/{fch,hier}_table.json when the settings match the tables
(full training set, the tables' epochs); a reduced run (--train-subset / --epochs / --quick) re-trains
the untuned configs with the same settings and seeds, so both columns are always measured alike.

Also measured: sweep overhead (wall time of a sweep of N trials without pruning vs N plain ``api.train``
runs of the same trial configs, in the same process) and pruning's saving in trial-epochs.

    .venv/bin/python benchmarks/sweep_table.py                       # full: 7 rows × 16 trials (many CPU hours)
    .venv/bin/python benchmarks/sweep_table.py --rows linear fch_rbf_p1 --trials 6 --epochs 2 --train-subset 6000
    .venv/bin/python benchmarks/sweep_table.py --quick               # smoke run: 2 rows, 4 trials, 1 epoch

Every row's trial and final runs live under ``runs/bench_<name>/<settings>/<row>/``, and the studies (SQLite,
a few hundred KB) in ``benchmarks/results/sweep_studies/<name>-<settings>.db``, which is committed: ``runs/`` does
not survive a move to another machine, the study does. A run that is stopped (Ctrl-C, a kill, the end of a
session) resumes with the same command: finished trials are kept, the trial that was running is re-queued
(final seeds are kept while ``runs/`` is). Rows finished
so far are kept in ``benchmarks/results/<name>.partial.json`` (per settings) and are not run again, and the
final table has every row finished with these settings, in this invocation or an earlier one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, device_label, mean_std, write_results

from imgcls.errors import TrainingInterrupted

ROOT = Path(__file__).parent.parent
FCH, HIER, SPACES = (
    ROOT / "configs" / "fashion_mnist",
    ROOT / "configs" / "fashion_mnist_hier",
    ROOT / "configs" / "sweeps",
)
HIER_TAXONOMY = (
    f"data.taxonomy={ROOT / 'configs' / 'taxonomies' / 'fashion_mnist.yaml'}"  # as hier_table.json was run
)

#: name → (table, row name in that table's results, config, overrides, search space)
ROWS = {
    "linear": (
        "fch_table",
        "linear",
        FCH / "fch_rbf.yaml",
        ["model.head=linear", "model.head_args={}"],
        "linear",
    ),
    "fch_rbf_p1": ("fch_table", "fch_rbf_p1", FCH / "fch_rbf.yaml", ["model.head_args.order=1"], "fch"),
    "fch_att_p1": ("fch_table", "fch_att_p1", FCH / "fch_att.yaml", ["model.head_args.order=1"], "fch"),
    "fch_cl_p1": ("fch_table", "fch_cl_p1", FCH / "fch_cl.yaml", ["model.head_args.order=1"], "fch"),
    "hier_linear": ("hier_table", "linear", HIER / "linear.yaml", [HIER_TAXONOMY], "linear"),
    "arcface": ("hier_table", "arcface", HIER / "arcface.yaml", [HIER_TAXONOMY], "arcface"),
    "sphere_hier": ("hier_table", "sphere_hier", HIER / "sphere_hier.yaml", [HIER_TAXONOMY], "sphere"),
}
TABLE_EPOCHS = {"fch_table": 4, "hier_table": 6}
QUIET = [
    "train.progress=false",
    "output.tensorboard=false",
    "eval.plots=false",
    "eval.embeddings_plot=false",
    "eval.gradcam=false",
]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="*", choices=list(ROWS), help="rows to run (default: all seven)")
    ap.add_argument(
        "--trials", type=int, default=16, help="trials per row (the same budget for every method)"
    )
    ap.add_argument(
        "--epochs", type=int, help="epochs per trial and final run (default: the table's, 4 FCH / 6 hier)"
    )
    ap.add_argument("--train-subset", type=int, help="training images (stratified; default: all 60,000)")
    ap.add_argument("--test-subset", type=int, help="test images for the final runs (default: all 10,000)")
    ap.add_argument(
        "--seeds", type=int, default=3, help="final seeds (0..S-1), for tuned and re-trained untuned runs"
    )
    ap.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
    ap.add_argument("--overhead-trials", type=int, default=4, help="N of the overhead measurement (0: skip)")
    ap.add_argument("--extra", nargs="*", default=[], help="more config overrides for every run")
    ap.add_argument("--name", default="sweep_table")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: rows linear + fch_rbf_p1, 4 trials, 1 epoch, "
        "2,000 train / 1,000 test images, 2 seeds",
    )
    args = ap.parse_args()
    if args.quick:
        args.rows = args.rows or ["linear", "fch_rbf_p1"]
        args.trials, args.epochs, args.seeds, args.overhead_trials = (
            min(args.trials, 4),
            1,
            2,
            min(args.overhead_trials, 2),
        )
        args.train_subset, args.test_subset = args.train_subset or 2000, args.test_subset or 1000
    args.rows = args.rows or list(ROWS)
    return args


def reduced(args, table: str) -> bool:
    """Whether this run's settings differ from the table's (then the untuned row is re-trained here)."""
    return bool(
        args.train_subset
        or args.test_subset
        or args.extra
        or (args.epochs and args.epochs != TABLE_EPOCHS[table])
    )


def common_overrides(args, table: str, out: Path) -> list[str]:
    over = [f"train.epochs={args.epochs or TABLE_EPOCHS[table]}", f"output.dir={out}", *QUIET]
    if args.train_subset:
        over.append(f"data.train_subset={args.train_subset}")
    if args.test_subset:
        over.append(f"data.test_subset={args.test_subset}")
    return [*over, *args.extra]


def untuned(args, name: str, out: Path) -> dict:
    from imgcls import api

    table, table_row, config, overrides, _ = ROWS[name]
    if not reduced(args, table):
        r = json.loads((RESULTS / f"{table}.json").read_text())["results"][table_row]
        return {
            "accuracy": r["accuracy"],
            "seeds": r["seeds"],
            "source": f"benchmarks/results/{table}.json",
            "device": r.get("device", "?"),
        }
    accs = []
    for seed in range(args.seeds):
        res = api.train(
            config,
            [
                *overrides,
                *common_overrides(args, table, out / "untuned"),
                f"train.seed={seed}",
                f"output.name={name}-untuned",
            ],
        )
        accs.append(res.metrics["accuracy"])
        print(name, "untuned seed", seed, round(accs[-1], 4), flush=True)
    return {
        "accuracy": mean_std(accs),
        "seeds": list(range(args.seeds)),
        "source": "re-trained here",
        "device": device_label(),
    }


def study_storage(args, tag: str) -> Path:
    """The SQLite file holding every row's study for these settings (kept with the results)."""
    return RESULTS / "sweep_studies" / f"{args.name}-{tag}.db"


def tuned(args, name: str, out: Path, storage: Path) -> dict:
    from imgcls import api

    table, _, config, overrides, space = ROWS[name]
    start = time.perf_counter()
    result = api.sweep(
        config,
        SPACES / f"{space}.yaml",
        [*overrides, *common_overrides(args, table, out / "runs")],
        trials=args.trials,
        study=name,
        storage=f"sqlite:///{storage.resolve()}",
        out=out / "sweep",
        final_seeds=args.seeds,
        pruner=args.pruner,
    )
    summary = json.loads((result.out_dir / "sweep.json").read_text())
    acc = result.final["metrics"]["accuracy"]
    return {
        "accuracy": [acc["mean"], acc["std"] or 0.0],
        "per_seed": acc["values"],
        "best_trial": result.best["number"],
        "best_val": result.best["value"],
        "best_params": result.best["params"],
        "trials_counted": summary["trials_counted"],
        "pruning": summary["pruning"],
        "importance": summary["importance"],
        "sweep_dir": str(result.out_dir),
        "wall_s": time.perf_counter() - start,
        "device": device_label(),
    }


def overhead(args, out: Path) -> dict:
    """A sweep of N trials (no pruning, no final runs) vs N plain runs of the very same trial configs, in this
    process, wall and CPU time (CPU time is the steadier measure on a shared machine)."""
    from imgcls import api
    from imgcls.config import load_config

    table, _, config, overrides, space = ROWS["linear"]
    # warm-up (not counted): the first run in a process pays one-off imports and allocator growth
    api.train(config, [*overrides, *common_overrides(args, table, out / "warmup")], evaluate_after=False)
    wall, cpu = time.perf_counter(), time.process_time()
    result = api.sweep(
        config,
        SPACES / f"{space}.yaml",
        [*overrides, *common_overrides(args, table, out / "runs")],
        trials=args.overhead_trials,
        study="overhead",
        out=out / "sweep",
        pruner="none",
        baseline=False,
    )
    sweep_s, sweep_cpu = time.perf_counter() - wall, time.process_time() - cpu
    trial_s = sum(r["duration_s"] for r in result.trials)
    wall, cpu = time.perf_counter(), time.process_time()
    for r in result.trials:
        cfg = load_config(Path(r["run_dir"]) / "config.yaml", [f"output.dir={out / 'plain'}"])
        api.train(cfg, evaluate_after=False)
    plain_s, plain_cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "trials": args.overhead_trials,
        "sweep_s": sweep_s,
        "trials_inside_sweep_s": trial_s,
        "plain_s": plain_s,
        "ratio": sweep_s / plain_s,
        "sweep_cpu_s": sweep_cpu,
        "plain_cpu_s": plain_cpu,
        "cpu_ratio": sweep_cpu / plain_cpu,
        "device": device_label(),
    }


def render(args, results: dict, over: dict | None) -> str:
    epochs = {t: args.epochs or e for t, e in TABLE_EPOCHS.items()}
    label = "REDUCED RUN (not the tables' protocol): " if any(reduced(args, t) for t in TABLE_EPOCHS) else ""
    subset = f"{args.train_subset:,} training images" if args.train_subset else "the full training set"
    md = [
        f"{label}Fashion-MNIST, AdaptiveCNN, {subset}, epochs {epochs['fch_table']} (FCH rows) / {epochs['hier_table']} "
        f"(hierarchical rows); {args.trials} Optuna trials per row (TPE, {args.pruner} pruner) on the validation split, "
        f"then the best config re-trained with seeds 0..{args.seeds - 1} and evaluated once on the test set"
        + (f" ({args.test_subset:,} images)" if args.test_subset else "")
        + ".",
        "",
        "| row | untuned test acc % | tuned test acc % | Δ (points) | best val acc % | best parameters | "
        "trial-epochs run / without pruning | untuned from |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        u, t = r["untuned"]["accuracy"], r["tuned"]["accuracy"]
        params = ", ".join(
            f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
            for k, v in r["tuned"]["best_params"].items()
        )
        p = r["tuned"]["pruning"]
        md.append(
            f"| {name} | {100 * u[0]:.2f} ± {100 * u[1]:.2f} | {100 * t[0]:.2f} ± {100 * t[1]:.2f} | "
            f"{100 * (t[0] - u[0]):+.2f} | {100 * r['tuned']['best_val']:.2f} | {params} | "
            f"{p['trial_epochs_run']} / {p['trial_epochs_without_pruning']} | {r['untuned']['source']} |"
        )
    md += ["", *verdicts(results)]
    runs = sum(r["tuned"]["pruning"]["trial_epochs_run"] for r in results.values())
    budget = sum(r["tuned"]["pruning"]["trial_epochs_without_pruning"] for r in results.values())
    if budget:
        md.append(
            f"Pruning saved {100 * (1 - runs / budget):.0f} % of the trial-epochs ({runs} run of {budget})."
        )
    if over:
        md.append(
            f"Sweep overhead: {over['trials']} trials in a sweep (no pruning) used {over['sweep_cpu_s']:.1f} s of CPU "
            f"vs {over['plain_cpu_s']:.1f} s for {over['trials']} plain runs of the same configs: ×{over['cpu_ratio']:.2f} "
            f"(wall {over['sweep_s']:.1f} s vs {over['plain_s']:.1f} s, ×{over['ratio']:.2f}, on a shared machine; "
            f"the trials themselves took {over['trials_inside_sweep_s']:.1f} s of the sweep's wall time, the rest is "
            "opening the study, the report and its plots)."
        )
    else:
        md.append(
            "Sweep overhead: not measured in this invocation (--overhead-trials 0); the latest measurement is in "
            "sweep_table_medium.md."
        )
    missing = [n for n in ROWS if n not in results]
    if missing:
        md.append(
            f"Rows finished so far: {len(results)} of {len(ROWS)}; not yet run with these settings: "
            f"{', '.join(missing)} (the same command continues where it stopped)."
        )
    devices = sorted({r["tuned"].get("device", "?") for r in results.values()}) or [device_label()]
    md.append(f"Measured on {' and '.join(devices)} (each row's device is in the JSON).")
    return "\n".join(md)


def verdicts(results: dict) -> list[str]:
    """Plain statements: within each table, does the best non-linear row beat the linear row, untuned and tuned?"""
    lines = []
    for table, base in (("fch_table", "linear"), ("hier_table", "hier_linear")):
        others = [n for n in results if ROWS[n][0] == table and n != base]
        if base not in results or not others:
            continue
        said, beats = [], []
        for kind in ("untuned", "tuned"):
            b = results[base][kind]["accuracy"]
            best = max(others, key=lambda n: results[n][kind]["accuracy"][0])
            o = results[best][kind]["accuracy"]
            beats.append(o[0] > b[0] + b[1])
            said.append(
                f"{kind}: the best other row, {best} ({100 * o[0]:.2f} %), {'beats' if beats[-1] else 'does not beat'} "
                f"{base} ({100 * b[0]:.2f} ± {100 * b[1]:.2f} %) beyond one standard deviation"
            )
        verdict = "CHANGES" if beats[0] != beats[1] else "does not change"
        lines.append(f"{table}: " + "; ".join(said) + f" — the conclusion {verdict} with tuning.")
    return lines


def save_partial(path: Path, settings: dict, results: dict, stopped_s: dict[str, float]) -> None:
    """The finished rows, and the wall time already spent on rows a signal stopped, for the next invocation."""
    payload = {"settings": settings, "results": results, "stopped_wall_s": stopped_s}
    path.write_text(json.dumps(payload, indent=1, default=str))


def main() -> None:
    args = parse_args()
    base = ROOT / "runs" / f"bench_{args.name}"
    tag = f"t{args.trials}-e{args.epochs or 'table'}-n{args.train_subset or 'all'}-{args.pruner}"
    # rows finished by earlier invocations with the same settings (a full run spans several sessions)
    partial = RESULTS / f"{args.name}.partial.json"
    previous = json.loads(partial.read_text()) if partial.is_file() else {}
    settings = {
        "trials": args.trials,
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "test_subset": args.test_subset,
        "seeds": args.seeds,
        "pruner": args.pruner,
        "extra": args.extra,
    }
    same = previous.get("settings") == settings
    results: dict[str, dict] = previous.get("results", {}) if same else {}
    stopped_s: dict[str, float] = previous.get("stopped_wall_s", {}) if same else {}
    storage = study_storage(args, tag)
    storage.parent.mkdir(parents=True, exist_ok=True)
    if (
        not storage.is_file()
    ):  # the studies of stopped rows were lost with their machine: their time is not resumed
        stopped_s = {}
    for name in args.rows:
        if name in results:  # finished with these settings earlier: its figures are kept in the partial file
            print(name, "finished earlier:", results[name]["tuned"]["accuracy"], flush=True)
            continue
        out = base / tag / name
        row = {
            "config": str(ROWS[name][2].relative_to(ROOT)),
            "overrides": ROWS[name][3],
            "space": f"configs/sweeps/{ROWS[name][4]}.yaml",
        }
        # time spent on this row by earlier invocations stopped by a signal
        earlier_s = stopped_s.get(name, 0.0)
        start = time.perf_counter()
        try:
            row["tuned"] = tuned(args, name, out, storage)
        except TrainingInterrupted as exc:  # the study keeps its trials; keep this invocation's time too
            stopped_s[name] = stopped_s.get(name, 0.0) + time.perf_counter() - start
            save_partial(partial, settings, results, stopped_s)
            print(f"{exc}; the row's time so far is kept in {partial.relative_to(ROOT)}", file=sys.stderr)
            sys.exit(exc.exit_code)
        row["tuned"]["wall_s"] += earlier_s
        stopped_s.pop(name, None)
        row["untuned"] = untuned(args, name, out)
        results[name] = row
        save_partial(partial, settings, results, stopped_s)
        print(name, "untuned", row["untuned"]["accuracy"], "tuned", row["tuned"]["accuracy"], flush=True)
    over = None
    if args.overhead_trials:
        out = base / tag / "overhead"
        shutil.rmtree(out, ignore_errors=True)  # a fresh study: the measurement must run its trials
        over = overhead(args, out)
    payload = {
        "trials": args.trials,
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "test_subset": args.test_subset,
        "seeds": list(range(args.seeds)),
        "pruner": args.pruner,
        "quick": args.quick,
        "reduced": any(reduced(args, t) for t in TABLE_EPOCHS),
        "extra": args.extra,
        "results": results,
        "overhead": over,
    }
    write_results(args.name, payload, render(args, results, over))
    if set(results) >= set(ROWS):  # every row done: the table above is the whole protocol
        partial.unlink(missing_ok=True)


if __name__ == "__main__":
    main()

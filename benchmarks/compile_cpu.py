"""``torch.compile`` as a further CPU execution candidate (issue 11): is a compiled training step faster
than the eager one *including the compile time, for the run's length*?

Per recipe, in one process on the running machine:
- **real epochs**: one training epoch of the recipe through ``api.train`` with ``train.compile=false`` and
  ``true``, in ABBA order (``--rounds`` rounds), so drift hits both alike; the difference is what a user pays
  or saves in that epoch (compilation and the steady steps; validation runs the plain model in both).
  Precision, layout and optimiser kernel are chosen by the autotuner as in a normal run.
- **fixed batch**: the trainer's step on one ready batch, eager in the execution the autotuner chose against
  compiled in every precision × layout candidate, in interleaved rounds (medians): each compile time (the
  first compiled call) and steady-state ms per step, hence the steps after which compiling pays back, set
  against the recipe's steps.
Compiles are cold (inductor's FX-graph and AOTAutograd caches off, dynamo reset before each), as in a user's
first run; the C++ kernel cache of earlier compiles in the same process may still shorten later ones.

    .venv/bin/python benchmarks/compile_cpu.py [--recipes fast92,best30min] [--rounds 1]
    .venv/bin/python benchmarks/compile_cpu.py --quick      # smoke run on 2,000 images, no claim
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# cold compiles, as a user's first run pays them: no inductor/AOTAutograd on-disk caches from earlier runs
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_trainer import build_trainer, fixed_batch_step
from common import FMNIST_RECIPES as RECIPES
from common import quiet_run_overrides, time_steps, write_results

from imgcls import api
from imgcls.config import load_config
from imgcls.engine.autotune import Execution, candidate_grid
from imgcls.runtime.checkpoint import load_checkpoint


def epoch_run(config: Path, compiled: bool, out: Path, extra: list[str]) -> tuple[float, dict]:
    """Training seconds of one epoch of ``config`` and the execution the autotuner chose."""
    torch._dynamo.reset()  # nothing compiled by an earlier run is reused
    res = api.train(
        config,
        [
            f"train.compile={str(compiled).lower()}",
            "train.epochs=1",
            "train.seed=0",
            "train.autotune_max_share=1.0",  # one epoch is too short for the 3 % budget; measure as a full run
            *quiet_run_overrides(out),
            *extra,
        ],
        evaluate_after=False,
    )
    execution = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")["execution"]
    return json.loads((res.run_dir / "train_summary.json").read_text())["train_time_s"], execution


def fixed_batch(config: Path, execution: dict, batch: int, steps: int, rounds: int) -> dict:
    """Compile time and steady ms/step of the trainer's step on one ready batch: eager in the autotuner's
    ``execution`` (the baseline) against compiled in every precision × layout candidate, in interleaved
    rounds (medians)."""
    fused = str(bool(execution.get("fused_optimizer"))).lower()
    common = [
        f"optim.fused={fused}",
        f"train.batch_size={batch}",
        f"data.train_subset={batch * 2}",
        "data.val_fraction=0",
        "train.progress=false",
        "output.tensorboard=false",
    ]
    baseline = (execution["precision"], bool(execution["channels_last"]), False)
    grid = candidate_grid(load_config(config).train, torch.device("cpu"))
    torch._dynamo.reset()
    steps_of, compile_s = {}, {}
    for key in [baseline, *((precision, channels_last, True) for precision, channels_last in grid)]:
        precision, channels_last, compiled = key
        _, data, trainer = build_trainer(
            [
                *common,
                f"train.precision={precision}",
                f"train.channels_last={str(channels_last).lower()}",
                f"train.compile={str(compiled).lower()}",
            ],
            batch,
            config,
        )
        trainer._setup_stage()  # the optimiser and the (compiled) training module, as fit() builds them
        trainer._set_train_mode()
        steps_of[key] = fixed_batch_step(trainer, data, batch)
        if compiled:
            start = time.perf_counter()
            steps_of[key]()  # the first compiled call traces and compiles the forward and backward graphs
            compile_s[key] = time.perf_counter() - start
    times: dict[tuple, list[float]] = {key: [] for key in steps_of}
    for r in range(rounds):
        for key in list(steps_of) if r % 2 == 0 else list(steps_of)[::-1]:
            times[key].append(1000 * time_steps(steps_of[key], warmup=2, steps=steps))
    eager_ms = statistics.median(times[baseline])
    rows = []
    for key in steps_of:
        if key == baseline:
            continue
        ms = statistics.median(times[key])
        saved_ms = eager_ms - ms
        rows.append(
            {
                "precision": key[0],
                "channels_last": key[1],
                "compile_s": compile_s[key],
                "compiled_ms": ms,
                "rounds_ms": times[key],
                "speedup": eager_ms / ms,
                "break_even_steps": math.ceil(1000 * compile_s[key] / saved_ms) if saved_ms > 0 else None,
            }
        )
    return {"eager_ms": eager_ms, "eager_rounds_ms": times[baseline], "compiled": rows}


def describe(execution: dict) -> str:
    """The autotuner's own wording of an execution (``bf16 + channels_last, fused optimizer``)."""
    return Execution.from_dict(execution).describe()


def recipe_steps(config: Path) -> int:
    """Optimiser steps of the full recipe on Fashion-MNIST's 60,000 training images less validation."""
    cfg = load_config(config)
    train_images = round(60000 * (1 - cfg.data.val_fraction))
    return cfg.train.epochs * math.ceil(train_images / cfg.train.batch_size)


def render(rows: dict, quick: bool) -> str:
    """The Markdown tables of ``rows`` (recipe name → the measurements ``main`` collects)."""
    lines = [
        "One real training epoch, `train.compile` false vs true (medians of ABBA rounds; the autotuned execution, "
        "validation included):",
        "",
        "| recipe | execution (autotuned) | epoch s, eager | epoch s, compiled |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {describe(r['execution'])} | {r['epoch_eager_s']:.1f} | {r['epoch_compiled_s']:.1f} |"
        )
    lines += [
        "",
        "The trainer's step on one ready batch (medians of interleaved rounds): eager in the autotuned execution "
        "against compiled in every format; cold compiles (no inductor caches from earlier runs):",
        "",
        "| recipe | compiled format | compile s | ms/step compiled | ms/step eager (autotuned) | speed-up | "
        "break-even steps | recipe steps | saving over the recipe |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        for c in r["compiled"]:
            even = c["break_even_steps"] if c["break_even_steps"] is not None else "never"
            lines.append(
                f"| {name} | {describe(c)} | {c['compile_s']:.1f} | {c['compiled_ms']:.1f} | {r['eager_ms']:.1f} | "
                f"{c['speedup']:.2f}× | {even} | {r['recipe_steps']} | {c['projected_saving_s']:+.0f} s |"
            )
    if quick:
        lines.append("\n(--quick smoke run: 2,000 images, 1 round; no speed claim)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default="fast92,best30min", help=f"comma-separated: {', '.join(RECIPES)}")
    ap.add_argument(
        "--rounds", type=int, default=1, help="ABBA rounds of real epochs (eager, compiled, compiled, eager)"
    )
    ap.add_argument("--steps", type=int, default=20, help="fixed-batch steps per timing round")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2,000 images, 1 round, 3 steps")
    ap.add_argument("--name", default="compile_cpu")
    args = ap.parse_args()
    names = args.recipes.split(",")
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        ap.error(f"unknown recipes {unknown}; choose from {', '.join(RECIPES)}")
    rounds, steps = (1, 3) if args.quick else (args.rounds, args.steps)
    extra = ["data.train_subset=2000", "data.val_fraction=0.1"] if args.quick else []
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            config = RECIPES[name]
            epochs: dict[bool, list[float]] = {False: [], True: []}
            execution = None  # the autotuner's choice in the first eager run
            for r in range(rounds):
                for compiled in (False, True, True, False) if r % 2 == 0 else (True, False, False, True):
                    seconds, chosen = epoch_run(config, compiled, Path(tmp) / f"{name}-{r}-{compiled}", extra)
                    epochs[compiled].append(seconds)
                    if execution is None and not compiled:
                        execution = chosen
                    print(f"{name} compile={compiled}: {seconds:.1f} s", flush=True)
            batch = load_config(config).train.batch_size
            fixed = fixed_batch(config, execution, batch, steps, max(2, 2 * rounds))
            run_steps = recipe_steps(config)
            for c in fixed["compiled"]:  # what compiling would save (negative: cost) over the whole recipe
                c["projected_saving_s"] = (
                    run_steps * (fixed["eager_ms"] - c["compiled_ms"]) / 1000 - c["compile_s"]
                )
            rows[name] = {
                "execution": execution,
                "epoch_s": {"eager": epochs[False], "compiled": epochs[True]},
                "epoch_eager_s": statistics.median(epochs[False]),
                "epoch_compiled_s": statistics.median(epochs[True]),
                **fixed,
                "recipe_steps": run_steps,
            }
            print(rows[name], flush=True)
    write_results(
        args.name + ("_quick" if args.quick else ""),
        {"quick": args.quick, "rows": rows},
        render(rows, args.quick),
    )


if __name__ == "__main__":
    main()

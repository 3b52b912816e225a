"""The ``imgcls`` command line: a thin typer layer over :mod:`imgcls.api`.

User errors (bad config, missing data, unreadable checkpoints) print one line and exit with
code 2, without a traceback; everything else is a bug and raises normally.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from imgcls.config import MAX_IMAGE_SIZE
from imgcls.errors import CheckpointError, ConfigError, TrainingInterrupted, UserError
from imgcls.runtime.signals import QUIET_INTERRUPTION_ENV

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Train, evaluate, compare and explain image classifiers."
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect experiment configs.")
app.add_typer(config_app, name="config")
out = Console()
err = Console(stderr=True)

#: what a run directory is, for the messages of the checks below
RUN_DIR_HINT = (
    "pass the folder a training run wrote (runs/<name>/<time>, holding config.yaml and checkpoints/)"
)
CHECKPOINT_NAMES = ("best", "last", "ema", "swa")


# ------------------------------------------------------------------------------- path checks
# Run before any slow work (loading a model, hashing images), so a mistyped path costs the user
# one line at once instead of a traceback or a wasted run.


def check_run_dir(path: Path) -> None:
    """RUN_DIR of ``predict``/``evaluate``/``export`` must be a training run's folder with a checkpoint."""
    if path.is_file():
        run = path.parent.parent
        if path.parent.name == "checkpoints" and (run / "config.yaml").is_file():
            raise CheckpointError(
                f"'{path}' is a checkpoint file; pass its run directory '{run}' instead "
                "(choose the checkpoint with --checkpoint best|last|ema|swa)"
            )
        raise CheckpointError(f"'{path}' is a file, not a run directory; {RUN_DIR_HINT}")
    if not path.is_dir():
        raise CheckpointError(f"run directory '{path}' does not exist; {RUN_DIR_HINT}")
    if not (path / "config.yaml").is_file():
        runs = [c.parent for pattern in ("*/config.yaml", "*/*/config.yaml") for c in path.glob(pattern)]
        if runs:
            newest = max(runs, key=lambda run: (run / "config.yaml").stat().st_mtime)
            raise CheckpointError(
                f"'{path}' is not a run directory but holds {len(runs)} run(s); pass one of them, e.g. '{newest}'"
            )
        raise CheckpointError(f"'{path}' is not a run directory (it has no config.yaml); {RUN_DIR_HINT}")
    if not any((path / "checkpoints" / name).is_file() for name in ("best.pt", "last.pt")):
        raise CheckpointError(
            f"run directory '{path}' has no checkpoint yet (training stopped before its first one); "
            f"continue it with `imgcls train --resume {path}`"
        )


def check_checkpoint_option(checkpoint: str | None) -> None:
    """``--checkpoint`` names one of a run's checkpoints; it is not a file path."""
    if checkpoint is None or checkpoint in CHECKPOINT_NAMES:
        return
    if "/" in checkpoint or os.sep in checkpoint or checkpoint.endswith((".pt", ".pth", ".safetensors")):
        raise UserError(
            f"--checkpoint takes best, last, ema or swa, not a file ('{checkpoint}'); pass the run directory "
            "holding the checkpoint as RUN_DIR and its name, e.g. --checkpoint last"
        )
    raise UserError(f"--checkpoint must be best, last, ema or swa, not '{checkpoint}'")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_in(folder: Path, option: str, path: Path) -> None:
    """``path`` can be written in ``folder``: its nearest existing ancestor (``folder`` itself, or where
    the missing folders would be created, like ``mkdir -p``) is a folder this user may write to."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(
            f"{option} '{path}' cannot be created: '{existing}' is a file, not a folder; pass a path in a folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{option} '{path}' cannot be written: no write permission in '{existing}'; "
            "pass a path in a folder you can write to"
        )


def check_output_file(path: Path, option: str, example: str) -> None:
    """A file ``option`` will write: not a folder, not read-only, in a folder that exists or can be created."""
    if path.is_dir():
        raise UserError(f"{option} '{path}' is a folder; pass a file path, e.g. '{path / example}'")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{option} '{path}' is read-only; pass another file or make it writable")
    _check_writable_in(path.absolute().parent, option, path)


def check_output_folder(path: Path, option: str) -> None:
    """A folder ``option`` will write files into: not a file, and existing or creatable, writable."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} '{path}' is a file; pass a folder (it is created if missing)")
    _check_writable_in(path, option, path)


def check_config_argument(config: Path | None, command: str) -> None:
    """A CONFIG that is a folder (and no shipped recipe's name): say so, instead of "not found"."""
    if config is None or not config.is_dir():
        return
    from imgcls.recipes import resolve_config

    try:
        resolve_config(config)
    except ConfigError:
        if (config / "config.yaml").is_file() and command == "train":
            fix = f"to continue that run pass `imgcls train --resume {config}`"
        elif (config / "config.yaml").is_file():
            fix = f"pass its config file '{config / 'config.yaml'}'"
        else:
            fix = "pass a YAML file such as configs/quickstart.yaml, or a recipe name (`imgcls configs` lists them)"
        raise UserError(f"config '{config}' is a folder, not a config file; {fix}") from None


def check_before_launch(config: Path | None, overrides: list[str] | None, resume: Path | None) -> None:
    """The config a DDP job would load, checked in the launcher before torchrun starts N processes."""
    from imgcls.config import load_config

    if resume is not None:
        if config is not None:
            return  # refused with one line by the ranks' own check (config and --resume together)
        if (Path(resume) / "config.yaml").is_file():
            load_config(Path(resume) / "config.yaml", list(overrides or []))
        return
    if config is not None and "=" in str(config) and not config.exists():
        load_config(None, [str(config), *(overrides or [])])
    elif config is not None:
        check_config_argument(config, "train")
        load_config(config, list(overrides or []))


def launch_ddp(torchrun_args: list[str]) -> int:
    """Run torchrun in this process; a failing rank (which printed its own message) ends the job with
    its exit code and one summary line instead of torchrun's traceback. A SIGTERM/SIGINT/SIGHUP to this
    launcher reaches the ranks (torchrun forwards it), which finish their step, save and stop: one line here too,
    and exit code 128 + signal."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from imgcls.runtime.cpu_threads import shared_cpu_threads

    args = get_args_parser().parse_args(torchrun_args)
    try:
        # torchrun gives each rank one thread unless OMP_NUM_THREADS is set, which idles most of a larger machine
        with shared_cpu_threads(int(args.nproc_per_node)):
            run(args)
    except SignalException as exc:
        signum = int(exc.sigval)
        err.print(
            f"DDP job stopped by {signal.Signals(signum).name}: the ranks saved their state (their line is above); "
            "resume with the same command and --resume RUN_DIR",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        return 128 + signum
    except ChildFailedError as exc:
        # the rank that failed by itself (positive exit code), not those the launcher then stopped
        rank, failure = min(
            exc.failures.items(), key=lambda item: (item[1].exitcode <= 0, item[1].timestamp, item[0])
        )
        err.print(
            f"DDP job failed: rank {rank} exited with code {failure.exitcode} (its message is above)",
            highlight=False,
        )
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


@app.command(context_settings={"allow_extra_args": False})
def train(
    config: Path | None = typer.Argument(
        None, help="experiment YAML, or a shipped recipe name (e.g. quickstart; see `imgcls configs`)"
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="dotted overrides, e.g. optim.lr=3e-4 train.epochs=5"
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="continue the run in this directory from its last checkpoint"
    ),
    nproc: int = typer.Option(1, "--nproc", min=1, help="train with N DDP processes (launches torchrun)"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip the test-set evaluation after training"),
) -> None:
    """Train an experiment, evaluate it once on the test set, and write a report."""
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        # a typo is one line here, not one per rank after torchrun
        check_before_launch(config, overrides, resume)
        args = ["--standalone", f"--nproc-per-node={nproc}", "-m", "imgcls", "train"] + (
            [str(config)] if config else []
        )
        args += (
            list(overrides or [])
            + (["--resume", str(resume)] if resume else [])
            + (["--no-eval"] if no_eval else [])
        )
        raise typer.Exit(launch_ddp(args))
    from imgcls import api

    if (
        config is not None and "=" in str(config) and not config.exists()
    ):  # `imgcls train optim.lr=1e-3`: defaults + overrides
        overrides, config = [str(config), *(overrides or [])], None
    elif config is None and resume is None:
        raise UserError("pass a config file (e.g. configs/quickstart.yaml) or --resume RUN_DIR")
    if config is not None and resume is not None:  # the run's own config.yaml is what a resume continues
        raise UserError(
            f"pass either a config file or --resume RUN_DIR, not both ('{config}' would be ignored); change a resumed "
            "run with overrides, e.g. `imgcls train --resume RUN_DIR train.epochs=20`"
        )
    check_config_argument(config, "train")
    result = api.train(config, overrides, resume=resume, evaluate_after=not no_eval)
    if int(os.environ.get("RANK", "0")) == 0:
        if result.metrics:
            out.print(
                f"test accuracy: {result.metrics['accuracy']:.4f} ({result.metrics['checkpoint']} checkpoint)",
                highlight=False,
                soft_wrap=True,
            )
            out.print(f"report: {result.report}", highlight=False, soft_wrap=True)
        else:
            out.print(f"run: {result.run_dir}", highlight=False, soft_wrap=True)


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run directory (runs/<name>/<time>)"),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="best | last | ema | swa (default: the config's eval.checkpoint)"
    ),
    data: list[str] | None = typer.Option(
        None, "--data", help="data overrides, e.g. --data data.root=/other/folder"
    ),
) -> None:
    """Evaluate a run's checkpoint on the test set: metrics.json, figures and report.md."""
    from imgcls import api

    check_checkpoint_option(checkpoint)
    check_run_dir(run_dir)
    metrics = api.evaluate(run_dir, checkpoint, data_overrides=list(data or []))
    out.print(
        f"test accuracy: {metrics['accuracy']:.4f}  macro F1: {metrics['macro_f1']:.4f}  ({metrics['checkpoint']} checkpoint)",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"report: {Path(run_dir) / 'report.md'}", highlight=False, soft_wrap=True)


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    images: list[Path] = typer.Argument(..., help="image files"),
    top_k: int = typer.Option(5, "--top-k", min=1),
    tta: int = typer.Option(1, "--tta", min=1, max=10, help="average over N test-time views (flips, shifts)"),
    threshold: float | None = typer.Option(
        None, "--threshold", min=0.0, max=1.0, help="print the deepest taxonomy node with p ≥ τ"
    ),
    checkpoint: str | None = typer.Option(None, "--checkpoint"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    explain: bool = typer.Option(
        False, "--explain", help="also write Grad-CAM and first-conv feature maps per image"
    ),
    explain_dir: Path | None = typer.Option(
        None, "--explain-dir", help="folder for --explain figures (default: RUN/explain)"
    ),
) -> None:
    """Classify images with a trained run (preprocessing is read from the checkpoint)."""
    from imgcls import api

    check_checkpoint_option(checkpoint)
    check_run_dir(run_dir)
    folder = (explain_dir or run_dir / "explain") if explain or explain_dir else None
    if folder is not None:
        check_output_folder(
            folder, "--explain-dir" if explain_dir else "--explain-dir (default RUN_DIR/explain)"
        )
    results = api.predict(
        run_dir,
        [str(p) for p in images],
        top_k=top_k,
        tta=tta,
        threshold=threshold,
        checkpoint=checkpoint,
        on_error="report",
        explain_dir=folder,
    )
    failed = [row for row in results if "error" in row]
    if as_json:
        out.print_json(json.dumps(results))
    for row in failed:  # each unreadable file on its own line; the readable ones are still predicted
        err.print(f"error: {escape(row['error'])}", highlight=False, soft_wrap=True)
    if failed:
        err.print(
            f"{len(failed)} of {len(results)} image(s) could not be read", highlight=False, soft_wrap=True
        )
    if not as_json:
        _print_predictions([row for row in results if "error" not in row], threshold)
    if failed:
        raise typer.Exit(2)


def _print_predictions(results: list[dict], threshold: float | None) -> None:
    for row in results:
        top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top_k"])
        out.print(f"{row['image']}: {top}", highlight=False, soft_wrap=True)
        if "hierarchy" in row:
            h = row["hierarchy"]
            out.print(
                f"  deepest node with p ≥ {threshold}: {' > '.join(h['path'])} (p={h['probability']:.3f})",
                highlight=False,
                soft_wrap=True,
            )
        for key in ("gradcam", "feature_maps"):
            if key in row.get("explain", {}):
                out.print(f"  {key}: {row['explain'][key]}", highlight=False, soft_wrap=True)
            elif key in row.get("explain", {}).get("skipped", {}):
                out.print(
                    f"  {key} skipped: {row['explain']['skipped'][key]}", highlight=False, soft_wrap=True
                )


taxonomy_app = typer.Typer(no_args_is_help=True, help="Inspect class taxonomies.")
app.add_typer(taxonomy_app, name="taxonomy")


@taxonomy_app.command("show")
def taxonomy_show(
    source: Path = typer.Argument(..., help="an experiment YAML with data.taxonomy, or a run directory"),
    overrides: list[str] | None = typer.Argument(None, help="dotted overrides"),
) -> None:
    """Print the class tree a config (or a trained run) uses."""
    from imgcls import api

    out.print(api.taxonomy(source, overrides).render(), highlight=False, markup=False, soft_wrap=True)


@config_app.command("show")
def config_show(
    config: Path | None = typer.Argument(
        None, help="experiment YAML or shipped recipe name (none: the defaults)"
    ),
    overrides: list[str] | None = typer.Argument(None, help="dotted overrides"),
) -> None:
    """Print the fully resolved config (defaults + file + overrides; head/backbone arguments with every default)."""
    from imgcls.config import config_to_yaml, load_config

    check_config_argument(config, "config show")
    out.print(
        config_to_yaml(load_config(config, overrides), component_defaults=True),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@app.command("configs")
def configs_list() -> None:
    """List the shipped recipes (train one by name: `imgcls train fashion_mnist/fch_rbf`)."""
    from imgcls.recipes import list_recipes

    recipes = list_recipes()
    if not recipes:
        raise UserError("no shipped recipes found (the installation has no imgcls/configs folder)")
    width = max(len(r.name) for r in recipes)
    for r in recipes:
        out.print(
            f"{r.name:<{width}}  {r.description}".rstrip(), highlight=False, markup=False, soft_wrap=True
        )


@app.command()
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="run directories, or folders holding runs (e.g. runs/*)"),
    fmt: str = typer.Option("markdown", "--format", help="markdown | csv"),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="write the table to this file instead of printing it"
    ),
    sort: str = typer.Option(
        "accuracy",
        "--sort",
        help="accuracy | macro_f1 | ece | params | train_time_s | inference_img_per_s | none",
    ),
) -> None:
    """One table of evaluated runs: accuracy, macro F1, ECE, params, train time, img/s (mean ± std over seeds)."""
    from imgcls.evaluation.compare import compare_runs

    if fmt not in ("markdown", "csv"):
        raise UserError(f"--format must be markdown or csv, not '{fmt}'")
    if output is not None:
        check_output_file(output, "--output", f"runs.{'md' if fmt == 'markdown' else 'csv'}")
    table = compare_runs(list(run_dirs), sort_by=None if sort == "none" else sort)
    text = table.to_markdown() if fmt == "markdown" else table.to_csv()
    for reason in table.skipped:
        err.print(f"skipped {reason}", highlight=False, markup=False)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)  # like mkdir -p: a new folder for the table is fine
        output.write_text(text)
        out.print(f"wrote {output} ({len(table.rows)} row(s))", highlight=False, soft_wrap=True)
    else:
        sys.stdout.write(text)  # plain: no console wrapping inside table rows


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    onnx: bool = typer.Option(
        False, "--onnx", help="write model.onnx (dynamic batch) and check it with onnxruntime"
    ),
    torchscript: bool = typer.Option(
        False, "--torchscript", help="write model.torchscript.pt (traced) and check it"
    ),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="best | last | ema | swa (default: the config's eval.checkpoint)"
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="folder for the exported files (default: the run directory)"
    ),
    atol: float = typer.Option(
        1e-4, "--atol", min=0.0, help="largest accepted |exported − PyTorch| probability difference"
    ),
    exporter: str = typer.Option(
        "auto", "--exporter", help="auto | dynamo | torchscript (the ONNX exporter)"
    ),
) -> None:
    """Export a run for inference: the model takes float images in [0, 1] and returns class probabilities."""
    from imgcls import api

    check_checkpoint_option(checkpoint)
    check_run_dir(run_dir)
    check_output_folder(
        output or run_dir, "--output" if output else "RUN_DIR (where exports go without --output)"
    )
    if not onnx and not torchscript:
        onnx = True
    record = api.export(
        run_dir,
        onnx=onnx,
        torchscript=torchscript,
        checkpoint=checkpoint,
        out_dir=output,
        atol=atol,
        exporter=exporter,
    )
    folder = output or run_dir
    shape = "×".join(str(d) for d in record["input"]["shape"])
    for kind in ("onnx", "torchscript"):
        if kind in record:
            out.print(
                f"{folder / record[kind]['file']}: max |Δp| vs PyTorch {record[kind]['max_abs_difference']:.2e} "
                f"(≤ {atol:g})",
                highlight=False,
                soft_wrap=True,
            )
    out.print(
        f"input: float32 images in [0, 1], {shape} (normalisation inside); output: class probabilities. "
        f"Details: {folder / 'export.json'}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="experiment YAML to tune"),
    overrides: list[str] | None = typer.Argument(None, help="dotted overrides applied to every trial"),
    space: Path = typer.Option(
        ..., "--space", help="search space YAML (dotted key: {log_uniform|uniform|int_uniform|choice: ...})"
    ),
    trials: int = typer.Option(
        20, "--trials", min=1, help="results the study should hold (complete + pruned + errored)"
    ),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Optuna RDB URL (default: sqlite in the sweep folder); "
        "postgresql://… or mysql://… to share a study across machines",
    ),
    study: str | None = typer.Option(
        None, "--study", help="study name (default: <config>-<space>); an existing one resumes"
    ),
    workers: int = typer.Option(
        1, "--workers", min=1, help="trial processes on this machine sharing the study"
    ),
    final_seeds: int = typer.Option(
        0, "--final-seeds", min=0, help="re-train the best config with seeds 0..S-1 and test only those"
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="sweep folder (default: <output.dir>/sweeps/<study>)"
    ),
    pruner: str = typer.Option("median", "--pruner", help="median | hyperband | none"),
    prune_startup: int = typer.Option(
        3, "--prune-startup", min=0, help="median pruner: completed trials before pruning starts"
    ),
    prune_warmup: int = typer.Option(
        1, "--prune-warmup", min=0, help="earliest epoch at which a trial can be pruned"
    ),
    seed: int = typer.Option(0, "--seed", help="TPE sampler seed"),
    heartbeat: int = typer.Option(
        10, "--heartbeat", min=1, help="seconds between trial heartbeats (dead after 2×)"
    ),
    baseline: bool = typer.Option(
        True, "--baseline/--no-baseline", help="run the config's own values as the first trial"
    ),
    worker_index: int = typer.Option(0, "--worker-index", hidden=True),
    no_report: bool = typer.Option(False, "--no-report", hidden=True),
) -> None:
    """Tune an experiment with Optuna on the validation split (pruning, resumable, parallel workers)."""
    from imgcls import api

    try:
        result = api.sweep(
            config,
            space,
            list(overrides or []),
            trials=trials,
            study=study,
            storage=storage,
            out=out_dir,
            workers=workers,
            final_seeds=final_seeds,
            pruner=pruner,
            prune_startup=prune_startup,
            prune_warmup=prune_warmup,
            seed=seed,
            heartbeat=heartbeat,
            baseline=baseline,
            report=not no_report,
            worker_index=worker_index,
        )
    except KeyboardInterrupt:
        exit_interrupted(
            130,
            "interrupted: run the same command again to resume the sweep (the interrupted trial is queued again)",
        )
    if no_report:
        return
    if result.best is not None:
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best["params"].items()
        )
        out.print(
            f"best trial {result.best['number']}: validation {result.best['value']:.4f} ({params})",
            highlight=False,
            soft_wrap=True,
        )
    if result.final:
        acc = result.final["metrics"]["accuracy"]
        std = f" ± {acc['std']:.4f}" if acc["std"] is not None else ""
        out.print(
            f"test accuracy of the best config over seeds {result.final['seeds']}: {acc['mean']:.4f}{std}",
            highlight=False,
            soft_wrap=True,
        )
    out.print(f"report: {result.report}", highlight=False, soft_wrap=True)


data_app = typer.Typer(
    no_args_is_help=True, help="Prepare image folders: resize cache, near-duplicate removal."
)
app.add_typer(data_app, name="data")


@data_app.command("cache")
def data_cache(
    src: Path = typer.Argument(..., help="image folder with one sub-folder per class"),
    dst: Path = typer.Argument(
        ..., help="new folder for the cache (train from it with data.name=cached data.root=DST)"
    ),
    size: int = typer.Option(
        96, "--size", min=1, max=MAX_IMAGE_SIZE, help="resize every image to SIZE x SIZE (bilinear)"
    ),
    grayscale: bool = typer.Option(False, "--grayscale", help="store 1 grayscale channel instead of RGB"),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="decoding processes (default: one per CPU)"
    ),
    chunk_size: int = typer.Option(
        256, "--chunk-size", min=1, help="images per chunk (the unit of resumption)"
    ),
    exclude: Path | None = typer.Option(None, "--exclude", help="dedup manifest: skip the files it removed"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="discard a finished or unfinished cache in DST"
    ),
) -> None:
    """Decode an image folder once into a resized uint8 array (memory-mapped .npy) + labels + manifest.

    Interrupted runs resume: run the same command again (finished chunks are kept)."""
    from imgcls import api

    try:
        s = api.data_cache(
            src,
            dst,
            size=size,
            grayscale=grayscale,
            workers=workers,
            chunk_size=chunk_size,
            exclude_manifest=exclude,
            overwrite=overwrite,
            progress=True,
        )
    except KeyboardInterrupt:
        exit_interrupted(130, "interrupted: run the same command again to resume (finished chunks are kept)")
    rate = f", {s['images_per_s']:.0f} images/s" if s["images_per_s"] else ""
    resumed = f", {s['chunks_resumed']}/{s['chunks']} chunks resumed" if s["chunks_resumed"] else ""
    out.print(
        f"cached {s['count']} images to {s['dst']} ({s['skipped']} unreadable skipped, {s['excluded']} excluded"
        f"{resumed}{rate}); details: {Path(s['dst']) / 'manifest.json'}",
        highlight=False,
        soft_wrap=True,
    )


@data_app.command("dedup")
def data_dedup(
    src: Path = typer.Argument(
        ..., help="image folder with one sub-folder per class (only read, never changed)"
    ),
    threshold: int = typer.Option(
        2, "--threshold", help="duplicates: Hamming distance < THRESHOLD (2 = the seed's rule)"
    ),
    scope: str = typer.Option(
        "both",
        "--scope",
        help="within | across | both: compare images of the same class, of different classes, or all",
    ),
    hash_kind: str = typer.Option("phash", "--hash", help="phash | dhash (64-bit perceptual hash)"),
    size: int = typer.Option(
        96,
        "--size",
        min=8,
        max=MAX_IMAGE_SIZE,
        help="hash the SIZE x SIZE grayscale image (as cached/trained)",
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="hashing processes (default: one per CPU)"
    ),
    output: Path = typer.Option(
        Path("dedup_manifest.json"), "--out", "-o", help="manifest of kept/removed files"
    ),
) -> None:
    """Find near-duplicate images by perceptual hash; writes a manifest (files are never deleted or moved).

    Use it with `imgcls data cache --exclude MANIFEST` or `data.exclude_manifest=MANIFEST`."""
    from imgcls import api

    check_output_file(output, "--out", "dedup_manifest.json")  # before hashing: that can take minutes
    m = api.data_dedup(
        src,
        threshold=threshold,
        scope=scope,
        hash_kind=hash_kind,
        size=size,
        workers=workers,
        out=output,
        progress=True,
    )
    c = m["counts"]
    out.print(
        f"{c['files']} images, {c['unreadable']} unreadable: keep {c['kept']}, remove {c['removed']} "
        f"({c['removed_within_class']} duplicates within a class, {c['removed_across_class']} across classes; "
        f"scope {m['scope']}, Hamming distance < {m['threshold']}); pairs found: {c['pairs_within_class']} within, "
        f"{c['pairs_across_class']} across classes",
        highlight=False,
        soft_wrap=True,
    )
    out.print(f"manifest: {output}", highlight=False, soft_wrap=True)


INTERRUPTED = (
    "interrupted: resume a training run with `imgcls train --resume RUN_DIR` (its last checkpoint is kept)"
)


def _exit_disk_full(filename: str | None) -> None:
    where = f" at {filename}" if filename else ""
    err.print(
        f"[bold red]error:[/] no space left on device{escape(where)}; the files written before are intact "
        "(free some space and rerun)",
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(2)


#: what torch's allocators say when an allocation fails (CUDA's OutOfMemoryError, the CPU allocator's RuntimeError)
_OUT_OF_MEMORY = ("out of memory", "not enough memory", "can't allocate memory")


def _is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # not imported for the commands that never load it
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    return any(phrase in str(exc).lower() for phrase in _OUT_OF_MEMORY)


def _exit_out_of_memory(exc: BaseException) -> None:
    """An allocation failed (a batch too large for the GPU, or for the host under a memory limit): one line,
    exit 2; the checkpoints written before are intact."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if os.environ.get("RANK", "0") != "0":  # DDP ranks fail together: rank 0 speaks for them
        sys.exit(2)
    err.print(
        f"[bold red]error:[/] out of memory ({escape(detail[:200])}); the checkpoints written before are intact "
        "(lower train.batch_size or eval.batch_size and run again)",
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(2)


def exit_interrupted(code: int, message: str | None = INTERRUPTED) -> None:
    """Print ``message`` and exit with ``code``; a further Ctrl-C (pressed twice quickly, it lands while the
    interpreter shuts down) ends the process at once and quietly instead of showing a traceback from
    whatever atexit handler it interrupts. A local sweep worker (:data:`QUIET_INTERRUPTION_ENV` set) prints
    nothing: its parent reports the whole sweep's interruption in one line."""
    if message and not os.environ.get(QUIET_INTERRUPTION_ENV):
        err.print(message, highlight=False, markup=False, soft_wrap=True)
    with contextlib.suppress(ValueError):  # only the main thread may set signal handlers
        signal.signal(signal.SIGINT, _exit_quietly)
    sys.exit(code)


def _exit_quietly(signum: int, frame) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(128 + signum)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # without standalone mode click returns typer.Exit's code
        if code == 130:  # typer turns Ctrl-C (KeyboardInterrupt) into Exit(130) and returns its code
            exit_interrupted(130)
        if isinstance(code, int) and code:
            sys.exit(code)
    except TrainingInterrupted as exc:  # SIGTERM/SIGINT during training: the state was saved
        # DDP ranks stop together at the same step: rank 0 speaks for them
        exit_interrupted(exc.exit_code, f"interrupted: {exc}" if os.environ.get("RANK", "0") == "0" else None)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:  # older typer / click let it through
        exit_interrupted(130)
    except MemoryError as exc:
        _exit_out_of_memory(exc)
    except RuntimeError as exc:  # torch's zip writer closing after an ENOSPC: the OSError is its context
        from imgcls.runtime.checkpoint import is_disk_full

        if _is_out_of_memory(exc):
            _exit_out_of_memory(exc)
        if not is_disk_full(exc):
            raise
        _exit_disk_full(None)
    except OSError as exc:
        from imgcls.runtime.checkpoint import is_disk_full

        if is_disk_full(exc):
            _exit_disk_full(exc.filename)
        if exc.errno == errno.ENOMEM:  # e.g. forking DataLoader workers under memory pressure
            _exit_out_of_memory(exc)
        if exc.filename is None:  # not about a file the user named: a real fault, keep its traceback
            raise
        err.print(
            f"[bold red]error:[/] cannot use {escape(str(exc.filename))}: {escape(exc.strerror or str(exc))} "
            "(check the path and its permissions)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
    except Exception as exc:  # click's own usage errors
        kinds = _click_exception_kinds()
        if isinstance(exc, kinds["ClickException"]):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, kinds["Exit"]):
            sys.exit(exc.exit_code)
        if isinstance(exc, kinds["Abort"]):  # click turns Ctrl-C outside training into Abort
            exit_interrupted(130)
        raise


def _click_exception_kinds() -> dict[str, tuple[type[BaseException], ...]]:
    """click's usage-error, exit and abort classes. typer ≥ 0.29 vendors its own copy of click
    (``typer._click``) and raises that copy's classes, older typer raises click's: accept both."""
    modules = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    return {
        kind: tuple(getattr(m, kind) for m in modules if hasattr(m, kind))
        for kind in ("ClickException", "Exit", "Abort")
    }

"""The Python API: train / evaluate / predict / load as plain functions (the CLI is a thin layer
over these, so notebooks and scripts use the same code).

Protocol (SPEC §7.10): validation comes from a stratified split of the training data; the test
set is evaluated once, after training, on the checkpoint named by ``eval.checkpoint`` (best
validation, last, EMA or SWA), and the report says which. SIGTERM/SIGINT during that final evaluation
stop it at once with a :class:`~imgcls.errors.TrainingInterrupted` (exit code 128 + signal) saying that
training finished, where its checkpoint is and how to evaluate it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imgcls.config import ExperimentConfig, apply_overrides, build_config, config_to_yaml, load_config
from imgcls.data.decode import record_skipped_files
from imgcls.data.prepare import PreparedData, make_loader, prepare_data
from imgcls.engine.callbacks import (
    Checkpointer,
    EarlyStopping,
    HistoryLogger,
    PlateauFeed,
    ProgressPrinter,
    RecoveryCheckpointer,
    StopAtValAcc,
    TimeBudget,
)
from imgcls.engine.objective import build_objective
from imgcls.engine.trainer import Trainer
from imgcls.errors import CheckpointError, ConfigError, DataError, TrainingInterrupted, UserError
from imgcls.evaluation.predict import Predictor
from imgcls.models.classifier import Classifier, build_model
from imgcls.runs import (  # noqa: F401  (public API)
    checkpoint_path,
    load_run_checkpoint,
    model_from_checkpoint,
    resume_candidates,
    resume_checkpoint,
)
from imgcls.runtime import checkpoint as ckpt_io
from imgcls.runtime.distributed import DistInfo, barrier, broadcast_object, init_distributed
from imgcls.runtime.precision import configure_backends, resolve_device
from imgcls.runtime.run_lock import hold_run_lock
from imgcls.runtime.signals import (
    FinalEvaluationSignal,
    graceful_stop,
    signals_stop_final_evaluation,
    stop_requested,
)

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.run_dir / "report.md"


# ---------------------------------------------------------------------------------- helpers
def _as_list(values: Any, what: str) -> list:
    """A list from an argument that may also be given as one ``str``/``Path`` (not iterated character by character)."""
    if values is None:
        return []
    if isinstance(values, (str, Path)):
        return [values]
    try:
        return list(values)
    except TypeError:
        raise UserError(f"{what} must be a list (or one string), not a {type(values).__name__}") from None


def _as_config(
    cfg: ExperimentConfig | Mapping[str, Any] | str | Path | None, overrides: list[str] | str | None
) -> ExperimentConfig:
    """The experiment config from a YAML file or shipped recipe name, a dict (as a YAML file would hold), or an
    ``ExperimentConfig``, with dotted ``overrides`` (a list, or one ``"key=value"`` string) applied."""
    overrides = _as_list(overrides, "overrides")
    if isinstance(cfg, Mapping):
        return build_config(apply_overrides(copy.deepcopy(dict(cfg)), overrides))
    if not isinstance(cfg, ExperimentConfig):
        return load_config(cfg, overrides)
    if not overrides:
        return cfg
    return build_config(apply_overrides(cfg.model_dump(mode="json"), overrides))


def new_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    base = Path(cfg.output.dir) / (cfg.output.name or "run")
    run_dir = base / stamp
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = base / f"{stamp}-{n}"
    return run_dir


def build_taxonomy_for(cfg: ExperimentConfig, data: PreparedData):
    """The class taxonomy named by ``data.taxonomy`` (None when the config has none)."""
    if not cfg.data.taxonomy:
        return None
    from imgcls.taxonomy import build_taxonomy

    return build_taxonomy(
        cfg.data.taxonomy, data.class_names, rule=cfg.data.taxonomy_rule, synsets=data.synsets or None
    )


def build_callbacks(cfg: ExperimentConfig, run_dir: Path) -> list:
    from imgcls.engine.attractor_init import class_mean_init_callbacks
    from imgcls.engine.averaging import averaging_callbacks
    from imgcls.engine.confusion_sampling import sampling_callbacks
    from imgcls.engine.whitening_init import whitening_init_callbacks

    # initialisation from the data first: weight averaging copies the model at fit and stage start
    callbacks = [
        *whitening_init_callbacks(cfg),
        *class_mean_init_callbacks(cfg),
        *averaging_callbacks(cfg),
        *sampling_callbacks(cfg),
        StopAtValAcc(),
        PlateauFeed(),
    ]
    if cfg.train.time_budget_s is not None:  # before the checkpointer, so epoch 1's checkpoint holds the plan
        callbacks.append(TimeBudget(cfg.train.time_budget_s))
    if cfg.train.early_stopping_patience:
        callbacks.append(
            EarlyStopping(
                cfg.train.monitor, cfg.train.early_stopping_patience, cfg.train.early_stopping_min_delta
            )
        )
    callbacks += [  # history first: the checkpoint written after it must already hold this epoch's row
        HistoryLogger(run_dir, cfg.output.tensorboard, cfg.train.log_every),
        Checkpointer(run_dir / "checkpoints", cfg.train.monitor, cfg.output.keep_every_epochs),
        RecoveryCheckpointer(
            run_dir / "checkpoints", cfg.train.checkpoint_every_steps, cfg.train.checkpoint_every_minutes
        ),
        ProgressPrinter(cfg.train.progress),
    ]
    return callbacks


# ---------------------------------------------------------------------------------- train
def train(
    cfg: ExperimentConfig | Mapping[str, Any] | str | Path | None = None,
    overrides: list[str] | str | None = None,
    *,
    resume: str | Path | None = None,
    evaluate_after: bool = True,
    callbacks: list | None = None,
) -> RunResult:
    """Train an experiment (or resume the run in ``resume``), then evaluate it once on the test set.
    ``callbacks`` (engine.callbacks.Callback) run after the built-in ones, e.g. a sweep's pruning reporter."""
    resume_ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(
                f"'{run_dir}' is not a run directory (no config.yaml); pass runs/<name>/<time>"
            )
        cfg = load_config(run_dir / "config.yaml", _as_list(overrides, "overrides"))
        resume_ckpt = resume_checkpoint(run_dir)  # a damaged recovery.pt falls back to last.pt with a warning
        if resume_ckpt is None:
            # stopped before its first checkpoint: continuing exactly means starting over, in the same folder
            log.warning(
                "warning: '%s' has no checkpoint yet (it stopped before the first one); training it from the start",
                run_dir,
            )
    else:
        cfg = _as_config(cfg, overrides)
        run_dir = None

    device = resolve_device(cfg.train.device)
    dist = init_distributed(device.type)
    configure_backends(cfg.train, device)
    # Nothing is written before the data, the model and (on --resume) the checkpoint's fit are checked:
    # a config error leaves no run directory behind, a failed resume leaves the run untouched.
    data = prepare_data(cfg)
    taxonomy = build_taxonomy_for(cfg, data)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, len(data.class_names), data.channels, cfg.train.label_smoothing, taxonomy)
    if resume_ckpt is not None:
        check_resume_fits(model, cfg, resume_ckpt, data.class_names, taxonomy, run_dir)
    train_loader = make_loader(
        data.train,
        data,
        cfg,
        train=True,
        batch_size=cfg.train.batch_size,
        rank=dist.rank,
        world_size=dist.world_size,
        device=device,
    )
    eval_bs = cfg.eval.batch_size or cfg.train.batch_size
    val_loader = (
        make_loader(
            data.val,
            data,
            cfg,
            train=False,
            batch_size=eval_bs,
            rank=dist.rank,
            world_size=dist.world_size,
            device=device,
        )
        if len(data.val)
        else None
    )

    from imgcls.data.augment import build_train_augment
    from imgcls.data.progressive_resize import check_model_accepts
    from imgcls.models.feature_cache import attach_feature_cache

    augment = build_train_augment(cfg.augment, len(data.class_names))
    try:
        check_model_accepts(model, augment.resize, data.channels, data.image_size)
    except ValueError as exc:
        raise ConfigError(
            f"augment.resize_min={cfg.augment.resize_min}: {exc}; progressive resizing needs a model that "
            "accepts any input size (a CNN with global pooling): raise augment.resize_min or unset it"
        ) from None
    attach_feature_cache(model, cfg, augment)
    if run_dir is None:
        run_dir = Path(broadcast_object(str(new_run_dir(cfg)), dist))
    trainer = Trainer(  # built (its loaders sized, its objective's teacher loaded) before anything is written
        cfg,
        model,
        train_loader,
        val_loader,
        device=device,
        preprocess_meta=data.preprocess,
        class_names=data.class_names,
        callbacks=[*build_callbacks(cfg, run_dir), *(callbacks or [])],
        augment=augment,
        dist=dist,
        taxonomy=taxonomy,
        objective=build_objective(cfg, model, device=device, data=data),
    )
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # one process trains a run folder at a time (two resumes would delete each other's temporary files);
    # one signal handler hands over to the next with no gap: graceful_stop's stays installed until the final
    # evaluation's is in place (a signal between the two would otherwise meet Python's defaults: a silent exit)
    with hold_run_lock(run_dir) if dist.is_main else contextlib.nullcontext(), graceful_stop():
        if dist.is_main:
            ckpt_io.atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
            ckpt_io.remove_stale_temp_files(run_dir / "checkpoints")
            ckpt_io.remove_stale_temp_files(run_dir)  # e.g. a model.safetensors write that was killed
        try:
            history = trainer.fit(resume=resume_ckpt)
        except TrainingInterrupted as exc:
            raise TrainingInterrupted(str(exc).replace("RUN_DIR", str(run_dir)), exc.exit_code) from None
        except (ConfigError, DataError):
            # a config/data error met only once training starts (an unknown module to freeze, a loss weight the head
            # does not produce, a sampler that cannot fill a batch): a new run that saved nothing leaves no directory
            if resume is None and dist.is_main and not any((run_dir / "checkpoints").glob("*.pt")):
                shutil.rmtree(run_dir, ignore_errors=True)
                for empty in (
                    run_dir.parent,
                    run_dir.parent.parent,
                ):  # runs/<name>/ and output.dir, when now empty
                    with contextlib.suppress(OSError):
                        empty.rmdir()
            raise
        with signals_stop_final_evaluation(run_dir) if evaluate_after else contextlib.nullcontext():
            late_signal = stop_requested()  # arrived after the last step's check: training is complete
            train_time = trainer.train_time_s  # the attempts before a resume included
            # the in-memory path decodes once; the streaming path skips as it goes
            skipped = set(data.skipped_files)
            for loader in (train_loader, val_loader):
                skipped |= getattr(loader, "skipped", set())
            if dist.is_main and skipped:
                record_skipped_files(run_dir, skipped)
            if dist.is_main:
                ckpt_io.atomic_write_text(
                    run_dir / "train_summary.json",
                    json.dumps({"train_time_s": train_time, "epochs": trainer.state.global_epoch}),
                )
            barrier(dist)
            result = RunResult(run_dir, {}, history)
            if evaluate_after:
                if late_signal:
                    raise FinalEvaluationSignal(late_signal)
                result.metrics = evaluate(run_dir, cfg.eval.checkpoint, data=data, dist=dist)
            elif dist.is_main:  # every run leaves inference weights (evaluation writes those it evaluated)
                ckpt, which = load_run_checkpoint(run_dir)
                weights, _, _ = model_from_checkpoint(ckpt, which)
                ckpt_io.save_safetensors(
                    weights.state_dict(), run_dir / "model.safetensors", metadata={"checkpoint": which}
                )
    return result


def recovery_or_last(run_dir: Path) -> Path:
    """The checkpoint a resume starts from when it loads: the newest of recovery.pt and last.pt."""
    candidates = resume_candidates(run_dir)
    return candidates[0] if candidates else run_dir / "checkpoints" / "last.pt"


def check_resume_fits(
    model: Classifier,
    cfg: ExperimentConfig,
    ckpt: dict[str, Any],
    class_names: list[str],
    taxonomy,
    run_dir: Path,
) -> None:
    """Fail (one line, nothing written) when the checkpoint cannot be loaded into the model ``cfg`` describes."""
    import copy

    from imgcls.runs import load_weights, model_as_of_stage

    if list(ckpt.get("class_names", class_names)) != list(class_names):
        raise CheckpointError(
            f"cannot resume {run_dir}: the data's classes differ from the checkpoint's; "
            "resume with the data the run was trained on"
        )
    with torch.random.fork_rng(
        devices=[]
    ):  # building a stage head draws random numbers: keep the seed's stream
        probe = model_as_of_stage(
            copy.deepcopy(model), cfg, int(ckpt.get("progress", {}).get("stage", 0)), taxonomy
        )
    try:
        load_weights(probe, ckpt["model"], "the checkpoint's")
    except CheckpointError as exc:
        raise CheckpointError(
            f"cannot resume {run_dir} with this config: {exc}; drop the overrides that change the "
            "model (the run directory is unchanged)"
        ) from None


# ---------------------------------------------------------------------------------- evaluate
#: data keys the trained model fixed: evaluating with other values would feed it inputs it never saw
MODEL_DEFINED_DATA_KEYS = (
    "data.image_size",
    "data.channels",
    "data.mean",
    "data.std",
    "data.invert",
    "data.taxonomy",
    "data.taxonomy_rule",
)


def _check_evaluation_overrides(overrides: list[str]) -> None:
    """``evaluate --data`` changes which data is evaluated (``data.*``) and how (``eval.*``), never the model:
    a ``model.*`` key would be printed in report.md as if the weights had been trained with it."""
    for item in overrides:
        key = str(item).partition("=")[0].strip()
        if not key.startswith(("data.", "eval.")):
            raise ConfigError(
                f"evaluate --data takes data.* (and eval.*) keys, e.g. data.root=/other/folder; '{key}' is not one "
                "(the model is as it was trained: train a new run to change it)"
            )
        if key in MODEL_DEFINED_DATA_KEYS:
            raise ConfigError(
                f"evaluate --data cannot change '{key}': the model was trained with its value (the checkpoint's "
                "preprocessing is used)"
            )


def _require_writable(run_dir: Path) -> None:
    """Evaluation writes metrics.json, report.md and figures into the run: refuse a read-only one up front,
    not after the whole evaluation."""
    try:
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        raise CheckpointError(
            f"run directory '{run_dir}' is not writable ({exc.strerror or exc}); evaluation writes metrics.json, "
            "report.md and figures into it: copy the run somewhere writable (cp -r) and evaluate the copy"
        ) from None


def _recorded_train_time(path: Path) -> float:
    """train_summary.json's training time (NaN when the file is missing or unreadable)."""
    try:
        return float(json.loads(path.read_text())["train_time_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")


def evaluate(
    run_dir: str | Path,
    checkpoint: str | None = None,
    *,
    data: PreparedData | None = None,
    dist: DistInfo | None = None,
    data_overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a run's chosen checkpoint on the test set; writes metrics.json, figures and report.md."""
    from imgcls.evaluation.calibration import checkpoint_identity
    from imgcls.evaluation.evaluate import evaluate_model

    run_dir = Path(run_dir)
    ckpt, which = load_run_checkpoint(run_dir, checkpoint)
    dist = dist or DistInfo()
    if dist.is_main:
        _require_writable(run_dir)
    model, cfg, taxonomy = model_from_checkpoint(ckpt, which)
    if ckpt.get("execution") and cfg.train.precision == "auto":  # the precision training measured
        cfg.train.precision = ckpt["execution"]["precision"]
    if data_overrides:
        _check_evaluation_overrides(data_overrides)
        cfg = build_config(apply_overrides(cfg.model_dump(mode="json"), data_overrides))
    device = resolve_device(cfg.train.device)
    configure_backends(cfg.train, device)  # the run's threads (or the CPU quota's), as in training
    if data is None or data_overrides:
        data = prepare_data(cfg, need_train=False)
    if data.class_names != ckpt["class_names"]:
        raise UserError(
            f"the evaluation data's classes {data.class_names[:5]}... differ from the model's {ckpt['class_names'][:5]}..."
        )
    detail = {
        "best": f"best validation {cfg.train.monitor} (epoch {ckpt.get('metrics', {}).get('epoch', '?')})"
        if (run_dir / "checkpoints" / "best.pt").is_file()
        else f"last epoch ({ckpt.get('metrics', {}).get('epoch', '?')}): no validation split, so no best checkpoint",
        "last": f"last epoch ({ckpt.get('metrics', {}).get('epoch', '?')})",
        "ema": "exponential moving average of the weights",
        "swa": "stochastic weight averaging",
    }[which]
    train_time = _recorded_train_time(run_dir / "train_summary.json")
    return evaluate_model(
        model,
        cfg,
        data,
        run_dir,
        device=device,
        dist=dist,
        taxonomy=taxonomy,
        checkpoint=which,
        checkpoint_detail=detail,
        preprocess=ckpt["preprocess"],
        class_names=ckpt["class_names"],
        train_time_s=train_time,
        checkpoint_identity=checkpoint_identity(ckpt),
        evaluation_overrides=list(data_overrides or []),
    )


# ---------------------------------------------------------------------------------- predict
# Predictor lives in imgcls.evaluation.predict; `imgcls.api.Predictor` stays importable.
def load(
    run_dir: str | Path, checkpoint: str | None = None, device: str = "cpu", calibrated: bool = True
) -> Predictor:
    """Load a run's model for inference (`imgcls.load(run_dir).predict(["shoe.png"])`); with ``calibrated``
    the temperature fitted by evaluation (``eval.calibration: temperature``) for this checkpoint is applied."""
    from imgcls.evaluation.calibration import stored_temperature
    from imgcls.evaluation.evaluate import require_finite_weights
    from imgcls.runtime.cpu_threads import fit_torch_threads

    fit_torch_threads()  # a CPU quota's share, as in training
    ckpt, which = load_run_checkpoint(run_dir, checkpoint)
    model, _, taxonomy = model_from_checkpoint(ckpt, which)
    require_finite_weights(model, Path(run_dir), which)  # NaN weights would predict NaN probabilities
    temperature = stored_temperature(Path(run_dir), which, ckpt) if calibrated else 1.0
    return Predictor(model, ckpt["preprocess"], ckpt["class_names"], taxonomy, device, temperature)


def predict(
    run_dir: str | Path,
    images: Any,
    top_k: int = 5,
    tta: int = 1,
    threshold: float | None = None,
    checkpoint: str | None = None,
    on_error: str = "raise",
    explain_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Top-k predictions per image (``on_error="report"``: an unreadable image becomes an ``error`` row and the
    others are still predicted); with ``explain_dir`` also Grad-CAM and first-conv feature maps for each readable
    image (its row gets an ``explain`` record with the files written, for the class and probability the row's
    ``top_k[0]`` reports). ``images``: a list, or one image (:mod:`imgcls.evaluation.predict` lists the kinds);
    ``top_k`` ≥ 1, ``tta`` 1..10 and ``threshold`` in [0, 1] as for ``imgcls predict`` (UserError otherwise)."""
    from imgcls.evaluation.predict import as_image_list, check_predict_options

    check_predict_options(top_k, tta, threshold, on_error)  # before the (slow) load
    images = as_image_list(images)
    predictor = load(run_dir, checkpoint)
    rows = predictor.predict(images, top_k=top_k, tta=tta, threshold=threshold, on_error=on_error)
    if explain_dir is not None:
        readable = [i for i, row in enumerate(rows) if "error" not in row]
        records = predictor.explain([images[i] for i in readable], explain_dir, tta=tta) if readable else []
        for i, record in zip(readable, records, strict=True):
            rows[i]["explain"] = record
    return rows


# ---------------------------------------------------------------------------------- compare / export
def compare(run_dirs: list[str | Path], fmt: str = "markdown", sort_by: str | None = "accuracy") -> str:
    """One table (``markdown`` or ``csv``) of the evaluated runs under ``run_dirs``; seeds of one config are averaged."""
    from imgcls.evaluation.compare import compare_runs

    if fmt not in ("markdown", "csv"):
        raise UserError(f"table format must be markdown or csv, not '{fmt}'")
    table = compare_runs(_as_list(run_dirs, "run_dirs"), sort_by=sort_by)
    return table.to_markdown() if fmt == "markdown" else table.to_csv()


def export(
    run_dir: str | Path,
    *,
    onnx: bool = True,
    torchscript: bool = False,
    checkpoint: str | None = None,
    out_dir: str | Path | None = None,
    atol: float = 1e-4,
    exporter: str = "auto",
) -> dict[str, Any]:
    """Export a run to ONNX / TorchScript (input: float images in [0, 1]; output: class probabilities) and check parity."""
    from imgcls.export import export_run

    return export_run(
        run_dir,
        onnx=onnx,
        torchscript=torchscript,
        checkpoint=checkpoint,
        out_dir=out_dir,
        atol=atol,
        exporter=exporter,
    )


def taxonomy(source: str | Path, overrides: list[str] | None = None):
    """The Taxonomy of a run directory (from its checkpoint) or of a config's ``data.taxonomy``."""
    source = Path(source)
    if source.is_dir():
        ckpt, _ = load_run_checkpoint(source, "last")
        if not ckpt.get("taxonomy"):
            raise UserError(f"the run '{source}' was trained without a taxonomy")
        from imgcls.taxonomy import Taxonomy

        return Taxonomy.from_dict(ckpt["taxonomy"])
    cfg = load_config(source, overrides)
    if not cfg.data.taxonomy:
        raise UserError(f"'{source}' sets no data.taxonomy (wordnet or a parent-map/label-path file)")
    from imgcls.data.sources import DataSource  # noqa: F401  (registers data sets)
    from imgcls.registry import DATASETS

    source_data = DATASETS.build(cfg.data.name, cfg=cfg.data)
    from imgcls.taxonomy import build_taxonomy

    return build_taxonomy(
        cfg.data.taxonomy,
        source_data.train.class_names,
        rule=cfg.data.taxonomy_rule,
        synsets=source_data.synsets or None,
    )


# ---------------------------------------------------------------------------------- sweep
def sweep(
    cfg: ExperimentConfig | str | Path | None,
    space: Any,
    overrides: list[str] | None = None,
    *,
    trials: int = 20,
    study: str | None = None,
    storage: str | None = None,
    out: str | Path | None = None,
    workers: int = 1,
    final_seeds: int = 0,
    pruner: str = "median",
    prune_startup: int = 3,
    prune_warmup: int = 1,
    seed: int = 0,
    heartbeat: int = 10,
    baseline: bool = True,
    enqueue: list[dict[str, Any]] | None = None,
    report: bool = True,
    worker_index: int = 0,
):
    """Tune an experiment over a search space with Optuna on the validation split (``imgcls sweep``,
    docs/sweeps.md). Running it again with the same ``study``/``out`` resumes the sweep. With
    ``final_seeds`` S the best config is re-trained with seeds 0..S-1 and only those runs are evaluated
    on the test set (mean ± std as in ``imgcls compare``)."""
    from imgcls.engine import sweep as sw

    space_name = Path(space).stem if isinstance(space, (str, Path)) else None
    cfg = _as_config(cfg, overrides)
    if workers < 1 or final_seeds < 0:
        raise UserError(f"--workers must be ≥ 1 and --final-seeds ≥ 0 (got {workers} and {final_seeds})")
    plan = sw.make_plan(
        cfg,
        space,
        trials=trials,
        study=study,
        out=out,
        storage=storage,
        pruner=pruner,
        prune_startup=prune_startup,
        prune_warmup=prune_warmup,
        seed=seed,
        heartbeat=heartbeat,
        space_name=space_name,
    )
    start = time.perf_counter()

    def train_trial(trial_cfg: ExperimentConfig, cbs: list, resume: Path | None = None) -> RunResult:
        if resume is not None:  # a retried trial continues its run from the checkpoint
            return train(resume=resume, callbacks=cbs, evaluate_after=False)
        return train(trial_cfg, callbacks=cbs, evaluate_after=False)

    def report_before_stopping() -> None:
        try:  # the trials (and final runs) finished so far
            sw.write_report(plan, the_study, None, wall_s=time.perf_counter() - start)
        except Exception as exc:  # the interruption is what must be said
            log.warning("warning: the sweep report could not be written (%s)", str(exc).splitlines()[0])

    # SIGTERM/SIGINT/SIGHUP are handled for the whole sweep (the workers and each run nest their own handling):
    # a signal ends it with one line and exit code 128 + signal, never with Python's silent default
    with graceful_stop():
        the_study = sw.open_study(plan)
        if worker_index == 0:
            sw.write_inputs(plan)
            sw.enqueue_baseline(plan, the_study, enqueue, baseline)
        try:
            if workers > 1:
                sw.run_local_workers(plan, workers)
            else:
                sw.run_worker(plan, the_study, train_trial, worker_index)
        except TrainingInterrupted:
            if report:
                report_before_stopping()
            raise
        if not report:
            return sw.SweepResult(plan.out_dir, plan.study_name, sw.redacted(plan.storage_url), None, [])
        # a sweep without any completed trial still gets its report
        if not final_seeds or not sw.has_result(the_study):
            result = sw.write_report(plan, the_study, None, wall_s=time.perf_counter() - start)
        if final_seeds:
            try:
                final = _sweep_final_runs(plan, the_study, final_seeds)
            except TrainingInterrupted:
                report_before_stopping()
                raise
            result = sw.write_report(plan, the_study, final, wall_s=time.perf_counter() - start)
    return result


def _sweep_final_runs(plan, study, n_seeds: int) -> dict[str, Any]:
    """Re-train the best trial's config with seeds 0..n-1 and evaluate each once on the test set; the only
    test-set evaluations a sweep makes. Resumable seed by seed, from the runs in the final folder whose
    config.yaml has that ``train.seed``: an evaluated run is kept (the newest, if there are several: one run
    per seed in the result), a trained but unevaluated one is evaluated, an interrupted one is resumed from
    its checkpoint in its own folder; only a seed without any run is trained anew. A signal stops the
    current run gracefully and ends the sweep with one line saying that the same command resumes it."""
    import yaml

    from imgcls.engine import sweep as sw
    from imgcls.evaluation.compare import METRIC_COLUMNS, compare_runs

    if not sw.has_result(study):
        raise UserError(
            f"no trial of study '{plan.study_name}' completed, so there is no best config to re-train "
            f"(see {plan.out_dir / 'sweep.md'})"
        )
    number = study.best_trial.number
    folder = plan.out_dir / "final" / f"trial_{number:04d}"
    raw = sw.best_config(plan, study)

    def runs_of_seed(seed: int) -> list[Path]:
        """The run folders of ``seed``, newest (by their latest file) first."""
        runs = []
        for config in folder.rglob("config.yaml") if folder.is_dir() else []:
            try:
                run_seed = (yaml.safe_load(config.read_text(encoding="utf-8")) or {})["train"]["seed"]
            except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
                continue  # not a run this sweep can use
            if run_seed == seed:
                runs.append(config.parent)

        def latest(run_dir: Path) -> int:
            files = [run_dir / "config.yaml", run_dir / "metrics.json", *resume_candidates(run_dir)]
            return max(f.stat().st_mtime_ns for f in files if f.is_file())

        return sorted(runs, key=latest, reverse=True)

    chosen: list[Path] = []
    for s in range(n_seeds):
        runs = runs_of_seed(s)
        try:
            if (signum := stop_requested()) is not None:  # arrived between two runs
                raise TrainingInterrupted("stopped before the run", 128 + signum)
            evaluated = [d for d in runs if (d / "metrics.json").is_file()]
            trained = [d for d in runs if (d / "train_summary.json").is_file()]
            if evaluated:  # done (reruns of one seed, e.g. a resumed copy: the newest counts)
                chosen.append(evaluated[0])
            elif trained:  # training finished, the evaluation did not
                with signals_stop_final_evaluation(trained[0]):
                    evaluate(trained[0])
                chosen.append(trained[0])
            elif runs:  # interrupted: continue it in its own folder (from the start if it has no checkpoint)
                chosen.append(train(resume=runs[0], evaluate_after=True).run_dir)
            else:
                run_raw = json.loads(json.dumps(raw))
                run_raw["train"]["seed"], run_raw["output"]["dir"] = s, str(folder)
                chosen.append(train(build_config(run_raw), evaluate_after=True).run_dir)
        except TrainingInterrupted as exc:
            where = runs_of_seed(s)
            raise TrainingInterrupted(
                f"sweep '{plan.study_name}' stopped by {sw.signal_name(exc.exit_code - 128)} during the final "
                f"run of seed {s}"
                + (f" ({where[0]}: its progress is saved)" if where else "")
                + "; final runs already evaluated are kept: rerun the same `imgcls sweep` command to resume",
                exc.exit_code,
            ) from None
    table = compare_runs(chosen, sort_by=None)
    row = table.rows[0]
    metrics = {
        key: {"mean": row.mean(key), "std": row.std(key), "values": row.values.get(key, [])}
        for key, _, _ in METRIC_COLUMNS
    }
    return {
        "trial": number,
        "seeds": sorted(s for s in row.seeds if s is not None),
        "run_dirs": [str(r.run_dir) for r in row.runs],
        "metrics": metrics,
        "table": table.to_markdown(),
    }


def data_cache(
    src: str | Path,
    dst: str | Path,
    *,
    size: int = 96,
    grayscale: bool = False,
    workers: int | None = None,
    chunk_size: int = 256,
    exclude_manifest: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Decode an image-folder class tree once into a resized uint8 cache (resumable); returns a summary."""
    from imgcls.data.cache import build_cache

    return build_cache(
        src,
        dst,
        size=size,
        grayscale=grayscale,
        workers=workers,
        chunk_size=chunk_size,
        exclude_manifest=exclude_manifest,
        overwrite=overwrite,
        progress=progress,
    )


def data_dedup(
    src: str | Path,
    *,
    threshold: int = 2,
    scope: str = "both",
    hash_kind: str = "phash",
    size: int = 96,
    workers: int | None = None,
    out: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Find near-duplicate images of a class tree by perceptual hash; writes and returns the manifest (files untouched)."""
    from imgcls.data.dedup import dedup_folder

    return dedup_folder(
        src,
        threshold=threshold,
        scope=scope,
        kind=hash_kind,
        size=size,
        workers=workers,
        out=out,
        progress=progress,
    )

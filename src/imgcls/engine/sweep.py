"""Hyperparameter sweeps with Optuna: every method gets the same tuning budget on the validation split.

Issue 12 ("fair comparisons"): a trial is an ordinary imgcls run — its own run directory, config and
history — whose config is the experiment plus one ``key=value`` override per search-space key
(:mod:`imgcls.engine.search_space`). A callback reports the monitored validation metric
(``train.monitor``) to Optuna after every epoch and ends the run when the pruner (median or
Hyperband) says so; the trainer has no sweep-specific code. The test split is never evaluated
during a sweep: only the final re-trained seeds of the best config are (``imgcls.api.sweep``).

Storage is Optuna's own RDB storage: an SQLite file in the sweep directory by default, so an
interrupted sweep resumes by running the same command again; a PostgreSQL/MySQL URL lets workers
on several machines share one study (Optuna's distributed design; nothing home-made here). A
trial whose process dies stops sending heartbeats, is marked failed once they are older than the
grace period, and is queued again with the same parameters (``RetryHeartbeatStaleTrialCallback``);
a trial interrupted with Ctrl-C or SIGTERM is queued again the same way. Neither counts as a result, and
the retry continues the run's checkpoint when the run directory is on this machine.

Signals: a worker handles SIGTERM/SIGINT/SIGHUP for its whole run (:func:`imgcls.runtime.signals.graceful_stop`,
nested around each trial's ``api.train``): it starts no trial after one, and ends with one line and exit
code 128 + signal. ``--workers K`` starts the K workers in their own session and forwards the signals the
parent gets to them (so a Ctrl-C reaches each worker once), waits for them and stops the same way.

This module is the machinery (study, workers, pruning callback, report); training itself is
passed in as a function by :func:`imgcls.api.sweep`, which also trains and tests the final seeds.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imgcls.config import ExperimentConfig, build_config
from imgcls.engine.callbacks import Callback
from imgcls.engine.search_space import SearchSpace, decode_choice, load_space, parse_space
from imgcls.errors import ConfigError, TrainingError, TrainingInterrupted, UserError
from imgcls.runtime.signals import graceful_stop, stop_requested

log = logging.getLogger(__name__)

PRUNERS = ("median", "hyperband", "none")
#: keys a search space may not change: they define what is optimised and where runs go
FORBIDDEN_KEYS = ("train.monitor", "output.")
#: config keys that may differ between workers of one study (paths and speed settings of each machine)
MACHINE_LOCAL_KEYS = {
    "data.root",
    "data.num_workers",
    "data.in_memory",
    "data.download",
    "output.dir",
    "output.tensorboard",
    "train.device",
    "train.threads",
    "train.progress",
    "train.log_every",
}
ATTR_CONFIG, ATTR_SPACE, ATTR_MONITOR = "imgcls_config", "imgcls_space", "imgcls_monitor"


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# --------------------------------------------------------------------------------------------- plan
@dataclass
class SweepPlan:
    """Everything a worker needs: the experiment, the space, the budget and where the study lives."""

    cfg: ExperimentConfig
    space: SearchSpace
    trials: int
    study_name: str
    out_dir: Path
    storage_url: str
    pruner: str = "median"
    prune_startup: int = 3  # completed trials before the median pruner prunes anything
    prune_warmup: int = 1  # earliest epoch at which a trial can be pruned
    seed: int = 0
    heartbeat: int = 10  # seconds; a trial silent for 2 × this is considered dead

    @property
    def monitor(self) -> str:
        return self.cfg.train.monitor

    @property
    def direction(self) -> str:
        return "minimize" if self.monitor.endswith("loss") else "maximize"

    @property
    def config_file(self) -> Path:
        return self.out_dir / "sweep_config.yaml"

    @property
    def space_file(self) -> Path:
        return self.out_dir / "space.yaml"


def make_plan(
    cfg: ExperimentConfig,
    space: SearchSpace | dict | str | Path,
    *,
    trials: int,
    study: str | None = None,
    out: str | Path | None = None,
    storage: str | None = None,
    pruner: str = "median",
    prune_startup: int = 3,
    prune_warmup: int = 1,
    seed: int = 0,
    heartbeat: int = 10,
    space_name: str | None = None,
) -> SweepPlan:
    """Check the inputs (one-line errors) and fix the study name, sweep folder and storage URL."""
    if not isinstance(space, SearchSpace):
        if isinstance(space, (str, Path)):
            space_name = space_name or Path(space).stem
            space = load_space(space)
        else:
            space = parse_space(space)
    for key in space.keys:
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in FORBIDDEN_KEYS):
            raise ConfigError(
                f"search space '{key}': a sweep cannot tune {key} (it fixes what is optimised / where runs go)"
            )
    space.check_against(cfg)
    if trials < 1:
        raise UserError(f"--trials must be at least 1, not {trials}")
    if pruner not in PRUNERS:
        raise UserError(f"--pruner must be one of {', '.join(PRUNERS)}, not '{pruner}'")
    if heartbeat < 1:
        raise UserError(f"--heartbeat must be at least 1 second, not {heartbeat}")
    if cfg.data.val_fraction <= 0:
        raise ConfigError("a sweep selects on the validation split: set data.val_fraction > 0 (e.g. 0.1)")
    if cfg.total_epochs() < 1:
        raise ConfigError("a sweep needs at least one training epoch (train.epochs ≥ 1)")
    name = study or "-".join(p for p in (cfg.output.name or "run", space_name) if p)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"study name '{name}' may only hold letters, digits, '-', '_' and '.'")
    out_dir = Path(out) if out is not None else Path(cfg.output.dir) / "sweeps" / name
    url = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    return SweepPlan(
        cfg, space, trials, name, out_dir, url, pruner, prune_startup, prune_warmup, seed, heartbeat
    )


def redacted(url: str) -> str:
    """The storage URL without its password (for reports and logs)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy understands: show the scheme only
        return url.split("://")[0] + "://…"


# --------------------------------------------------------------------------------------------- study
def make_storage(plan: SweepPlan):
    """Optuna's RDB storage with heartbeats: a dead worker's trial is failed and queued again."""
    optuna = _optuna()
    from optuna.storages import RDBStorage

    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    kwargs: dict[str, Any] = {"heartbeat_interval": plan.heartbeat, "grace_period": 2 * plan.heartbeat}
    if retry_cls is not None:
        kwargs["heartbeat_stale_trial_callback"] = retry_cls(max_retry=3)
    else:  # optuna < 4.9
        kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=3)
    engine_kwargs = {"connect_args": {"timeout": 60}} if plan.storage_url.startswith("sqlite") else None
    if plan.storage_url.startswith("sqlite"):
        _make_folder(plan.out_dir, "the sweep folder", "--out")
        if (folder := _sqlite_folder(plan.storage_url)) is not None:
            _make_folder(folder, f"the folder of {redacted(plan.storage_url)}", "--storage")
    try:
        return RDBStorage(plan.storage_url, engine_kwargs=engine_kwargs, **kwargs)
    except ImportError as exc:
        raise UserError(
            f"cannot open storage {redacted(plan.storage_url)}: {exc} (install its driver, "
            "e.g. pip install psycopg2-binary or pymysql)"
        ) from None
    except Exception as exc:  # sqlalchemy's connection errors
        if type(exc).__module__.startswith("sqlalchemy"):
            hint = (
                " (check that its folder exists and is writable)"
                if "unable to open database file" in str(exc)
                else ""
            )
            raise UserError(
                f"cannot open storage {redacted(plan.storage_url)}: {str(exc).splitlines()[0]}{hint}"
            ) from None
        raise


def _sqlite_folder(url: str) -> Path | None:
    """The folder of an SQLite URL's database file (None: in memory, or a URL sqlalchemy cannot parse)."""
    try:
        from sqlalchemy.engine import make_url

        database = make_url(url).database
    except Exception:  # let RDBStorage report the URL itself
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).parent


def _make_folder(folder: Path, what: str, option: str) -> None:
    """Create ``folder`` (as --out is); a folder that cannot be made is one line saying so."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create {what} '{folder}': {exc.strerror or exc}; create the folder or pass another {option}"
        ) from None


def retry_callback(storage):
    return (
        storage.get_heartbeat_stale_trial_callback()
        if hasattr(storage, "get_heartbeat_stale_trial_callback")
        else storage.get_failed_trial_callback()
    )


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s random draws: a hash of the sweep's seed and the trial number, which
    the storage makes unique in the study (across workers, commands and machines)."""
    digest = hashlib.sha256(f"imgcls-sweep:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@functools.lru_cache(maxsize=1)
def _trial_seeded_tpe() -> type:
    optuna = _optuna()

    class TrialSeededTPESampler(optuna.samplers.BaseSampler):
        """Multivariate TPE whose draws for a trial come from a TPE sampler seeded by :func:`trial_seed` (the
        sweep's seed, the trial's number), made for that trial. Two workers or commands that opened the study at
        the same moment, with the same trials in it, still draw different parameters (their trials have
        different numbers); the same study state and trial number give the same parameters. Only Optuna's public
        sampler interface is used: every call is handed to the trial's own TPE sampler, which reads the study's
        finished trials from the storage as a single TPE sampler would."""

        def __init__(self, *, seed: int, **tpe_args: Any) -> None:
            self.base_seed = seed
            self.tpe_args = tpe_args
            self._per_trial: dict[int, Any] = {}  # trial number -> its TPE sampler, until the trial ends

        def _tpe(self, trial):
            if (tpe := self._per_trial.get(trial.number)) is None:
                tpe = optuna.samplers.TPESampler(
                    seed=trial_seed(self.base_seed, trial.number), **self.tpe_args
                )
                self._per_trial[trial.number] = tpe
            return tpe

        def infer_relative_search_space(self, study, trial):
            return self._tpe(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._tpe(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._tpe(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            self._tpe(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            self._tpe(trial).after_trial(study, trial, state, values)
            self._per_trial.pop(trial.number, None)

        def reseed_rng(self) -> None:  # each trial's draws are seeded by its number, by design
            pass

    return TrialSeededTPESampler


def make_sampler(plan: SweepPlan):
    """Seeded multivariate TPE; each trial's random draws come from (seed, trial number), so workers and
    restarts never replay each other's draws and a single uninterrupted worker is reproducible."""
    startup = min(10, max(2, plan.trials // 3))
    return _trial_seeded_tpe()(seed=plan.seed, n_startup_trials=startup, multivariate=True)


def make_pruner(plan: SweepPlan):
    optuna = _optuna()
    if plan.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=plan.prune_startup, n_warmup_steps=plan.prune_warmup
        )
    if plan.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, plan.prune_warmup), max_resource=plan.cfg.total_epochs(), reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(cfg_dict, "")
    return {k: v for k, v in flat.items() if k not in MACHINE_LOCAL_KEYS}


def open_study(plan: SweepPlan):
    """Create the study, or load it and check that it was created for the same experiment and space."""
    optuna = _optuna()
    storage = make_storage(plan)
    study = optuna.create_study(
        study_name=plan.study_name,
        storage=storage,
        direction=plan.direction,
        load_if_exists=True,
        pruner=make_pruner(plan),
    )
    study.sampler = make_sampler(plan)
    mine = {
        ATTR_CONFIG: plan.cfg.model_dump(mode="json"),
        ATTR_SPACE: plan.space.to_dict(),
        ATTR_MONITOR: plan.monitor,
    }
    theirs = study.user_attrs
    if ATTR_SPACE not in theirs:
        for key, value in mine.items():
            study.set_user_attr(key, value)
        return study
    where = f"study '{plan.study_name}' in {redacted(plan.storage_url)}"
    if theirs[ATTR_SPACE] != mine[ATTR_SPACE]:
        raise UserError(
            f"{where} was created with another search space ({', '.join(theirs[ATTR_SPACE])}); "
            "pass the same --space, or a new --study / --out"
        )
    a, b = _comparable(theirs[ATTR_CONFIG]), _comparable(mine[ATTR_CONFIG])
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in diff[:3]) + (
            " …" if len(diff) > 3 else ""
        )
        raise UserError(
            f"{where} was created for another experiment config ({shown}); "
            "pass the same config and overrides, or a new --study / --out"
        )
    return study


# --------------------------------------------------------------------------------------------- trials
class PruningReporter(Callback):
    """Reports the monitored validation metric to the Optuna trial after every epoch and ends the run
    when the trial should be pruned. It runs last among the callbacks, so the pruned epoch is still in
    ``history.csv`` and ``last.pt``."""

    name = "sweep_pruning"

    def __init__(self, trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.epochs = 0

    def on_fit_start(self, trainer) -> None:
        """A resumed run (a retried trial continuing its checkpoint): report the epochs trained before, so
        the trial's learning curve and epoch count are whole."""
        for row in trainer.history:
            value, epoch = float(row[self.monitor]), int(row["epoch"])
            self.epochs = epoch
            if not math.isnan(value):
                self.trial.report(value, epoch)

    def on_epoch_end(self, trainer, metrics: dict[str, Any]) -> None:
        import optuna

        value, epoch = float(metrics[self.monitor]), int(metrics["epoch"])
        self.epochs = epoch
        if not math.isnan(value):
            self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.monitor} {value:.4f} at epoch {epoch} is below the pruner's bar")


def objective_value(history: list[dict[str, Any]], monitor: str, checkpoint: str) -> float:
    """The validation score of the checkpoint the run would be evaluated with (``eval.checkpoint``):
    the best epoch's monitor for ``best``, the last epoch's for ``last``, the averaged weights' for ``ema``/``swa``."""
    if not history:
        return float("nan")
    if checkpoint in ("ema", "swa") and f"{checkpoint}_{monitor}" in history[-1]:
        return float(history[-1][f"{checkpoint}_{monitor}"])
    if checkpoint == "best":
        values = [float(r[monitor]) for r in history if not math.isnan(float(r[monitor]))]
        if not values:
            return float("nan")
        return min(values) if monitor.endswith("loss") else max(values)
    return float(history[-1][monitor])


#: trains one trial: ``train_fn(cfg, callbacks)`` → an object with .run_dir and .history; a retried trial whose
#: run has a checkpoint is continued with ``train_fn(cfg, callbacks, resume=run_dir)``
TrainFn = Callable[..., Any]


def trial_config(plan: SweepPlan, values: dict[str, Any], run_name: str, folder: Path) -> ExperimentConfig:
    from imgcls.config import apply_overrides

    raw = plan.cfg.model_dump(mode="json")
    raw = apply_overrides(raw, plan.space.overrides(values))
    raw["output"]["dir"], raw["output"]["name"] = str(folder), run_name
    return build_config(raw)


def _run_dir_under(root: Path) -> Path | None:
    found = sorted(p for p in root.glob("*") if (p / "config.yaml").is_file()) if root.is_dir() else []
    return found[-1] if found else None


class TrialStopped(Exception):
    """A trial's run stopped by SIGTERM/SIGINT (:class:`TrainingInterrupted`). Not a :class:`UserError`, so
    Optuna does not catch it as a failed result: the trial is queued again and the sweep stops."""

    def __init__(self, interrupted: TrainingInterrupted) -> None:
        super().__init__(str(interrupted))
        self.interrupted = interrupted


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _retry_history(trial) -> list[int]:
    """The numbers of the trials this one retries (oldest first; empty for a new trial)."""
    attrs = getattr(trial, "system_attrs", None)
    if attrs is None:  # optuna.trial.Trial keeps them in the storage only
        attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    history = attrs.get("retry_history")
    if history:
        return [int(n) for n in history]
    return [int(attrs["failed_trial"])] if attrs.get("failed_trial") is not None else []


def _in_use(run_dir: Path) -> bool:
    """Whether another process is training ``run_dir`` (a trial turned stale while its worker still runs):
    the retry then trains anew rather than fail on the run's lock."""
    from imgcls.errors import CheckpointError
    from imgcls.runtime.run_lock import hold_run_lock

    try:
        with hold_run_lock(run_dir):
            return False
    except CheckpointError:
        return True


class TrialObjective:
    """Optuna objective: one imgcls run per trial, in ``<sweep>/trials/trial_NNNN/<time>``; a retried trial
    continues the run of the trial it retries when that run has a checkpoint here."""

    def __init__(self, plan: SweepPlan, train_fn: TrainFn, worker_index: int = 0) -> None:
        self.plan, self.train_fn, self.worker_index = plan, train_fn, worker_index
        self.interrupted: int | None = None

    def resumable_run(self, trial) -> Path | None:
        """For a retry of a killed or interrupted trial: the newest run of its retry history that has a
        checkpoint to continue from (None: train anew, e.g. its run is on another machine)."""
        from imgcls.runs import resume_candidates

        history = _retry_history(trial)
        if not history:
            return None
        candidates = []
        if inherited := trial.user_attrs.get("run_dir"):  # set when the interrupted trial ended
            candidates.append(Path(inherited))
        for number in reversed(history):  # a killed trial never recorded its run: look in its folder
            found = _run_dir_under(self.plan.out_dir / "trials" / f"trial_{number:04d}")
            if found is not None:
                candidates.append(found)
        for run_dir in candidates:
            if (run_dir / "config.yaml").is_file() and resume_candidates(run_dir) and not _in_use(run_dir):
                return run_dir
        return None

    def __call__(self, trial) -> float:
        name = f"trial_{trial.number:04d}"
        folder = self.plan.out_dir / "trials"
        resume = self.resumable_run(trial)
        trial.set_user_attr("run_dir", str(resume) if resume else None)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()} (worker {self.worker_index})")
        reporter = PruningReporter(trial, self.plan.monitor)
        start = time.perf_counter()
        try:
            cfg = trial_config(self.plan, self.plan.space.suggest(trial), name, folder)
            if (signum := stop_requested()) is not None:  # arrived while Optuna set the trial up
                raise TrainingInterrupted(f"stopped by {signal_name(signum)} before it started", 128 + signum)
            if resume is not None:
                log.warning(
                    "trial %d retries trial %d: continuing its run %s from its checkpoint",
                    trial.number,
                    _retry_history(trial)[-1],
                    resume,
                )
                result = self.train_fn(cfg, [reporter], resume=resume)
            else:
                result = self.train_fn(cfg, [reporter])
            value = objective_value(result.history, self.plan.monitor, cfg.eval.checkpoint)
            if math.isnan(value):
                raise TrainingError(f"validation {self.plan.monitor} is NaN")
        except TrainingInterrupted as exc:  # a signal to this process: stop the sweep, the trial is no result
            self.interrupted = trial.number
            raise TrialStopped(exc) from None
        except UserError as exc:  # e.g. the loss diverged at this learning rate: a failed trial, and a result
            trial.set_user_attr("error", str(exc))
            raise
        except KeyboardInterrupt:
            self.interrupted = trial.number
            raise
        finally:
            run_dir = resume or _run_dir_under(folder / name)
            trial.set_user_attr("run_dir", str(run_dir) if run_dir else None)
            trial.set_user_attr("epochs", reporter.epochs)
            trial.set_user_attr("wall_s", time.perf_counter() - start)
        return value


@dataclass
class Counts:
    done: int = 0  # complete, pruned, or failed by an error in the run itself (all count toward the budget)
    running: int = 0
    waiting: int = 0  # queued: the baseline, or retries of killed trials


def counts(study) -> Counts:
    from optuna.trial import TrialState

    c = Counts()
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and t.user_attrs.get("error")
        ):
            c.done += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.WAITING:
            c.waiting += 1
    return c


def sweep_interrupted(plan: SweepPlan, number: int | None, exc: TrainingInterrupted) -> TrainingInterrupted:
    """The one-line stop of a sweep whose trial (``number``; None: between trials) was signalled (same exit
    code: 128 + the signal)."""
    name = signal_name(exc.exit_code - 128) if exc.exit_code > 128 else "a signal"
    where = "between trials" if number is None else f"during trial {number}, which is queued again"
    return TrainingInterrupted(
        f"sweep '{plan.study_name}' stopped by {name} {where}; finished trials are kept in "
        f"{redacted(plan.storage_url)}: rerun the same `imgcls sweep` command to resume",
        exc.exit_code,
    )


#: the logger Optuna reports failed trials on (``optuna.study._optimize``)
OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"


class QuietExpectedFailures(logging.Filter):
    """Optuna logs every failed trial with its traceback. For the expected outcomes that is noise: a run that
    failed by itself (a :class:`UserError`, e.g. a diverged loss) becomes one line with its message, and a
    trial stopped by a signal (:class:`TrialStopped`, a second Ctrl-C) is not logged at all, as the sweep's
    own last line says what happened. Any other exception keeps its traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.quiet: set[int] = set()  # trials whose "failed with value None" follow-up line adds nothing

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        match = re.match(r"Trial (\d+) failed", message)
        number = int(match.group(1)) if match else None
        if isinstance(exc, (TrialStopped, KeyboardInterrupt)):
            self.quiet.add(number if number is not None else -1)
            return False
        if isinstance(exc, UserError):
            head = message.split(" because of the following error:")[0]
            record.msg, record.args = f"{head}: {exc} (a result: the sweep goes on)", ()
            record.exc_info, record.exc_text = None, None
            self.quiet.add(number if number is not None else -1)
            return True
        return not (number in self.quiet and "failed with value" in message)


def run_worker(plan: SweepPlan, study, train_fn: TrainFn, worker_index: int = 0) -> None:
    """Run trials until the study holds ``plan.trials`` results. Trials other workers are running count
    toward the budget; while only those remain, wait: if their worker died they turn stale after the
    grace period, and their retry is run here.

    SIGTERM/SIGINT/SIGHUP are handled for the whole run: a signal during a trial stops its training
    gracefully (the trial is queued again), and no trial starts after one; either way a
    :class:`TrainingInterrupted` (exit code 128 + signal) ends the worker. A local worker (``worker_index``
    > 0) whose parent ``imgcls sweep`` process has gone starts no further trial either."""
    from optuna.storages import fail_stale_trials

    objective = TrialObjective(plan, train_fn, worker_index)
    parent = os.getppid() if worker_index > 0 else None
    quiet = QuietExpectedFailures()
    optuna_log = logging.getLogger(OPTUNA_TRIAL_LOGGER)
    optuna_log.addFilter(quiet)
    try:
        with graceful_stop():
            while True:
                if (signum := stop_requested()) is not None:
                    raise sweep_interrupted(plan, None, TrainingInterrupted("", 128 + signum))
                if parent is not None and os.getppid() != parent:
                    raise TrainingInterrupted(
                        f"sweep worker #{worker_index} stopped: the `imgcls sweep` process that started it has "
                        f"ended; finished trials are kept in {redacted(plan.storage_url)}: rerun the same "
                        "`imgcls sweep` command to resume",
                        128 + int(getattr(signal, "SIGHUP", 1)),
                    )
                fail_stale_trials(study)
                c = counts(study)
                if c.done >= plan.trials:
                    return
                if c.done + c.running >= plan.trials:
                    time.sleep(1.0)  # a cheap query; a dead worker's trial turns stale after 2 × heartbeat
                    continue
                try:
                    study.optimize(objective, n_trials=1, catch=(UserError,), gc_after_trial=False)
                except (KeyboardInterrupt, TrialStopped) as exc:
                    # a signalled trial: FAIL now; queue it again like a dead one
                    if objective.interrupted is not None:
                        retry = retry_callback(study._storage)
                        if retry is not None:
                            retry(study, study.trials[objective.interrupted])
                    if isinstance(exc, TrialStopped):
                        raise sweep_interrupted(plan, objective.interrupted, exc.interrupted) from None
                    raise
    finally:
        optuna_log.removeFilter(quiet)


def worker_command(plan: SweepPlan, worker_index: int) -> list[str]:
    """The command line of one local worker process: the same sweep, joining the same study."""
    return [
        sys.executable,
        "-m",
        "imgcls",
        "sweep",
        str(plan.config_file),
        "--space",
        str(plan.space_file),
        "--trials",
        str(plan.trials),
        "--study",
        plan.study_name,
        "--storage",
        plan.storage_url,
        "--out",
        str(plan.out_dir),
        "--pruner",
        plan.pruner,
        "--prune-startup",
        str(plan.prune_startup),
        "--prune-warmup",
        str(plan.prune_warmup),
        "--seed",
        str(plan.seed),
        "--heartbeat",
        str(plan.heartbeat),
        "--workers",
        "1",
        "--worker-index",
        str(worker_index),
        "--no-baseline",
        "--no-report",
    ]


def write_inputs(plan: SweepPlan) -> None:
    """The resolved experiment and space, in the sweep folder (what local workers read)."""
    from imgcls.config import config_to_yaml

    plan.out_dir.mkdir(parents=True, exist_ok=True)
    plan.config_file.write_text(config_to_yaml(plan.cfg))
    plan.space_file.write_text(yaml.safe_dump(plan.space.to_dict(), sort_keys=False))


def _stopped_by(code: int) -> int | None:
    """The stop signal (SIGTERM/SIGINT/SIGHUP) a worker's exit code says it ended by: 128 + n when it stopped
    gracefully, -n when the signal killed it; None for any other exit."""
    from imgcls.runtime.signals import STOP_SIGNALS

    signum = -code if code < 0 else code - 128
    return signum if signum in STOP_SIGNALS else None


def run_local_workers(plan: SweepPlan, workers: int) -> None:
    """``--workers K``: K worker processes on this machine, sharing the study through its storage.

    The workers run in their own session, so a terminal's Ctrl-C / hang-up reaches only this process, and
    this process forwards every SIGTERM/SIGINT/SIGHUP it gets to each worker (exactly once each, so a
    single Ctrl-C is a graceful stop and a second one stops at once, as for ``imgcls train``). It waits for
    them and raises :class:`TrainingInterrupted` (exit code 128 + signal); workers that were all stopped by
    a signal someone sent them directly end the sweep the same way rather than as "failed"."""
    from imgcls.runtime.cpu_threads import shared_cpu_env
    from imgcls.runtime.signals import QUIET_INTERRUPTION_ENV, active_stop_signals

    write_inputs(plan)
    import imgcls

    # the workers import the same imgcls as this process (e.g. a source checkout on PYTHONPATH)
    src = str(Path(imgcls.__file__).resolve().parents[1])
    env = {
        # the workers share this machine's cores: cores // K threads each, not K × all of them
        **shared_cpu_env(workers),
        "PYTHONUNBUFFERED": "1",
        QUIET_INTERRUPTION_ENV: "1",  # this process reports the interruption, once for all workers
        "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
    }
    procs: list[subprocess.Popen] = []
    received: list[int] = []
    told: set[int] = set()  # workers the first signal was forwarded to

    def forward(signum: int, frame) -> None:
        received.append(signum)
        for p in list(procs):
            with contextlib.suppress(OSError):
                p.send_signal(signum)
            told.add(p.pid)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, forward) for s in active_stop_signals()}
    try:
        if (pending := stop_requested()) is not None:  # arrived before this handler (api.sweep's recorded it)
            received.append(pending)
        for i in range(workers):
            if received:  # no new worker once the sweep is asked to stop
                break
            procs.append(subprocess.Popen(worker_command(plan, i + 1), env=env, start_new_session=True))
        for p in procs:  # started while the first signal was being forwarded
            if received and p.pid not in told:
                with contextlib.suppress(OSError):
                    p.send_signal(received[0])
                told.add(p.pid)
        codes = [p.wait() for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    where = f"finished trials are kept in {redacted(plan.storage_url)}: rerun the same `imgcls sweep` command to resume"
    if received:
        raise TrainingInterrupted(
            f"sweep '{plan.study_name}' stopped by {signal_name(received[0])}: its {len(procs)} worker(s) "
            f"stopped, their running trials are queued again; {where}",
            128 + received[0],
        )
    bad = [(i + 1, c) for i, c in enumerate(codes) if c != 0]
    if bad and all(_stopped_by(c) is not None for _, c in bad):
        signum = _stopped_by(bad[0][1])
        assert signum is not None
        raise TrainingInterrupted(
            f"sweep '{plan.study_name}' stopped: worker(s) "
            + ", ".join(f"#{i} by {signal_name(_stopped_by(c) or 0)}" for i, c in bad)
            + f", their running trials are queued again; {where}",
            128 + signum,
        )
    if bad:
        raise UserError(
            f"sweep worker(s) {', '.join(f'#{i} ({_exit_text(c)})' for i, c in bad)} failed; "
            "their messages are above; run the same command again to resume"
        )


def _exit_text(code: int) -> str:
    return f"killed by {signal_name(-code)}" if code < 0 else f"exit code {code}"


def enqueue_baseline(
    plan: SweepPlan, study, extra: list[dict[str, Any]] | None = None, baseline: bool = True
) -> None:
    """Queue the experiment's own values (those inside the space) as the first trial, so the tuned
    result can only match or beat the untuned config on validation; then any ``extra`` parameter sets."""
    if study.trials:
        return
    if baseline and (defaults := plan.space.defaults_in(plan.cfg)):
        study.enqueue_trial(defaults, user_attrs={"baseline": True})
    for params in extra or []:
        unknown = sorted(set(params) - set(plan.space.keys))
        if unknown:
            raise UserError(
                f"enqueued parameters {unknown} are not in the search space ({', '.join(plan.space.keys)})"
            )
        study.enqueue_trial(params)


# --------------------------------------------------------------------------------------------- results
@dataclass
class SweepResult:
    out_dir: Path
    study_name: str
    storage: str
    best: dict[str, Any] | None
    trials: list[dict[str, Any]]
    final: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def report(self) -> Path:
        return self.out_dir / "sweep.md"


def has_result(study) -> bool:
    """Whether any trial completed (so there is a best config)."""
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, parameters, epochs, time, run dir, and a note."""
    from optuna.trial import TrialState

    retried_as = {}
    for t in study.trials:
        if (orig := t.system_attrs.get("failed_trial")) is not None:
            history = t.system_attrs.get("retry_history", [orig])
            retried_as[history[-1]] = t.number
    rows = []
    for t in study.trials:
        state = t.state.name.lower()
        note = ""
        if t.state == TrialState.PRUNED:
            note = f"pruned after epoch {max(t.intermediate_values) if t.intermediate_values else 0}"
        elif t.state == TrialState.FAIL and t.user_attrs.get("error"):
            note = "error: " + str(t.user_attrs["error"])
        elif t.state == TrialState.FAIL:
            note = "killed or interrupted; not a result" + (
                f"; retried as trial {retried_as[t.number]}" if t.number in retried_as else ""
            )
        if (orig := t.system_attrs.get("failed_trial")) is not None:
            note = (
                note + "; " if note else ""
            ) + f"retry of trial {t.system_attrs.get('retry_history', [orig])[-1]}"
        if t.user_attrs.get("baseline"):
            note = (note + "; " if note else "") + "baseline (the config's own values)"
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(
            {
                "number": t.number,
                "state": state,
                "value": t.value,
                "params": {k: decode_choice(v) for k, v in t.params.items()},
                "epochs": len(t.intermediate_values),
                "duration_s": duration,
                "run_dir": t.user_attrs.get("run_dir"),
                "counted": state in ("complete", "pruned")
                or bool(state == "fail" and t.user_attrs.get("error")),
                "note": note,
            }
        )
    return rows


def best_config(plan: SweepPlan, study) -> dict[str, Any]:
    """The experiment config with the best trial's parameters (output.name = <study>-best)."""
    best = study.best_trial
    raw = trial_config(
        plan,
        {k: decode_choice(v) for k, v in best.params.items()},
        f"{plan.study_name}-best",
        Path(plan.cfg.output.dir),
    ).model_dump(mode="json")
    return raw


def _plots(study, out_dir: Path) -> dict[str, str]:
    """Optuna's optimisation history, parameter importances and learning curves as PNGs (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    made: dict[str, str] = {}
    for name, fn in (
        ("history", vis.plot_optimization_history),
        ("importance", vis.plot_param_importances),
        ("intermediate", vis.plot_intermediate_values),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(out_dir / f"{name}.png", dpi=100)
            plt.close(fig)
            made[name] = f"{name}.png"
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
            made[name] = f"not drawn: {exc}"
    return made


def importances(study) -> dict[str, float] | str:
    from optuna.trial import TrialState

    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_complete < 2:
        return f"needs ≥ 2 completed trials (have {n_complete})"
    try:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return f"not computed: {exc}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if not isinstance(value, str) else value


def write_report(
    plan: SweepPlan, study, final: dict[str, Any] | None = None, wall_s: float | None = None
) -> SweepResult:
    """sweep.json, sweep.md, best_config.yaml and the plots, from the study as it is now."""
    from optuna.trial import TrialState

    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = None
    if complete:
        b = study.best_trial
        best = {
            "number": b.number,
            "value": b.value,
            "params": {k: decode_choice(v) for k, v in b.params.items()},
            "run_dir": b.user_attrs.get("run_dir"),
            "config": best_config(plan, study),
        }
        (out / "best_config.yaml").write_text(yaml.safe_dump(best["config"], sort_keys=False))
    total_epochs = plan.cfg.total_epochs()
    finished = [r for r in rows if r["state"] in ("complete", "pruned")]
    run_epochs = sum(r["epochs"] for r in finished)
    budget = len(finished) * total_epochs
    pruning = {
        "trial_epochs_run": run_epochs,
        "trial_epochs_without_pruning": budget,
        "saved_fraction": 1 - run_epochs / budget if budget else 0.0,
        "pruned_trials": sum(r["state"] == "pruned" for r in rows),
    }
    imp = importances(study)
    plots = _plots(study, out)
    summary = {
        "study": plan.study_name,
        "storage": redacted(plan.storage_url),
        "direction": plan.direction,
        "monitor": plan.monitor,
        "objective": f"validation {plan.monitor} of the eval.checkpoint={plan.cfg.eval.checkpoint} weights",
        "trials_target": plan.trials,
        "trials_counted": sum(r["counted"] for r in rows),
        "sampler": f"TPE (multivariate, seed {plan.seed})",
        "pruner": plan.pruner,
        "epochs_per_trial": total_epochs,
        "space": plan.space.to_dict(),
        "best": best,
        "importance": imp,
        "pruning": pruning,
        "plots": plots,
        "wall_s": wall_s,
        "trials": rows,
        "final": final,
    }
    (out / "sweep.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "sweep.md").write_text(render_markdown(plan, summary))
    return SweepResult(out, plan.study_name, redacted(plan.storage_url), best, rows, final)


def render_markdown(plan: SweepPlan, s: dict[str, Any]) -> str:
    better = "lower" if plan.direction == "minimize" else "higher"
    md = [
        f"# Sweep `{s['study']}`",
        "",
        f"{s['trials_counted']} of {s['trials_target']} trials counted; objective: {s['objective']} ({better} is better); "
        f"sampler: {s['sampler']}; pruner: {s['pruner']}; storage: `{s['storage']}`.",
        "The test split was not used by any trial; only the final runs below were evaluated on it.",
        "",
        "## Search space",
        "",
        "| key | distribution |",
        "|---|---|",
    ]
    md += [f"| `{p.key}` | {p.describe()} |" for p in plan.space.params]
    md += ["", "## Best trial", ""]
    b = s["best"]
    if b is None:
        md.append("No trial has completed yet.")
    else:
        md += [
            f"Trial {b['number']}: validation {plan.monitor} **{b['value']:.4f}** with "
            + ", ".join(f"`{k}={_fmt(v)}`" for k, v in b["params"].items())
            + ".",
            f"Run: `{b['run_dir']}`. Full config: `best_config.yaml` (`imgcls train {plan.out_dir / 'best_config.yaml'}`).",
        ]
    if s["final"]:
        f = s["final"]
        md += [
            "",
            f"## Final runs: best config re-trained with seeds {f['seeds']}, evaluated once on the test set",
            "",
            f["table"].rstrip(),
        ]
    imp = s["importance"]
    md += ["", "## Parameter importance (Optuna)", ""]
    md += (
        [f"- `{k}`: {v:.3f}" for k, v in imp.items()] if isinstance(imp, dict) else [f"Not available: {imp}."]
    )
    p = s["pruning"]
    md += [
        "",
        "## Pruning",
        "",
        f"{p['pruned_trials']} trial(s) pruned; {p['trial_epochs_run']} trial-epochs run of "
        f"{p['trial_epochs_without_pruning']} without pruning ({100 * p['saved_fraction']:.0f} % saved).",
    ]
    md += [
        "",
        "## Trials",
        "",
        f"| # | state | {plan.monitor} | "
        + " | ".join(f"`{k}`" for k in plan.space.keys)
        + " | epochs | time (s) | note |",
        "|---:|---|---:|" + "---|" * len(plan.space.keys) + "---:|---:|---|",
    ]
    for r in s["trials"]:
        value = "–" if r["value"] is None else f"{r['value']:.4f}"
        params = [_fmt(r["params"][k]) if k in r["params"] else "–" for k in plan.space.keys]
        dur = "–" if r["duration_s"] is None else f"{r['duration_s']:.1f}"
        md.append(
            f"| {r['number']} | {r['state']} | {value} | "
            + " | ".join(params)
            + f" | {r['epochs']} | {dur} | {r['note']} |"
        )
    plots = [f"![{k}]({v})" for k, v in s["plots"].items() if v.endswith(".png")]
    md += [
        "",
        "## Plots",
        "",
        *plots,
        "",
        f"Live view: `optuna-dashboard {s['storage']}` (pip install optuna-dashboard).",
    ]
    return "\n".join(md) + "\n"

"""Training callbacks: checkpointing, early stopping, a time budget, history (CSV + TensorBoard) and progress.

Methods plug behaviour into the loop through callbacks (and heads/losses), never through
method-specific branches in the trainer. Every callback can save and restore its state, so a
resumed run continues exactly. Weight averaging (EMA, SWA) lives in ``engine/averaging.py``.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from imgcls.runtime.distributed import broadcast_object

if TYPE_CHECKING:
    from imgcls.engine.trainer import Trainer

console = Console(stderr=True)


class Callback:
    """Hooks called by the trainer; all optional. ``metrics`` is the epoch's row of history."""

    name = "callback"

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_stage_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_train_step_end(self, trainer: Trainer) -> None: ...
    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...
    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...
    def on_interrupt(self, trainer: Trainer) -> None:
        """SIGTERM/SIGINT mid-epoch, after a finished step: save what is needed to resume."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # weight averaging (EMA, SWA): averaged weights travel with every checkpoint
    def averaged_state_dict(self) -> dict[str, Any] | None:
        """Averaged model weights this callback keeps (None: it keeps none)."""
        return None

    def load_averaged(self, trainer: Trainer, weights: dict[str, Any]) -> None:
        """Restore the averaged weights returned by :meth:`averaged_state_dict` (on resume)."""


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best``; NaN/inf never count as a best score."""
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class EarlyStopping(Callback):
    """Ends the current stage when the monitored validation metric stops improving."""

    name = "early_stopping"

    def __init__(self, monitor: str, patience: int, min_delta: float = 0.0) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = "min" if monitor.endswith("loss") else "max"
        self.best: float | None = None
        self.bad_epochs = 0

    def on_stage_start(self, trainer: Trainer) -> None:
        self.best, self.bad_epochs = None, 0

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = float(metrics[self.monitor])
        if improved(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.stop_stage(
                    f"early stopping: {self.monitor} did not improve for {self.patience} epochs"
                )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


class StopAtValAcc(Callback):
    """Ends a stage once validation accuracy reaches the stage's ``stop_at_val_acc`` (seed 001 polish)."""

    name = "stop_at_val_acc"

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        target = trainer.stage.stop_at_val_acc
        if target is not None and metrics["val_acc"] >= target:
            trainer.stop_stage(f"val_acc {metrics['val_acc']:.4f} ≥ {target}")


class TimeBudget(Callback):
    """Fits a single-stage run's epoch count to ``train.time_budget_s`` (the epochs' wall clock, validation
    included). Lightning's ``max_time`` stops a run when the time is up, mid-schedule; here the run plans its
    epochs so that the learning-rate schedule (warm-up, cosine decay) still completes. After the first epoch it
    plans as many epochs as fit (at most ``train.epochs``); after every later one it checks the plan against the
    time spent and the pace of the last ``RECENT`` epochs, and shortens it when the rest would overrun (a shared
    machine that slows down) — it never lengthens it, so the plan only moves towards the budget. Epochs are
    predicted by pixel count (progressive resizing's small early epochs cost less). Plans are broadcast from
    rank 0 and kept in every checkpoint with the history, so a resumed run continues the plan instead of timing
    afresh."""

    name = "time_budget"
    RECENT = 3  # epochs whose pace predicts the rest

    def __init__(self, budget_s: float) -> None:
        self.budget_s = float(budget_s)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        state = trainer.state
        if state.stage != 0:
            return
        # a resumed epoch's epoch_time_s misses the time before the interruption; its train_time_s has it
        times = [max(float(r["epoch_time_s"]), float(r.get("train_time_s", 0.0))) for r in trainer.history]
        done = len(times)
        cost = lambda e: epoch_cost(trainer, e)  # noqa: E731
        recent = range(max(0, done - self.RECENT), done)
        pace = sum(times[i] / cost(i) for i in recent) / len(recent)  # seconds of a full-size epoch
        cap = int(trainer.stage.epochs or 0)
        epochs = broadcast_object(
            planned_epochs(self.budget_s, sum(times), done, pace, cap, cost), trainer.dist
        )
        first = state.planned_epochs is None
        if not first and epochs >= state.planned_epochs:
            return
        trainer.plan_stage_epochs(epochs)
        if trainer.dist.is_main:
            # the cap as set (the stage's own epochs are the plan now)
            configured = trainer.cfg.resolved_stages()[0].epochs
            why = (
                f"the first epoch took {times[0]:.1f} s"
                if first
                else f"epochs now take {pace:.1f} s (the last {len(recent)}), {sum(times):.0f} s spent"
            )
            console.print(
                f"time budget {self.budget_s:g} s: {why} -> {epochs} epochs (at most {configured}, as configured)",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


def epoch_cost(trainer: Trainer, epoch: int) -> float:
    """Relative compute of training epoch ``epoch`` (1: full-size images; less while progressive resizing
    trains on smaller ones)."""
    augment = trainer.augment
    return (
        1.0 if augment is None else augment.pixel_fraction(epoch, int(trainer.preprocess_meta["image_size"]))
    )


def planned_epochs(budget_s: float, spent_s: float, done: int, pace_s: float, cap: int, cost) -> int:
    """Epochs in all when ``done`` took ``spent_s`` and each further epoch e takes ``pace_s * cost(e)``: as many
    as fit in ``budget_s``, at least ``done`` (trained already), at most ``cap``."""
    left, epochs = budget_s - spent_s, done
    while epochs < cap:
        need = pace_s * cost(epochs)
        if need > left:
            break
        left -= need
        epochs += 1
    return max(epochs, done)


class Checkpointer(Callback):
    """Writes ``last.pt`` (full resumable state) every epoch and ``best.pt`` when the monitor improves.

    With ``keep_every`` = N (``output.keep_every_epochs``, seed 004 saved every 10 epochs) it also keeps
    ``epoch_{n}.pt`` (weights and metadata, like ``best.pt``) after every epoch n that is a multiple of N,
    and prunes any other ``epoch_*.pt`` in the folder (left by an earlier attempt with another N, or from
    epochs after the one a run was resumed at).
    """

    name = "checkpointer"

    def __init__(self, directory: Path, monitor: str, keep_every: int | None = None) -> None:
        self.directory, self.monitor = directory, monitor
        self.mode = "min" if monitor.endswith("loss") else "max"
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.keep_every = keep_every

    def _periodic(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        epoch = int(metrics["epoch"])
        if epoch % self.keep_every == 0:
            trainer.save_checkpoint(self.directory / f"epoch_{epoch}.pt", full=False, metrics=metrics)
        for path in self.directory.glob("epoch_*.pt"):
            n = path.stem.removeprefix("epoch_")
            if not n.isdigit() or int(n) % self.keep_every != 0 or int(n) > epoch:
                path.unlink(missing_ok=True)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = float(metrics[self.monitor])
        if improved(value, self.best, self.mode):
            self.best, self.best_epoch = value, int(metrics["epoch"])
            if trainer.dist.is_main:
                trainer.save_checkpoint(self.directory / "best.pt", full=False, metrics=metrics)
        if trainer.dist.is_main:
            trainer.save_checkpoint(self.directory / "last.pt", full=True, metrics=metrics)
            if self.keep_every:
                self._periodic(trainer, metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


class RecoveryCheckpointer(Callback):
    """Mid-epoch ``recovery.pt`` (full state + position in the epoch, RNG states, partial metric sums) every
    ``every_steps`` optimiser steps and/or ``every_minutes`` minutes, and on SIGTERM/SIGINT. There is at most
    one recovery file: each write replaces it (atomically) and it is deleted once the epoch's ``last.pt`` is
    written. ``write_s`` / ``writes`` measure what the writes cost."""

    name = "recovery"

    def __init__(
        self, directory: Path, every_steps: int | None = None, every_minutes: float | None = None
    ) -> None:
        self.directory, self.every_steps, self.every_minutes = directory, every_steps, every_minutes
        self.path = directory / "recovery.pt"
        self.last_write = time.monotonic()
        self.write_s, self.writes = 0.0, 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self.last_write = time.monotonic()

    def save(self, trainer: Trainer) -> None:
        if trainer.dist.is_main:
            started = time.perf_counter()
            trainer.save_checkpoint(self.path, full=True)
            self.write_s += time.perf_counter() - started
            self.writes += 1
        self.last_write = time.monotonic()

    def on_train_step_end(self, trainer: Trainer) -> None:
        if trainer.state.batch_in_epoch >= trainer.batches_per_epoch:
            return  # the epoch's end writes last.pt
        due_steps = self.every_steps is not None and trainer.state.step % self.every_steps == 0
        due_time = (
            self.every_minutes is not None and time.monotonic() - self.last_write >= 60 * self.every_minutes
        )
        if due_steps or due_time:
            self.save(trainer)

    def on_interrupt(self, trainer: Trainer) -> None:
        self.save(trainer)
        trainer.interrupt_checkpoint = self.path

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.dist.is_main:  # last.pt (written just before) supersedes it
            self.path.unlink(missing_ok=True)


class PlateauFeed(Callback):
    """Hands each epoch's validation metrics to a schedule that adapts to them (``schedule.name: plateau``,
    :class:`imgcls.engine.optim.Schedule`); runs at validation end, before any checkpoint is written, so
    ``last.pt`` holds the updated schedule. Does nothing while weight averaging (SWA) drives the lr."""

    name = "plateau_feed"

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if getattr(trainer.scheduler, "adapts_to_metrics", False) and not trainer.scheduler_paused:
            trainer.scheduler.observe(metrics)


class HistoryLogger(Callback):
    """One row per epoch in ``history.csv`` (rewritten whole, so resume never duplicates rows) and
    TensorBoard scalars (epoch metrics, and the training loss every ``log_every`` steps)."""

    name = "history"

    def __init__(self, run_dir: Path, tensorboard: bool, log_every: int) -> None:
        self.run_dir, self.tensorboard, self.log_every = run_dir, tensorboard, log_every
        self.writer = None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.tensorboard and trainer.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(self.run_dir / "tensorboard"), purge_step=trainer.state.step or None
            )

    def on_train_step_end(self, trainer: Trainer) -> None:
        if self.writer is not None and trainer.state.step % self.log_every == 0:
            self.writer.add_scalar("train/loss_step", trainer.last_loss(), trainer.state.step)
            self.writer.add_scalar("train/lr", trainer.current_lr(), trainer.state.step)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if not trainer.dist.is_main:
            return
        fields: list[str] = []
        for row in trainer.history:  # the trainer's history (saved in every checkpoint) is the one record
            fields += [k for k in row if k not in fields]
        with open(self.run_dir / "history.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(trainer.history)
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.writer.add_scalar(f"epoch/{key}", value, int(metrics["epoch"]))
            self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressPrinter(Callback):
    """A rich progress bar (loss, img/s, ETA) on terminals and one summary line per epoch."""

    name = "progress"

    def __init__(self, live: bool) -> None:
        self.live = live and console.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.start = 0.0

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.start = time.perf_counter()
        if not (self.live and trainer.dist.is_main):
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[ips]:.0f} img/s"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            f"{trainer.stage.name} epoch {trainer.state.epoch_in_stage + 1}/{trainer.stage.epochs}",
            total=trainer.batches_per_epoch,
            loss=float("nan"),
            ips=0.0,
        )

    def on_train_step_end(self, trainer: Trainer) -> None:
        if self.progress is not None and trainer.state.batch_in_epoch % 5 == 0:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            self.progress.update(
                self.task,
                completed=trainer.state.batch_in_epoch,
                loss=trainer.last_loss(),
                ips=trainer.state.images_in_epoch / elapsed,
            )

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if trainer.dist.is_main:
            extra = "".join(
                f" {k} {metrics[k]:.4f}" for k in metrics if k.startswith(("ema_val_acc", "swa_val_acc"))
            )
            console.print(
                f"[{metrics['stage']}] epoch {metrics['epoch']}/{trainer.total_epochs}  "
                f"train_loss {metrics['train_loss']:.4f}  train_acc {metrics['train_acc']:.4f}  "
                f"val_loss {metrics['val_loss']:.4f}  val_acc {metrics['val_acc']:.4f}{extra}  "
                f"lr {metrics['lr']:.2e}  {metrics['img_per_s']:.0f} img/s  {metrics['epoch_time_s']:.1f}s",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.progress is not None:
            self.progress.stop()

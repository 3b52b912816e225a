"""The training loop, readable top to bottom.

An experiment is a list of stages (default: one). For each stage the trainer applies the
stage's freezing and head, builds its optimiser and per-step schedule, then runs epochs:
train (augment → the objective's forward and named loss terms → backward → step), validate on
the validation split through the same objective, and hand the epoch's metrics to the callbacks
(checkpointing, early stopping, history, progress, weight averaging). Methods never add branches
here: they plug in through heads (forward/loss/predict), objectives (``engine/objective.py``:
distillation), augmentation, stages and callbacks.

Exact resume: every source of randomness in an epoch (shuffle order, augmentation, dropout)
is derived from ``(seed, epoch)``, and ``last.pt`` stores model, optimiser, scheduler, scaler,
progress and callback states, so an interrupted run resumed from its last checkpoint reaches
the same weights as an uninterrupted one (in deterministic mode). Mid-epoch recovery checkpoints
(``recovery.pt``: every N steps / T minutes, and on SIGTERM/SIGINT) also hold the position in the
epoch, the random-number states and the partial metric sums (:class:`EpochProgress`), so a run
resumed mid-epoch skips the batches it trained on and ends bit-identical too.

Divergence: a non-finite loss stops the run (``train.on_nonfinite: stop``) or drops that step
(``skip_step``, up to ``train.max_skipped_steps`` in a row); a non-finite validation loss or
parameter stops the run before any checkpoint is written, so ``last.pt``/``best.pt`` stay finite.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgcls.config import (
    ExperimentConfig,
    OptimConfig,
    ScheduleConfig,
    StageConfig,
    config_to_yaml,
    stage_section,
)
from imgcls.data.loader import epoch_generator
from imgcls.data.preprocess import Preprocess
from imgcls.engine.autotune import (
    PRECISIONS,
    Execution,
    candidate_grid,
    default_execution,
    fused_candidates,
    measure,
    measure_optimizer,
    needs_tuning,
    time_candidate,
    training_step_factory,
)
from imgcls.engine.callbacks import Callback, console
from imgcls.engine.objective import HeadObjective, Objective
from imgcls.engine.optim import build_optimizer, build_scheduler
from imgcls.errors import ConfigError, TrainingError, TrainingInterrupted
from imgcls.models.classifier import Classifier
from imgcls.runs import apply_stage_head, load_weights, stage_head_parameters
from imgcls.runtime import checkpoint as ckpt_io
from imgcls.runtime.batch import Batch
from imgcls.runtime.distributed import DistInfo, all_reduce_sum, broadcast_object
from imgcls.runtime.memory import (
    PEAK_OVER_SAVED,
    activation_bytes_per_image,
    available_memory_bytes,
    readable_bytes,
)
from imgcls.runtime.precision import autocast
from imgcls.runtime.signals import stop_requested


def device_memory_bytes(device: torch.device) -> int | None:
    """The total memory of ``device`` (a GPU's, or this machine's for the CPU); None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


@dataclass
class TrainState:
    stage: int = 0  # index of the current stage
    epoch_in_stage: int = 0  # epochs finished in the current stage
    global_epoch: int = 0  # epochs finished overall
    step: int = 0  # optimiser steps overall
    batch_in_epoch: int = 0
    images_in_epoch: int = 0
    skipped_steps: int = 0  # optimiser steps dropped for a non-finite loss (train.on_nonfinite=skip_step)
    planned_epochs: int | None = (
        None  # the stage's epochs as fitted to train.time_budget_s (None: as configured)
    )


def rng_states(augment: torch.Generator) -> dict[str, Any]:
    """Every random-number state a training step may draw from (plain types: safe for weights_only)."""
    np_state = np.random.get_state(legacy=False)
    states: dict[str, Any] = {
        "augment": augment.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any], augment: torch.Generator) -> None:
    augment.set_state(states["augment"])
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class EpochProgress:
    """The running state of the epoch being trained: what a mid-epoch checkpoint must hold to resume exactly."""

    epoch: int
    augment_rng: torch.Generator
    sums: dict[str, torch.Tensor]
    correct: torch.Tensor
    seen: int = 0
    batches: int = 0  # batches of the epoch's order already trained on
    elapsed_s: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "seen": self.seen,
            "elapsed_s": self.elapsed_s,
            "sums": {k: v.detach().cpu() for k, v in self.sums.items()},
            "correct": self.correct.detach().cpu(),
            "rng": rng_states(self.augment_rng),
        }


class Trainer:
    def __init__(
        self,
        cfg: ExperimentConfig,
        model: Classifier,
        train_loader,
        val_loader,
        *,
        device: torch.device,
        preprocess_meta: dict[str, Any],
        class_names: list[str],
        callbacks: list[Callback] = (),
        augment=None,
        dist: DistInfo = DistInfo(),
        taxonomy=None,
        objective: Objective | None = None,
    ) -> None:
        self.cfg, self.model, self.device, self.dist = cfg, model.to(device), device, dist
        self.train_loader, self.val_loader = train_loader, val_loader
        self.callbacks = list(callbacks)
        self.augment = augment if augment is not None and not augment.is_identity else None
        self.preprocess_meta, self.class_names, self.taxonomy = preprocess_meta, class_names, taxonomy
        self.stages = cfg.resolved_stages()
        self.total_epochs = cfg.total_epochs()
        self.state = TrainState()
        self.train_time_s = 0.0  # wall clock of fit(), the attempts before a resume included (set by fit)
        self._apply_execution(default_execution(cfg.train, device))
        self.objective = (objective if objective is not None else HeadObjective()).to(device)
        # the loop also steps on a final partial accumulation group, so round up
        self.batches_per_epoch = len(train_loader)
        self.steps_per_epoch = max(1, math.ceil(len(train_loader) / cfg.train.accumulate))
        self.history: list[dict[str, Any]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.frozen: list[nn.Module] = []
        self.loss_weights: dict[str, float] = {}
        self._loss_weights_checked = False
        self.label_smoothing = cfg.train.label_smoothing
        self.scheduler_paused = False  # weight-averaging callbacks (SWA) take over the lr
        self._stop_reason: str | None = None
        self._last_loss = torch.zeros((), device=device)
        self.epoch_progress: EpochProgress | None = None  # set while an epoch trains
        self._resume_epoch: dict[str, Any] | None = None  # a mid-epoch checkpoint's EpochProgress state
        self._bad_group = False  # the current accumulation group met a non-finite loss (skip_step)
        self._bad_in_row = 0
        self.interrupt_checkpoint: Path | None = None  # where a callback saved the state on SIGTERM/SIGINT
        #: per-class validation error (1 − recall) of the last epoch, for callbacks (e.g. confusion sampling)
        self.val_class_error: list[float] | None = None

    # ------------------------------------------------------------------ public helpers
    @property
    def stage(self) -> StageConfig:
        return self.stages[self.state.stage]

    def stop_stage(self, reason: str) -> None:
        self._stop_reason = reason

    def last_loss(self) -> float:
        return float(self._last_loss)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer else 0.0

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    # ------------------------------------------------------------------ precision and layout
    def _apply_execution(self, execution: Execution) -> None:
        self.execution = execution
        self.amp_dtype = execution.amp_dtype
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if execution.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.prep = Preprocess.from_meta(self.preprocess_meta, self.device, execution.channels_last)

    def _tune_execution(self) -> None:
        """Measure precision × layout on a copy of the model (``engine/autotune.py``), within
        ``train.autotune_max_share`` of the run's estimated time; rank 0's choice is every rank's."""
        batch = next(iter(self.train_loader)).to(self.device)
        optim_cfg = self._stage_section(self.cfg.optim, self.stages[0].optim, "optim")
        make_step = training_step_factory(self.objective, optim_cfg, batch, self.device, self.prep)
        grid = candidate_grid(self.cfg.train, self.device)
        probe_ms = time_candidate(make_step(copy.deepcopy(self.model)), "fp32", False, 0, 1)
        total_steps = max(1, self.total_epochs * self.steps_per_epoch * self.cfg.train.accumulate)
        budget_ms = self.cfg.train.autotune_max_share * probe_ms * total_steps
        per_candidate = int(budget_ms // (len(grid) * probe_ms))  # steps each candidate can afford
        if per_candidate < 2:
            execution = default_execution(self.cfg.train, self.device)
            if len(grid) > 1:
                execution.source = "default (run too short to measure)"
        else:
            if len(grid) > 1:
                passes = 2 if per_candidate >= 6 else 1  # forwards then backwards when affordable
                steps = min(3, per_candidate // passes - 1)
                execution = measure(self.model, make_step, grid, warmup=1, steps=steps, passes=passes)
            else:
                execution = default_execution(self.cfg.train, self.device)
            if fused_candidates(optim_cfg, self.device):
                execution.fused_optimizer, execution.optimizer_candidates = measure_optimizer(
                    self.model, optim_cfg, self.device
                )
        for p in self.objective.parameters():  # the probe steps must leave no gradient behind
            p.grad = None
        execution = Execution(**broadcast_object(execution.to_dict(), self.dist))
        self._apply_execution(execution)
        if self.dist.is_main and (execution.candidates or execution.optimizer_candidates):
            console.print(
                f"execution by measurement (ms per step):\n{execution.table()}\n-> {execution.describe()}",
                highlight=False,
                markup=False,
            )

    def _precisions_to_run(self, recorded: Execution | None, tuning: bool) -> list[str]:
        """The precisions this run's steps will use: a resumed run's recorded one; while tuning, fp32 (the
        tuner's probe) and every candidate; else the configured one."""
        if recorded is not None:
            return [recorded.precision]
        if tuning:
            return sorted({"fp32", *(p for p, _ in candidate_grid(self.cfg.train, self.device))})
        return [default_execution(self.cfg.train, self.device).precision]

    @contextlib.contextmanager
    def _probing(self, stage: StageConfig) -> Iterator[None]:
        """Within the block the model trains as ``stage`` does (its frozen parameters frozen, training mode,
        no feature cache) on a forked random stream; afterwards its buffers (BatchNorm statistics, memory
        banks), ``requires_grad`` flags, modes and feature cache are as before."""
        model, cache = self.model, getattr(self.model, "feature_cache", None)
        buffers = [b.detach().clone() for b in model.buffers()]
        grads = [p.requires_grad for p in model.parameters()]
        modes = [m.training for m in model.modules()]
        try:
            self._apply_stage_grads(stage)
            model.train()
            if cache is not None:  # measure what a step saves; with a frozen trunk that is the head's
                model.feature_cache = None
            with torch.random.fork_rng(devices=[]):
                yield
        finally:
            with torch.no_grad():
                for b, value in zip(model.buffers(), buffers, strict=True):
                    b.copy_(value)
            for p, flag in zip(model.parameters(), grads, strict=True):
                p.requires_grad_(flag)
            for m, mode in zip(model.modules(), modes, strict=True):
                m.training = mode
            if cache is not None:
                model.feature_cache = cache

    def _check_batch_memory(self, precisions: list[str], stage: StageConfig) -> None:
        """Refuse, before any step, a batch whose training step would need more memory than is available: on the
        CPU the kernel would kill the process mid-step without a word (``runtime/memory.py``). The bytes saved
        for backward are measured on 2 and 4 images of the first batch (never the whole batch), on the model
        trained as ``stage`` trains it (:meth:`_probing`), in each of ``precisions`` (the largest counts), times
        :data:`PEAK_OVER_SAVED`; gradients and two optimiser moments of the trained parameters are added, and
        the ranks sharing this host (``LOCAL_WORLD_SIZE``) count together. A check that cannot measure (a
        model failing on 2 images) lets the run go on."""
        available = available_memory_bytes()
        step_images, sample = self.train_loader.first_step(4)
        if available is None or sample is None or len(sample) < 4:
            return
        model = self.model
        images, targets = self.prep(sample.images.to(self.device)), sample.targets.to(self.device)
        per_image = 0.0
        try:
            with self._probing(stage):
                trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
                for precision in precisions:
                    with autocast(self.device, PRECISIONS[precision]):
                        cost = activation_bytes_per_image(lambda n: model(images[:n], targets[:n]), 2)
                    per_image = max(per_image, PEAK_OVER_SAVED * cost)
        except RuntimeError:
            return
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        need = local * (per_image * step_images + 3 * trained)
        refuse = need > available
        if self.dist.enabled:  # every rank stops, or none
            refuse = bool(all_reduce_sum(torch.tensor([float(refuse)]), self.dist).item() > 0)
        if not refuse:
            return
        per_rank = int((available / local - 3 * trained) // per_image) if per_image > 0 else 0
        fits = per_rank * self.dist.world_size  # the global batch: a multiple of the world size
        fix = (
            f"lower train.batch_size to {fits} or less (train.accumulate keeps the effective batch)"
            if fits
            else "even one image per step does not fit: use a smaller model or free memory"
        )
        raise ConfigError(
            f"train.batch_size={self.cfg.train.batch_size} puts {step_images} images in each training step"
            f"{f' of each of {local} processes' if local > 1 else ''}, which need about {readable_bytes(need)} of "
            f"memory ({' and '.join(precisions)}), more than the {readable_bytes(available)} available; {fix}"
        )

    # ------------------------------------------------------------------ stages
    def _stage_section(self, base: OptimConfig | ScheduleConfig, overrides: dict, where: str):
        return stage_section(base, overrides, f"stages.{self.state.stage}.{where}")

    def _select_modules(self, prefixes: list[str], what: str) -> list[nn.Module]:
        modules = dict(self.model.named_modules())
        missing = [p for p in prefixes if p not in modules]
        if missing:
            top = sorted({n.split(".")[0] for n in modules if n})
            raise ConfigError(
                f"stages[{self.state.stage}].{what}: no module named {missing}; top-level modules: {top}"
                + self._continue_hint(self.state.stage, what)
            )
        return [modules[p] for p in prefixes]

    def _continue_hint(self, index: int, what: str) -> str:
        """How to go on once earlier steps are saved (nothing to continue before the first step)."""
        if self.state.step == 0:
            return ""
        return f"; fix it and continue with `imgcls train --resume RUN_DIR 'stages.{index}.{what}=[...]'`"

    def _check_stage_modules(self) -> None:
        """Every stage's ``freeze``/``train_only`` names a module, checked before the first step (not when a later
        stage starts, after the earlier ones trained). Names under ``head`` in or after a head switch are
        checked when their stage starts: that head does not exist yet."""
        modules = dict(self.model.named_modules())
        top = sorted({n.split(".")[0] for n in modules if n})
        switched = False
        for index, stage in enumerate(self.stages):
            switched = switched or bool(stage.head)
            for what in ("freeze", "train_only"):
                names = getattr(stage, what)
                missing = [
                    n for n in names if n not in modules and not (switched and n.split(".")[0] == "head")
                ]
                if missing:
                    raise ConfigError(
                        f"stages[{index}].{what}: no module named {missing}; top-level modules: {top}"
                    )

    def _check_stage_head_sizes(self) -> None:
        """A head a later stage switches to, too large for this device's memory, is one line before the first
        step, not a memory error once the earlier stages have trained. Counted on the meta device; the bound
        is the parameters with their gradients and two optimiser moments (16 bytes each in fp32)."""
        memory = device_memory_bytes(self.device)
        if memory is None:
            return
        for index in range(self.state.stage + 1, len(self.stages)):
            stage = self.stages[index]
            n = stage_head_parameters(self.model, stage, self.cfg.train.label_smoothing, self.taxonomy)
            if n is not None and 16 * n > memory:
                raise ConfigError(
                    f"stages.{index}.head '{stage.head}' would have {n:,} parameters, {16 * n / 2**30:,.1f} GiB "
                    f"with their gradients and optimiser state, more than this {self.device.type} device's "
                    f"{memory / 2**30:,.1f} GiB of memory; make stages.{index}.head_args smaller"
                )

    def _apply_stage_model_changes(self, stage: StageConfig) -> None:
        """Head switch (a new head with fresh parameters) — part of the model's structure."""
        apply_stage_head(self.model, stage, self.cfg.train.label_smoothing, self.taxonomy)

    def _apply_stage_grads(self, stage: StageConfig) -> None:
        """Which parameters ``stage`` trains (``train_only``, ``freeze``)."""
        if stage.train_only:
            keep = self._select_modules(stage.train_only, "train_only")
            for p in self.model.parameters():
                p.requires_grad_(False)
            for m in keep:
                m.requires_grad_(True)
        else:
            self.model.requires_grad_(True)
        for m in self._select_modules(stage.freeze, "freeze"):
            m.requires_grad_(False)

    def _setup_stage(self) -> None:
        stage = self.stage
        self._apply_stage_grads(stage)
        # A module whose parameters are all frozen also stays in eval mode, children included
        # (BatchNorm statistics, dropout, drop-path).
        self.frozen = [
            m
            for m in self.model.modules()
            if (params := list(m.parameters())) and not any(p.requires_grad for p in params)
        ]
        optim_cfg = self._stage_section(self.cfg.optim, stage.optim, "optim")
        sched_cfg = self._stage_section(self.cfg.schedule, stage.schedule, "schedule")
        self.label_smoothing = (
            stage.label_smoothing if stage.label_smoothing is not None else self.cfg.train.label_smoothing
        )
        self.model.head.label_smoothing = self.label_smoothing
        self.loss_weights = dict(stage.loss_weights)
        self._loss_weights_checked = False
        self.optimizer = build_optimizer(
            self.model, optim_cfg, self.device, extra=self.objective, fused=self.execution.fused_optimizer
        )
        self.scheduler = build_scheduler(
            self.optimizer, sched_cfg, int(stage.epochs or 0), self.steps_per_epoch
        )
        self.scheduler_paused = False
        self.train_model = self._wrap(self.model)

    def _set_stage_epochs(self, epochs: int) -> None:
        self.stages[self.state.stage] = self.stage.model_copy(update={"epochs": epochs})
        self.total_epochs = sum(int(s.epochs or 0) for s in self.stages)
        self.state.planned_epochs = epochs

    def plan_stage_epochs(self, epochs: int) -> None:
        """Set the current stage's epoch count during training (``train.time_budget_s``): the lr schedule
        keeps the current step and stretches or shrinks to the new horizon; checkpoints record the plan."""
        self._set_stage_epochs(epochs)
        self.scheduler.set_epochs(epochs, apply=not self.scheduler_paused)

    def _wrap(self, model: nn.Module) -> nn.Module:
        wrapped = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=self.cfg.train.ddp_find_unused_parameters
            )
        if self.cfg.train.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self, full: bool, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "format": ckpt_io.FORMAT,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "config": self.cfg.model_dump(mode="json"),
            "class_names": list(self.class_names),
            "taxonomy": self.taxonomy.to_dict() if self.taxonomy is not None else None,
            "preprocess": dict(self.preprocess_meta),
            "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str))},
            "progress": asdict(self.state),
            "elapsed_s": self.elapsed_s(),  # wall clock (not in "progress": a resumed run's progress is bit-exact)
            "versions": ckpt_io.versions(),
            "execution": self.execution.to_dict(),
            "extra_weights": {},
        }
        for cb in self.callbacks:  # averaged weights (EMA/SWA) travel with every checkpoint
            if (w := cb.averaged_state_dict()) is not None:
                payload["extra_weights"][cb.name] = w
        objective_state = self.objective.state_dict()
        if objective_state:  # trainable extras of the objective (e.g. distillation projectors)
            payload["objective"] = {k: v.detach().cpu() for k, v in objective_state.items()}
        payload["history"] = list(self.history)
        if full and self.epoch_progress is not None:  # a mid-epoch (recovery) checkpoint
            payload["mid_epoch"] = self.epoch_progress.state_dict()
        if full:
            payload["optimizer"] = self.optimizer.state_dict()
            payload["scheduler"] = self.scheduler.state_dict()
            payload["scaler"] = self.scaler.state_dict()
            payload["scheduler_paused"] = self.scheduler_paused
            payload["callbacks"] = {cb.name: cb.state_dict() for cb in self.callbacks}
        return payload

    def save_checkpoint(self, path: Path, full: bool, metrics: dict[str, Any] | None = None) -> None:
        self.check_finite_weights(f"not writing {path.name}")
        self._restore_run_config(Path(path))
        ckpt_io.atomic_save(self.checkpoint_payload(full, metrics), path)

    def _restore_run_config(self, path: Path) -> None:
        """A run folder deleted (or stripped of its config.yaml) while training is written again before the next
        checkpoint, config included: without config.yaml the checkpoints could not be resumed or evaluated."""
        if path.parent.name != "checkpoints" or not self.dist.is_main:
            return
        config = path.parent.parent / "config.yaml"
        if config.exists():
            return
        console.print(
            f"warning: '{config}' was deleted during training; writing it again (the run's checkpoints follow)",
            highlight=False,
            markup=False,
        )
        ckpt_io.atomic_write_text(config, config_to_yaml(self.cfg))

    def where(self) -> str:
        """'epoch E, step S' of the step being trained (epochs counted from 1)."""
        return f"epoch {self.state.global_epoch + 1}, step {self.state.step}"

    def check_finite_weights(self, consequence: str) -> None:
        """TrainingError when a parameter or buffer holds NaN/inf: a diverged model is never saved."""
        tensors = [(k, v) for k, v in self.model.state_dict().items() if v.is_floating_point()]
        if not tensors or bool(torch.stack([torch.isfinite(v).all() for _, v in tensors]).all()):
            return
        bad = next(k for k, v in tensors if not bool(torch.isfinite(v).all()))
        raise TrainingError(
            f"the weights became non-finite ({bad}) by {self.where()}; {consequence}: the previous checkpoint is "
            "intact; lower optim.lr, set train.grad_clip, or use train.precision=fp32 or train.on_nonfinite=skip_step"
        )

    def _restore(self, ckpt: dict[str, Any]) -> bool:
        """Load a full checkpoint; returns whether the optimiser state belongs to the current stage."""
        self.state = TrainState(
            **{k: ckpt["progress"][k] for k in ("stage", "epoch_in_stage", "global_epoch", "step")},
            skipped_steps=int(ckpt["progress"].get("skipped_steps", 0)),
        )
        # wall-clock seconds of the attempts before this one (older checkpoints: the last epoch's metrics)
        self._elapsed_base = float(
            ckpt.get("elapsed_s", (ckpt.get("metrics") or {}).get("train_time_s", 0.0))
        )
        planned = ckpt["progress"].get("planned_epochs")
        if planned is not None and self.cfg.train.time_budget_s is not None:
            self._set_stage_epochs(int(planned))  # the plan made before the interruption, never re-timed
        self._resume_epoch = ckpt.get("mid_epoch")
        for stage in self.stages[: self.state.stage + 1]:
            self._apply_stage_model_changes(stage)
        load_weights(self.model, ckpt["model"], "the checkpoint's")
        if ckpt.get("objective"):
            self.objective.load_state_dict(ckpt["objective"])
        self.history = list(
            ckpt.get("history") or ckpt.get("callbacks", {}).get("history", {}).get("rows", [])
        )
        for cb in self.callbacks:
            if cb.name in ckpt.get("callbacks", {}):
                cb.load_state_dict(ckpt["callbacks"][cb.name])
            if cb.name in ckpt.get("extra_weights", {}):
                cb.load_averaged(self, ckpt["extra_weights"][cb.name])
        finished_stage = self.state.epoch_in_stage >= (self.stage.epochs or 0)
        if finished_stage:
            self.state.stage += 1
            self.state.epoch_in_stage = 0
        return not finished_stage

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run every stage (from where ``resume``, a full ``last.pt`` payload, left off)."""
        self._fit_start, self._elapsed_base = time.perf_counter(), 0.0
        # before autotuning and the first step: a typo or an impossible head costs nothing
        self._check_stage_modules()
        self._check_stage_head_sizes()
        recorded = Execution.from_dict(resume["execution"]) if resume and resume.get("execution") else None
        tuning = recorded is None and needs_tuning(
            self.cfg.train, self.device, self._stage_section(self.cfg.optim, self.stages[0].optim, "optim")
        )
        if self.device.type == "cpu":  # a CUDA out-of-memory is an exception the CLI reports
            stage = int(resume.get("progress", {}).get("stage", 0)) if resume else 0
            self._check_batch_memory(
                self._precisions_to_run(recorded, tuning), self.stages[min(stage, len(self.stages) - 1)]
            )
        if recorded is not None:
            self._apply_execution(recorded)  # never re-measured
        elif tuning:
            self._tune_execution()
        mid_stage = self._restore(resume) if resume is not None else False
        for cb in self.callbacks:
            cb.on_fit_start(self)
        try:
            while self.state.stage < len(self.stages):
                if not mid_stage:
                    self._apply_stage_model_changes(self.stage)
                self._setup_stage()
                if mid_stage:
                    self.optimizer.load_state_dict(resume["optimizer"])
                    self.scheduler.load_state_dict(resume["scheduler"])
                    self.scaler.load_state_dict(resume["scaler"])
                    self.scheduler_paused = bool(resume.get("scheduler_paused", False))
                else:
                    for cb in self.callbacks:
                        cb.on_stage_start(self)
                mid_stage = False
                self._stop_reason = None
                while self.state.epoch_in_stage < (self.stage.epochs or 0) and self._stop_reason is None:
                    self._run_epoch()
                if self._stop_reason and self.dist.is_main:
                    console.print(
                        f"[{self.stage.name}] stage ended: {self._stop_reason}", highlight=False, markup=False
                    )
                self.state.stage += 1
                self.state.epoch_in_stage = 0
        finally:
            self.train_time_s = self.elapsed_s()
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return list(self.history)

    def elapsed_s(self) -> float:
        """Wall-clock seconds of training so far, the attempts before a resume included (0 before fit)."""
        start = getattr(self, "_fit_start", None)
        return 0.0 if start is None else self._elapsed_base + time.perf_counter() - start

    def _run_epoch(self) -> None:
        for cb in self.callbacks:
            cb.on_epoch_start(self)
        start = time.perf_counter()
        self.objective.on_epoch_start(self.state.global_epoch, self.total_epochs)
        train_metrics = self.train_epoch()
        val_metrics = self.validate(self.model, self.val_loader, per_class=True)
        self.val_class_error = val_metrics.pop("class_error", None)
        if self.val_loader is not None and len(self.val_loader) and not math.isfinite(val_metrics["loss"]):
            raise TrainingError(
                f"validation loss became {val_metrics['loss']} after {self.where()} (the epoch's last steps diverged); "
                "no checkpoint written: the previous one is intact; lower optim.lr, set train.grad_clip, "
                "or use train.precision=fp32"
            )
        self.check_finite_weights("no checkpoint written")
        objective_metrics = self.objective.epoch_metrics()  # after the epoch: it may summarise its batches
        self.state.epoch_in_stage += 1
        self.state.global_epoch += 1
        metrics: dict[str, Any] = {
            "epoch": self.state.global_epoch,
            "stage": self.stage.name,
            "step": self.state.step,
            "lr": self.current_lr(),
            **objective_metrics,
            **train_metrics,
            **{f"val_{k}": v for k, v in val_metrics.items()},
        }
        for cb in self.callbacks:
            cb.on_validation_end(self, metrics)
        metrics["epoch_time_s"] = time.perf_counter() - start
        metrics["img_per_s"] = train_metrics["train_images"] / max(train_metrics["train_time_s"], 1e-9)
        self.history.append(metrics)
        for cb in self.callbacks:
            cb.on_epoch_end(self, metrics)
        self._stop_if_requested(mid_epoch=False)

    def _stop_if_requested(self, mid_epoch: bool) -> None:
        """SIGTERM/SIGINT: every rank stops after the same step; a callback saves the state to resume from."""
        signum = stop_requested()
        if self.dist.enabled:  # ranks agree: all stop after this step when any rank was asked to
            totals = all_reduce_sum(
                torch.tensor([1.0 if signum else 0.0, float(signum or 0)], device=self.device), self.dist
            )
            if float(totals[0]) > 0:
                signum = signum or round(float(totals[1]) / float(totals[0]))
        if not signum:
            return
        self.interrupt_checkpoint = None
        if mid_epoch:
            for cb in self.callbacks:
                cb.on_interrupt(self)
            where = f"epoch {self.state.global_epoch + 1}, after step {self.state.step}"
            saved = (
                f"saved {self.interrupt_checkpoint}"
                if self.interrupt_checkpoint
                else "no checkpoint callback saved it"
            )
        else:
            where, saved = f"the end of epoch {self.state.global_epoch}", "saved checkpoints/last.pt"
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        raise TrainingInterrupted(
            f"stopped by {name} at {where}; {saved}; resume with `imgcls train --resume RUN_DIR`",
            128 + signum,
        )

    def _set_train_mode(self) -> None:
        self.model.train()
        self.objective.train()
        for m in self.frozen:  # frozen means eval mode too: BN statistics stay put
            m.eval()

    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg.train
        self._set_train_mode()
        epoch = self.state.global_epoch
        aug_gen = epoch_generator(cfg.seed, epoch, salt=2)
        torch.manual_seed(epoch_generator(cfg.seed, epoch, salt=3).initial_seed())  # dropout, drop-path
        progress = EpochProgress(epoch, aug_gen, {}, torch.zeros((), device=self.device))
        resume, self._resume_epoch = self._resume_epoch, None
        if (
            resume is not None and int(resume["epoch"]) == epoch
        ):  # mid-epoch checkpoint: continue where it stopped
            set_rng_states(resume["rng"], aug_gen)
            progress.sums = {k: v.to(self.device) for k, v in resume["sums"].items()}
            progress.correct = resume["correct"].to(self.device)
            progress.seen, progress.batches = int(resume["seen"]), int(resume["batches"])
            progress.elapsed_s = float(resume["elapsed_s"])
        self.epoch_progress = progress
        sums, correct, seen = progress.sums, progress.correct, progress.seen
        self.train_loader.set_epoch(epoch, start_batch=progress.batches)
        self.state.batch_in_epoch, self.state.images_in_epoch = progress.batches, seen
        self.optimizer.zero_grad(set_to_none=True)
        self._bad_group = False
        start = time.perf_counter() - progress.elapsed_s
        n_batches = len(self.train_loader)
        for i, batch in enumerate(self.train_loader, start=progress.batches):
            batch = batch.to(self.device)
            batch = batch.with_images(self.prep.to_unit(batch.images))
            if self.augment is not None:
                batch = self.augment(batch, aug_gen, epoch)
            batch = replace(batch, images=self.prep.normalize(batch.images), unit_images=batch.images)
            boundary = (i + 1) % cfg.accumulate == 0 or i + 1 == n_batches
            # the mean over the batches of this accumulation group (a final partial group has fewer)
            group_size = min(cfg.accumulate, n_batches - (i // cfg.accumulate) * cfg.accumulate)
            loss, terms, output = self._forward_backward(batch, sync=boundary, group_size=group_size)
            stepped = self._optimizer_step() if boundary else False
            if loss is not None:  # a skipped non-finite batch adds nothing to the epoch's metrics
                for k, v in terms.items():
                    sums[k] = sums.get(k, torch.zeros((), device=self.device)) + v.detach().float() * len(
                        batch
                    )
                sums["loss"] = sums.get(
                    "loss", torch.zeros((), device=self.device)
                ) + loss.detach().float() * len(batch)
                correct += (self.model.head.predict(output).argmax(-1) == batch.targets).sum()
                seen += len(batch)
                self._last_loss = loss.detach()
            self.state.batch_in_epoch = i + 1
            self.state.images_in_epoch = seen
            progress.seen, progress.batches, progress.elapsed_s = seen, i + 1, time.perf_counter() - start
            if stepped:
                for cb in self.callbacks:
                    cb.on_train_step_end(self)
            if boundary and i + 1 < n_batches:  # at the epoch's end: after validation and last.pt
                self._stop_if_requested(mid_epoch=True)
        self.epoch_progress = None
        elapsed = time.perf_counter() - start
        keys = sorted(sums)
        totals = all_reduce_sum(
            torch.stack(
                [sums[k] for k in keys] + [correct.float(), torch.tensor(float(seen), device=self.device)]
            ),
            self.dist,
        )
        n = max(float(totals[-1]), 1.0)
        out = {f"train_{k}": float(totals[j]) / n for j, k in enumerate(keys)}
        out["train_acc"] = float(totals[-2]) / n
        out["train_images"] = n
        out["train_time_s"] = elapsed
        return out

    def _weighted_sum(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ (stage loss weight × objective weight) × term; an unknown stage weight key is an error."""
        if not self._loss_weights_checked:
            unknown = sorted(set(self.loss_weights) - set(terms))
            if unknown:
                raise ConfigError(
                    f"stages[{self.state.stage}].loss_weights names {unknown}, which the head/objective does not "
                    f"produce; its loss terms are: {', '.join(sorted(terms))}"
                )
            self._loss_weights_checked = True
        dynamic = self.objective.term_weights()
        return sum(self.loss_weights.get(k, 1.0) * dynamic.get(k, 1.0) * v.float() for k, v in terms.items())

    def _forward_backward(
        self, batch: Batch, sync: bool, group_size: int = 1
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        no_sync = getattr(self.train_model, "no_sync", None)
        context = no_sync() if (no_sync is not None and not sync) else _null()
        with context:
            with self.autocast():
                result = self.objective(self.train_model, self.model.head, batch)
            terms, output = result.terms, result.output
            loss = self._weighted_sum(terms)
            skip = self.cfg.train.on_nonfinite == "skip_step"
            if skip or self.device.type == "cpu" or self.state.step % self.cfg.train.log_every == 0:
                bad = ~torch.isfinite(loss.detach())
                if skip and self.dist.enabled:  # every rank skips the same batch (else DDP would hang)
                    bad = all_reduce_sum(bad.float(), self.dist) > 0
                if bool(bad):
                    if not skip:  # detached: float() of a tensor that requires grad warns
                        terms_text = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                        raise TrainingError(
                            f"loss became {float(loss.detach())} at {self.where()} (terms: {terms_text}); lower optim.lr, "
                            "set train.grad_clip, or use train.precision=fp32 or train.on_nonfinite=skip_step; "
                            "the last checkpoint is intact"
                        )
                    self._bad_group = True
                    return None, terms, output
            self.scaler.scale(loss / group_size).backward()
        return loss, terms, output

    def _optimizer_step(self) -> bool:
        """One optimiser step at the end of an accumulation group; False when skip_step dropped it."""
        if self._bad_group:
            self._bad_group = False
            self.optimizer.zero_grad(set_to_none=True)
            self.state.skipped_steps += 1
            self._bad_in_row += 1
            if self._bad_in_row >= self.cfg.train.max_skipped_steps:
                raise TrainingError(
                    f"the loss was non-finite {self._bad_in_row} steps in a row (train.max_skipped_steps) up to "
                    f"{self.where()}; {self.state.skipped_steps} step(s) skipped in all; lower optim.lr or set "
                    "train.grad_clip; the last checkpoint is intact"
                )
            return False
        self._bad_in_row = 0
        if self.cfg.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            params = [*self.model.parameters(), *self.objective.parameters()]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not self.scheduler_paused:
            self.scheduler.step()
        self.state.step += 1
        return True

    @torch.no_grad()
    def validate(self, model: nn.Module, loader, per_class: bool = False) -> dict[str, float]:
        """Mean loss (weighted sum), each named loss term and accuracy of ``model`` on ``loader``,
        through the same objective as training, reduced over ranks (with ``per_class``, also
        ``class_error``: 1 − recall per class, NaN for classes absent)."""
        if loader is None or len(loader) == 0:
            return {"loss": float("nan"), "acc": float("nan")}
        was_training, objective_training = model.training, self.objective.training
        model.eval()
        self.objective.eval()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=self.device)
        count = 0
        class_hits = torch.zeros(2, len(self.class_names), device=self.device)  # per class: correct, total
        for batch in loader:
            batch = batch.to(self.device)
            unit = self.prep.to_unit(batch.images)
            batch = replace(batch, images=self.prep.normalize(unit), unit_images=unit)
            with self.autocast():
                result = self.objective(model, model.head, batch)
            loss = self._weighted_sum(result.terms)
            for k, v in {**result.terms, "loss": loss}.items():
                sums[k] = sums.get(k, torch.zeros((), device=self.device)) + v.detach().float() * len(batch)
            correct += (model.head.predict(result.output).argmax(-1) == batch.targets).sum()
            count += len(batch)
            if per_class:
                hit = (model.head.predict(result.output).argmax(-1) == batch.targets).float()
                class_hits[0].index_add_(0, batch.targets, hit)
                class_hits[1].index_add_(0, batch.targets, torch.ones_like(hit))
        model.train(was_training)
        self.objective.train(objective_training)
        keys = sorted(sums)
        totals = all_reduce_sum(
            torch.stack(
                [sums[k] for k in keys] + [correct.float(), torch.tensor(float(count), device=self.device)]
            ),
            self.dist,
        )
        n = max(float(totals[-1]), 1.0)
        out = {k: float(totals[j]) / n for j, k in enumerate(keys)}
        out["acc"] = float(totals[-2]) / n
        if per_class:
            hits = all_reduce_sum(class_hits, self.dist).cpu()
            out["class_error"] = (1 - hits[0] / hits[1]).tolist()  # NaN where a class has no images
        return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

"""Precision and memory layout chosen by measurement on the running machine (issue 11).

A CPU flag does not decide speed: on the project's 2-core CPU bf16 autocast + channels_last made
the quickstart CNN 1.6–2× faster than fp32, yet made timm's ResNet-18 at 28 px ≈ 12 % slower.
So with ``train.precision: auto`` and/or ``train.channels_last: null`` (auto), the trainer times a
few real training steps (forward, the objective's loss terms, backward, optimiser step) of a copy
of the actual model on a real batch in each candidate — fp32 / bf16 autocast (fp16 is never
picked automatically: it needs loss scaling) × NCHW / channels_last — and keeps the fastest.
The copy keeps the real model, its optimiser and every RNG untouched, so a tuned run is as
deterministic as an untuned one. The choice is logged as a table, stored in every checkpoint
(``execution``) and reused on ``--resume`` and by evaluation, never re-measured.
Values the user sets explicitly are not tuned.

The optimiser's kernels are the third axis: with ``optim.fused: null`` on the CPU, the fused AdamW/Adam/SGD
step (one kernel over all parameters) and the default multi-tensor ``foreach`` step are timed on a copy of
the model's parameters with random gradients (measured on the project's 2-core CPU: AdamW over ResNet-18
≈ 6 ms fused vs ≈ 35 ms foreach per step, ≈ 8 % of a training step; ``benchmarks/profile_epoch.py``).
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from imgcls.config import OptimConfig, TrainConfig
from imgcls.runtime.precision import autocast

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Execution:
    """How the training steps run: autocast precision and memory layout, and how that was decided."""

    precision: str = "fp32"
    channels_last: bool = False
    source: str = "default"  # "measured" | "explicit" | "recorded" | "default"
    candidates: list[dict[str, Any]] = field(default_factory=list)  # measured step times
    fused_optimizer: bool | None = None  # None: optim.fused decides (on CUDA only when that is null too)
    optimizer_candidates: list[dict[str, Any]] = field(default_factory=list)  # measured optimiser steps

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Execution:
        return cls(
            d["precision"],
            bool(d["channels_last"]),
            "recorded",
            list(d.get("candidates", [])),
            d.get("fused_optimizer"),
            list(d.get("optimizer_candidates", [])),
        )

    def table(self) -> str:
        rows = [
            f"{c['precision']:>5} {'channels_last' if c['channels_last'] else 'NCHW':>13} {c['step_ms']:8.1f} ms"
            for c in self.candidates
        ]
        rows += [
            f"optimizer {'fused' if c['fused'] else 'foreach':>9} {c['step_ms']:8.1f} ms"
            for c in self.optimizer_candidates
        ]
        return "\n".join(rows)

    def describe(self) -> str:
        text = f"{self.precision}{' + channels_last' if self.channels_last else ''}"
        if self.fused_optimizer is not None:
            text += f", {'fused' if self.fused_optimizer else 'foreach'} optimizer"
        return text


def candidate_grid(cfg: TrainConfig, device: torch.device) -> list[tuple[str, bool]]:
    """The (precision, channels_last) pairs to try; explicit settings pin their axis."""
    if cfg.precision != "auto":
        precisions = [cfg.precision]
    elif device.type == "cuda":
        precisions = ["bf16"] if torch.cuda.is_bf16_supported() else ["fp32"]
        precisions = ["fp32", *precisions] if precisions != ["fp32"] else precisions
    else:
        precisions = ["fp32", "bf16"]
    layouts = [cfg.channels_last] if cfg.channels_last is not None else [False, True]
    return list(itertools.product(precisions, layouts))


FUSABLE = ("adamw", "adam", "sgd")  # torch has fused CPU/CUDA kernels for these


def fused_candidates(optim_cfg: OptimConfig, device: torch.device) -> list[bool]:
    """Optimiser kernels to time: both on the CPU when ``optim.fused`` is null and a fused kernel exists
    (on CUDA a null means fused, as before); nothing to time otherwise."""
    if optim_cfg.fused is not None or device.type != "cpu" or optim_cfg.name not in FUSABLE:
        return []
    return [False, True]


def needs_tuning(cfg: TrainConfig, device: torch.device, optim_cfg: OptimConfig | None = None) -> bool:
    fused = fused_candidates(optim_cfg, device) if optim_cfg is not None else []
    return len(candidate_grid(cfg, device)) > 1 or len(fused) > 1


def call_times(fn, warmup: int, steps: int) -> list[float]:
    """Wall times (ms) of ``steps`` calls of ``fn()`` after ``warmup`` untimed calls."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def step_times(step, precision: str, channels_last: bool, warmup: int, steps: int) -> list[float]:
    """Wall times (ms) of ``steps`` calls of ``step(amp_dtype, channels_last)`` after ``warmup``."""
    return call_times(lambda: step(PRECISIONS[precision], channels_last), warmup, steps)


def time_candidate(step, precision: str, channels_last: bool, warmup: int, steps: int) -> float:
    """Median wall time (ms) of ``steps`` calls of ``step(amp_dtype, channels_last)`` after ``warmup``."""
    return statistics.median(step_times(step, precision, channels_last, warmup, steps))


def measure(
    model: torch.nn.Module,
    make_step,
    grid: list[tuple[str, bool]],
    *,
    warmup: int = 1,
    steps: int = 3,
    passes: int = 1,
) -> Execution:
    """Time each candidate of ``grid`` with ``make_step(model_copy) -> step(amp_dtype, channels_last)``
    on its own copy of ``model``; the fastest median wins (ties: the earlier, i.e. the simpler, candidate).

    With ``passes=2`` the grid is timed forwards and then backwards (A B C D D C B A), so a machine that
    speeds up or slows down during the measurement (shared CPUs drift by 10-20 % within minutes) favours
    no candidate; candidates are often closer than that drift."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    times: dict[tuple[str, bool], list[float]] = {c: [] for c in grid}
    errors: dict[tuple[str, bool], str] = {}
    try:
        for p in range(passes):
            for candidate in grid if p % 2 == 0 else reversed(grid):
                if candidate in errors:
                    continue
                precision, channels_last = candidate
                clone = copy.deepcopy(model)
                if channels_last:
                    clone = clone.to(memory_format=torch.channels_last)
                try:
                    times[candidate] += step_times(make_step(clone), precision, channels_last, warmup, steps)
                except (
                    RuntimeError
                ) as exc:  # a kernel this build lacks for that dtype/layout: not a candidate
                    errors[candidate] = str(exc).splitlines()[0][:200]
                del clone
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    candidates = []
    for precision, channels_last in grid:
        row = {"precision": precision, "channels_last": channels_last}
        if (precision, channels_last) in errors:
            row.update(step_ms=float("inf"), error=errors[(precision, channels_last)])
        else:
            row["step_ms"] = statistics.median(times[(precision, channels_last)])
        candidates.append(row)
    best = min(candidates, key=lambda c: c["step_ms"])
    return Execution(best["precision"], best["channels_last"], "measured", candidates)


def measure_optimizer(
    model: torch.nn.Module, optim_cfg: OptimConfig, device: torch.device, *, warmup: int = 1, steps: int = 5
) -> tuple[bool, list[dict[str, Any]]]:
    """Time the optimiser step fused vs foreach on a copy of ``model`` with random gradients (every
    RNG restored); returns (fused is faster, the measured rows). A kernel that fails is not a candidate."""
    from imgcls.engine.optim import build_optimizer

    cpu_rng = torch.get_rng_state()
    rows = []
    try:
        for fused in fused_candidates(optim_cfg, device):
            clone = copy.deepcopy(model)
            for p in clone.parameters():
                p.grad = torch.randn_like(p) * 1e-3 if p.requires_grad else None
            try:
                optimizer = build_optimizer(clone, optim_cfg, device, fused=fused)
                times = call_times(optimizer.step, warmup, steps)
                rows.append({"fused": fused, "step_ms": statistics.median(times)})
            except (RuntimeError, ValueError) as exc:
                rows.append(
                    {"fused": fused, "step_ms": float("inf"), "error": str(exc).splitlines()[0][:200]}
                )
            del clone
    finally:
        torch.set_rng_state(cpu_rng)
    best = min(rows, key=lambda r: r["step_ms"])
    return bool(best["fused"]), rows


def default_execution(cfg: TrainConfig, device: torch.device) -> Execution:
    """What runs when nothing is measured: the explicit values, else fp32 and the contiguous layout."""
    precision = cfg.precision if cfg.precision != "auto" else "fp32"
    channels_last = bool(cfg.channels_last) if cfg.channels_last is not None else False
    source = "explicit" if not needs_tuning(cfg, device) else "default"
    return Execution(precision, channels_last, source)


def training_step_factory(objective, optimizer_cfg, batch, device: torch.device, prep):
    """``make_step(model)`` for :func:`measure`: one real training step of ``model`` on ``batch``
    through ``objective`` with a fresh optimiser of the run's kind (the trainer's stays untouched)."""
    from dataclasses import replace

    from imgcls.engine.optim import build_optimizer

    def make_step(model):
        optimizer = build_optimizer(model, optimizer_cfg, device)
        model.train()

        def step(amp_dtype, channels_last):
            unit = prep.to_unit(batch.images)
            images = prep.normalize(unit)
            if channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            b = replace(batch, images=images, unit_images=unit)
            with autocast(device, amp_dtype):
                result = objective(model, model.head, b)
            loss = sum(v.float() for v in result.terms.values())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return step

    return make_step

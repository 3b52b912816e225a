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
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from imgcls.config import TrainConfig
from imgcls.runtime.precision import autocast

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Execution:
    """How the training steps run: autocast precision and memory layout, and how that was decided."""

    precision: str = "fp32"
    channels_last: bool = False
    source: str = "default"  # "measured" | "explicit" | "recorded" | "default"
    candidates: list[dict[str, Any]] = field(default_factory=list)  # measured step times

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Execution:
        return cls(d["precision"], bool(d["channels_last"]), "recorded", list(d.get("candidates", [])))

    def table(self) -> str:
        rows = [
            f"{c['precision']:>5} {'channels_last' if c['channels_last'] else 'NCHW':>13} {c['step_ms']:8.1f} ms"
            for c in self.candidates
        ]
        return "\n".join(rows)


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


def needs_tuning(cfg: TrainConfig, device: torch.device) -> bool:
    return len(candidate_grid(cfg, device)) > 1


def time_candidate(step, precision: str, channels_last: bool, warmup: int, steps: int) -> float:
    """Median wall time (ms) of ``steps`` calls of ``step(amp_dtype, channels_last)`` after ``warmup``."""
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        step(PRECISIONS[precision], channels_last)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(
    model: torch.nn.Module,
    make_step,
    grid: list[tuple[str, bool]],
    *,
    warmup: int = 1,
    steps: int = 3,
) -> Execution:
    """Time each candidate of ``grid`` with ``make_step(model_copy) -> step(amp_dtype, channels_last)``
    on its own copy of ``model``; the fastest wins (ties: the earlier, i.e. the simpler, candidate)."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    candidates = []
    try:
        for precision, channels_last in grid:
            clone = copy.deepcopy(model)
            if channels_last:
                clone = clone.to(memory_format=torch.channels_last)
            try:
                ms = time_candidate(make_step(clone), precision, channels_last, warmup, steps)
            except RuntimeError as exc:  # a kernel this build lacks for that dtype/layout: not a candidate
                candidates.append(
                    {
                        "precision": precision,
                        "channels_last": channels_last,
                        "step_ms": float("inf"),
                        "error": str(exc).splitlines()[0][:200],
                    }
                )
                continue
            candidates.append({"precision": precision, "channels_last": channels_last, "step_ms": ms})
            del clone
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    best = min(candidates, key=lambda c: c["step_ms"])
    return Execution(best["precision"], best["channels_last"], "measured", candidates)


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

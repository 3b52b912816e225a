"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) — closes seed
002's "confidence" goal and makes a threshold τ mean the same for every head (DESIGN.md; seed 003 issue).

One scalar ``T > 0`` divides the head's logits before its ``predict`` (``head.scale_logits``: every logit the
head predicts from, e.g. all levels of the per-level head). ``T`` is fitted after training on the
**validation split** by minimising the mean negative log-likelihood of the true class over ``log T``
(a coarse grid, then L-BFGS with a strong-Wolfe line search), and the fit never makes the validation NLL
worse than ``T = 1``: temperature 1 is always a candidate and the best candidate wins. For a softmax head
``T`` leaves the argmax, hence accuracy, unchanged; for the hyperspherical node heads it scales the node
sigmoids, so leaf probabilities — and rarely the argmax — change too.

Where it runs: ``eval.calibration: temperature`` makes evaluation fit ``T`` for the evaluated checkpoint,
report the test metrics with it (ECE, NLL and the hierarchical coverage at 99 % precision before and
after are in ``metrics["calibration"]`` and the report), and store it in ``run_dir/calibration.json``
keyed by checkpoint (best/last/ema/swa) with the checkpoint's training progress; ``imgcls.load`` /
``imgcls predict`` (``--threshold`` too) apply the stored ``T`` when it belongs to the loaded checkpoint.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from imgcls.models.heads.base import HeadOutput
from imgcls.runtime.distributed import DistInfo, all_gather_cat

if TYPE_CHECKING:
    from imgcls.evaluation.evaluate import EvalContext

CALIBRATION_FILE = "calibration.json"
#: search interval of log T: T ∈ [e⁻⁴, e⁴] ≈ [0.018, 55]
LOG_T_BOUNDS = (-4.0, 4.0)


@dataclass
class TemperatureFit:
    temperature: float
    nll_before: float  # validation NLL at T = 1
    nll_after: float  # validation NLL at the fitted T (≤ nll_before)
    num_samples: int
    method: str = "temperature"


def fit_log_temperature(
    nll: Callable[[torch.Tensor], torch.Tensor],
    bounds: tuple[float, float] = LOG_T_BOUNDS,
    grid: int = 33,
    max_iter: int = 100,
) -> tuple[float, float, float]:
    """Minimise ``nll(log T)`` over ``log T ∈ bounds``; returns ``(T, nll(0), nll(log T))``.

    A grid of ``grid`` points picks the start, L-BFGS refines it; the returned value is the best of
    ``log T = 0``, the grid's best and the L-BFGS result, so it is never above ``nll(0)``."""
    lo, hi = bounds
    with torch.no_grad():
        base = float(nll(torch.zeros(())))
        grid_t = torch.linspace(lo, hi, grid)
        grid_v = torch.tensor([float(nll(t)) for t in grid_t])
    grid_v = torch.where(torch.isfinite(grid_v), grid_v, torch.full_like(grid_v, math.inf))
    start = float(grid_t[int(grid_v.argmin())])
    log_t = torch.tensor(start, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = nll(log_t.clamp(lo, hi))
        value.backward()
        return value

    try:
        opt.step(closure)
        refined = float(log_t.detach().clamp(lo, hi))
        with torch.no_grad():
            refined_v = float(nll(torch.tensor(refined)))
    except RuntimeError:  # a non-finite step: keep the grid's answer
        refined, refined_v = start, float(grid_v.min())
    candidates = [(0.0, base), (start, float(grid_v.min())), (refined, refined_v)]
    best_t, best_v = min(
        (c for c in candidates if math.isfinite(c[1])), key=lambda c: c[1], default=(0.0, base)
    )
    if not best_v < base:  # ties (and a NaN base) keep T = 1
        best_t, best_v = 0.0, base
    return math.exp(best_t), base, best_v


def nll_of_probs(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(probs.float().clamp_min(1e-12).log(), targets.long())


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, **kw: Any) -> TemperatureFit:
    """Temperature of plain softmax logits ``(N, C)`` against ``targets`` ``(N,)``."""
    logits = logits.detach().float()
    T, before, after = fit_log_temperature(lambda t: F.cross_entropy(logits / t.exp(), targets.long()), **kw)
    return TemperatureFit(T, before, after, int(targets.numel()))


def fit_head_temperature(head, output: HeadOutput, targets: torch.Tensor, **kw: Any) -> TemperatureFit:
    """Temperature of any head: NLL of ``head.predict(head.scale_logits(output, T))``."""
    T, before, after = fit_log_temperature(
        lambda t: nll_of_probs(head.predict(head.scale_logits(output, t.exp())), targets), **kw
    )
    return TemperatureFit(T, before, after, int(targets.numel()))


@torch.no_grad()
def collect_outputs(
    model, loader, prep, device: torch.device, autocast: Callable, dist: DistInfo = DistInfo()
) -> tuple[HeadOutput, torch.Tensor]:
    """The head outputs (logits and per-sample extras, fp32 on the CPU) and targets of a whole loader,
    gathered across DDP ranks."""
    model.eval()
    logits, targets, extras = [], [], {}
    for batch in loader:
        batch = batch.to(device)
        with autocast():
            out = model(prep(batch.images))
        logits.append(out.logits.float().cpu())
        targets.append(batch.targets.cpu())
        for k, v in out.extras.items():
            if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == len(batch):
                extras.setdefault(k, []).append(v.float().cpu())
    cat = {
        "logits": torch.cat(logits),
        "targets": torch.cat(targets),
        **{f"x_{k}": torch.cat(v) for k, v in extras.items()},
    }
    if dist.enabled:
        cat = {k: all_gather_cat(v.to(device), dist).cpu() for k, v in cat.items()}
    empty = torch.zeros(len(cat["targets"]), 0)
    out = HeadOutput(cat["logits"], empty, {k[2:]: v for k, v in cat.items() if k.startswith("x_")})
    return out, cat["targets"]


def fit_on_loader(
    model, loader, prep, device: torch.device, autocast: Callable, dist: DistInfo = DistInfo()
) -> TemperatureFit:
    """Fit the temperature of ``model``'s head on every sample of ``loader`` (the validation split)."""
    output, targets = collect_outputs(model, loader, prep, device, autocast, dist)
    head = model.head
    with torch.enable_grad():
        return fit_head_temperature(head, output, targets)


# ------------------------------------------------------------------------------------- stored temperatures
def checkpoint_identity(ckpt: dict[str, Any]) -> dict[str, int]:
    """What ties a stored temperature to the weights it was fitted for: the checkpoint's training progress."""
    progress = ckpt.get("progress", {}) or {}
    return {k: int(progress.get(k, -1)) for k in ("stage", "global_epoch", "step")}


def save_temperature(run_dir: Path, which: str, fit: TemperatureFit, identity: dict[str, int]) -> Path:
    path = Path(run_dir) / CALIBRATION_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    stored[which] = {**asdict(fit), "checkpoint": identity}
    path.write_text(json.dumps(stored, indent=2))
    return path


def stored_temperature(run_dir: Path, which: str, ckpt: dict[str, Any]) -> float:
    """The temperature stored for checkpoint ``which`` of a run (1.0 when the run has none, with a warning
    when the run asks for calibration but it was not fitted for these weights)."""
    path = Path(run_dir) / CALIBRATION_FILE
    entry = json.loads(path.read_text()).get(which) if path.is_file() else None
    wants = (ckpt.get("config", {}).get("eval", {}) or {}).get("calibration", "none") == "temperature"
    if entry is None:
        if wants:
            warnings.warn(
                f"run '{run_dir}' asks for temperature scaling but has no fitted temperature for the "
                f"'{which}' checkpoint; run `imgcls evaluate {run_dir}` to fit it (using T = 1)",
                stacklevel=2,
            )
        return 1.0
    if entry.get("checkpoint") != checkpoint_identity(ckpt):
        warnings.warn(
            f"the temperature in {path} was fitted for other '{which}' weights (the run trained on); "
            f"run `imgcls evaluate {run_dir}` again (using T = 1)",
            stacklevel=2,
        )
        return 1.0
    return float(entry["temperature"])


# ------------------------------------------------------------------------------------- evaluation report
def calibration_extension(ctx: EvalContext) -> None:
    """METRIC_EXTENSIONS entry: before/after figures of temperature scaling on the test set (ECE, NLL, and
    coverage at 99 % precision of thresholded hierarchical prediction when the run has a taxonomy)."""
    fit = ctx.metrics.get("calibration")
    preds = ctx.preds
    if fit is None:
        return
    from imgcls.evaluation.metrics import classification_metrics

    raw = preds.uncalibrated_probs if preds.uncalibrated_probs is not None else preds.probs
    before = classification_metrics(raw, preds.targets, ctx.class_names, [1], ctx.cfg.eval.calibration_bins)
    fit["test"] = {
        "ece_before": before["ece"],
        "ece_after": ctx.metrics["ece"],
        "nll_before": before["nll"],
        "nll_after": ctx.metrics["nll"],
        "accuracy_before": before["accuracy"],
        "accuracy_after": ctx.metrics["accuracy"],
    }
    if ctx.taxonomy is not None and "hierarchical" in ctx.metrics:
        from imgcls.evaluation.hierarchical import hierarchical_metrics

        raw_nodes = (
            preds.uncalibrated_node_probs if preds.uncalibrated_probs is not None else preds.node_probs
        )
        h_before = hierarchical_metrics(
            raw, preds.targets, ctx.taxonomy, node_probs=raw_nodes, threshold=ctx.cfg.eval.hier_threshold
        )
        h_after = ctx.metrics["hierarchical"]
        for key in ("coverage_at_99_precision", "depth_at_99_precision"):
            fit["test"][f"{key}_before"] = h_before[key]
            fit["test"][f"{key}_after"] = h_after[key]
    t = fit["test"]
    table = {
        "temperature T (fitted on the validation split)": fit["temperature"],
        "validation images": fit["num_samples"],
        "validation NLL: T = 1 → fitted T": f"{fit['nll_before']:.4f} → {fit['nll_after']:.4f}",
        f"test ECE ({ctx.cfg.eval.calibration_bins} bins): T = 1 → fitted T": f"{t['ece_before']:.4f} → {t['ece_after']:.4f}",
        "test NLL: T = 1 → fitted T": f"{t['nll_before']:.4f} → {t['nll_after']:.4f}",
    }
    if "coverage_at_99_precision_before" in t:
        table["test coverage at 99 % precision (thresholded hierarchy): T = 1 → fitted T"] = (
            f"{100 * t['coverage_at_99_precision_before']:.2f} % → {100 * t['coverage_at_99_precision_after']:.2f} %"
        )
    ctx.metrics.setdefault("extra_tables", {})["Calibration (temperature scaling)"] = table

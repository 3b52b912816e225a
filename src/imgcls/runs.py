"""Run directories and checkpoints (DESIGN.md "runs.py"): the one place that turns a run or a
checkpoint back into a model.

``apply_stage_heads`` builds "the model as of stage N" (heads switched by stages); the trainer
(on every stage start and on ``--resume``), ``imgcls evaluate``/``predict``/``export`` and
teacher loading for distillation all go through it, so a checkpoint always meets the model
structure it was saved from. :func:`resume_checkpoint` picks the file ``--resume`` continues from:
the mid-epoch ``recovery.pt`` when it is the newest, falling back (with a one-line warning) to
``last.pt`` when it is damaged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from imgcls.config import ExperimentConfig, StageConfig, build_config, load_config
from imgcls.errors import CheckpointError
from imgcls.models.classifier import Classifier, build_head, build_model
from imgcls.runtime import checkpoint as ckpt_io

log = logging.getLogger(__name__)

#: the files ``--resume`` may continue from, in a run's ``checkpoints`` folder (the newest usable one wins)
RESUME_FILES = ("recovery.pt", "last.pt")


def _stage_head(model: Classifier, stage: StageConfig, label_smoothing: float, taxonomy=None):
    """The head ``stage`` switches to, built for ``model``'s features and classes (fresh parameters)."""
    return build_head(
        stage.head, stage.head_args, model.head.in_features, model.head.num_classes, label_smoothing, taxonomy
    )


def apply_stage_head(model: Classifier, stage: StageConfig, label_smoothing: float, taxonomy=None) -> bool:
    """Switch ``model`` to the head ``stage`` names (fresh parameters); returns whether it switched."""
    if not stage.head:
        return False
    device = next(model.head.parameters(), None)
    head = _stage_head(model, stage, label_smoothing, taxonomy)
    model.head = head.to(device.device) if device is not None else head
    return True


def stage_head_parameters(
    model: Classifier, stage: StageConfig, label_smoothing: float, taxonomy=None
) -> int | None:
    """How many parameters the head ``stage`` switches to would have, counted on a head built on the meta device
    (no memory, no time); None when the stage keeps its head, or when building the head reads tensor values
    (meta tensors have none: that head is sized when its stage starts)."""
    if not stage.head:
        return None
    try:
        with torch.device("meta"):
            head = _stage_head(model, stage, label_smoothing, taxonomy)
    except (NotImplementedError, RuntimeError):  # what torch raises for a meta tensor's values
        return None
    return sum(p.numel() for p in head.parameters())


def model_as_of_stage(
    model: Classifier, cfg: ExperimentConfig, stage_index: int, taxonomy=None
) -> Classifier:
    """Apply the structural changes (head switches) of stages ``0..stage_index`` to ``model``."""
    stages = cfg.resolved_stages()
    for stage in stages[: min(stage_index, len(stages) - 1) + 1]:
        apply_stage_head(model, stage, cfg.train.label_smoothing, taxonomy)
    return model


#: the checkpoints a run can be evaluated with, and the file each is read from
CHECKPOINT_FILES = {"best": "best.pt", "last": "last.pt", "ema": "last.pt", "swa": "last.pt"}


def checkpoint_path(run_dir: Path, which: str) -> Path:
    name = CHECKPOINT_FILES[which]
    path = run_dir / "checkpoints" / name
    if which == "best" and not path.is_file() and (run_dir / "checkpoints" / "last.pt").is_file():
        path = run_dir / "checkpoints" / "last.pt"  # no validation split: best is undefined
    return path


def taxonomy_of(ckpt: dict[str, Any]):
    if not ckpt.get("taxonomy"):
        return None
    from imgcls.taxonomy import Taxonomy

    return Taxonomy.from_dict(ckpt["taxonomy"])


def model_from_checkpoint(
    ckpt: dict[str, Any], which: str = "best"
) -> tuple[Classifier, ExperimentConfig, Any]:
    """Rebuild the model a checkpoint describes and load the requested weights (plain, EMA or SWA)."""
    cfg = build_config(ckpt["config"])
    taxonomy = taxonomy_of(ckpt)
    channels = int(ckpt["preprocess"]["channels"])
    model_cfg = cfg.model.model_copy(update={"pretrained": False, "pretrained_file": None})
    model = build_model(model_cfg, len(ckpt["class_names"]), channels, cfg.train.label_smoothing, taxonomy)
    model_as_of_stage(model, cfg, int(ckpt.get("progress", {}).get("stage", 0)), taxonomy)
    weights = ckpt["model"]
    if which in ("ema", "swa"):
        extra = ckpt.get("extra_weights", {})
        if which not in extra:
            key = "ema_decay" if which == "ema" else "swa_start"
            if getattr(cfg.train, key) is None:
                raise CheckpointError(
                    f"the checkpoint has no {which.upper()} weights; train with train.{key} set"
                )
            epoch = int(ckpt.get("progress", {}).get("global_epoch", 0))
            raise CheckpointError(  # e.g. early stopping ended the run before SWA's first epoch
                f"the checkpoint has no {which.upper()} weights: training stopped after epoch {epoch}, before they "
                f"began; evaluate another checkpoint (--checkpoint best) or start them earlier (train.{key})"
            )
        weights = extra[which]
    load_weights(model, weights, "checkpoint")
    model.eval()
    return model, cfg, taxonomy


def load_weights(model: Classifier, weights: dict[str, Any], what: str) -> None:
    """``model.load_state_dict(weights)`` with one line naming the mismatching keys instead of a traceback."""
    expected = model.state_dict()
    retyped = [
        k
        for k, v in weights.items()
        if k in expected
        and isinstance(v, torch.Tensor)
        and v.is_floating_point() != expected[k].is_floating_point()
    ]
    if retyped:  # load_state_dict would cast float weights to integers (or back) without a word
        first = retyped[0]
        more = f" (+{len(retyped) - 1} more)" if len(retyped) > 1 else ""
        raise CheckpointError(
            f"{what} weights do not fit the model its config describes (wrong type: {first} is "
            f"{weights[first].dtype} in the file, {expected[first].dtype} in the model{more})"
        )
    wrong = [
        k
        for k, v in weights.items()
        if k in expected and tuple(getattr(v, "shape", ())) != tuple(expected[k].shape)
    ]
    if wrong:
        missing = [k for k in expected if k not in weights]
        unexpected = [k for k in weights if k not in expected]
    else:  # non-strict first: modules may rename keys of older checkpoints (FCH's memory bank)
        result = model.load_state_dict(weights, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected or wrong:
        if wrong:  # the first mis-shaped key with both shapes: what a user compares against the config
            first = wrong[0]
            saved, built = list(getattr(weights[first], "shape", ())), list(expected[first].shape)
            wrong = [f"{first} (saved {saved}, model {built})", *wrong[1:]]
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise CheckpointError(
            f"{what} weights do not fit the model its config describes ({'; '.join(parts)})"
        )


def load_run_checkpoint(
    run_dir: str | Path, which: str | None = None, what: str = "checkpoint"
) -> tuple[dict[str, Any], str]:
    """The checkpoint ``which`` (best/last/ema/swa; default: the run's ``eval.checkpoint``) of a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory '{run_dir}' does not exist")
    if which is None:
        if not (run_dir / "config.yaml").is_file():
            inside = (
                " (it is a run's checkpoints folder: pass the run above it)"
                if run_dir.name == "checkpoints"
                else ""
            )
            raise CheckpointError(
                f"'{run_dir}' is not a run directory (it has no config.yaml){inside}; pass runs/<name>/<time>"
            )
        cfg = load_config(run_dir / "config.yaml")
        which = cfg.eval.checkpoint
    if which not in CHECKPOINT_FILES:
        raise CheckpointError(f"checkpoint must be one of {', '.join(CHECKPOINT_FILES)}, not {which!r}")
    path = checkpoint_path(run_dir, which)
    ckpt = ckpt_io.load_checkpoint(path, what=what)
    if which == "best" and path.name != "best.pt":
        best = (ckpt.get("callbacks") or {}).get("checkpointer", {}).get("best_epoch")
        if (
            best is not None
        ):  # the run had a validation split, so best.pt was written: it is lost, not undefined
            raise CheckpointError(
                f"'{run_dir / 'checkpoints' / 'best.pt'}' is missing, although the run selected a best checkpoint "
                f"(epoch {best}); restore it, or evaluate another checkpoint (--checkpoint last)"
            )
    return ckpt, which


def resume_candidates(run_dir: str | Path) -> list[Path]:
    """The run's resume checkpoints that exist, newest first (``recovery.pt`` first when as new as ``last.pt``)."""
    folder = Path(run_dir) / "checkpoints"
    candidates = [folder / name for name in RESUME_FILES if (folder / name).is_file()]
    candidates.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)  # stable: recovery.pt first on a tie
    return candidates


def resume_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The checkpoint ``imgcls train --resume RUN_DIR`` continues from; None when the run has none yet.

    The newest of ``recovery.pt`` (mid-epoch) and ``last.pt`` (end of an epoch) that loads wins; a damaged,
    unsafe or incomplete one is skipped with a one-line warning (the steps after the older file are trained
    again). When every candidate is unusable: one line listing each and why.
    """
    skipped: list[ckpt_io.UnusableCheckpoint] = []
    for path in resume_candidates(run_dir):
        try:
            ckpt = ckpt_io.load_checkpoint(path, resumable=True)
        except ckpt_io.UnusableCheckpoint as exc:
            skipped.append(exc)
            continue
        for exc in skipped:
            log.warning(
                "warning: '%s' %s; resuming from '%s' instead (the steps since then are trained again)",
                exc.path,
                exc.problem,
                path,
            )
        return ckpt
    if skipped:
        reasons = "; ".join(f"'{exc.path}' {exc.problem}" for exc in skipped)
        raise CheckpointError(
            f"cannot resume {run_dir}: no usable checkpoint ({reasons}); restore one from a copy, or delete them "
            "to train the run again from the start"
        )
    return None

"""The Python API: train / evaluate / predict / load as plain functions (the CLI is a thin layer
over these, so notebooks and scripts use the same code).

Protocol (SPEC §7.10): validation comes from a stratified split of the training data; the test
set is evaluated once, after training, on the checkpoint named by ``eval.checkpoint`` (best
validation, last, EMA or SWA), and the report says which.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imgcls.config import ExperimentConfig, apply_overrides, build_config, config_to_yaml, load_config
from imgcls.data.prepare import PreparedData, make_loader, prepare_data
from imgcls.engine.callbacks import (
    Checkpointer,
    EarlyStopping,
    HistoryLogger,
    ProgressPrinter,
    StopAtValAcc,
)
from imgcls.engine.objective import build_objective
from imgcls.engine.trainer import Trainer
from imgcls.errors import CheckpointError, UserError
from imgcls.models.classifier import Classifier, build_model
from imgcls.runs import checkpoint_path, load_run_checkpoint, model_from_checkpoint  # noqa: F401  (public API)
from imgcls.runtime import checkpoint as ckpt_io
from imgcls.runtime.distributed import DistInfo, barrier, broadcast_object, init_distributed
from imgcls.runtime.precision import autocast, configure_backends, resolve_device


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def report(self) -> Path:
        return self.run_dir / "report.md"


# ---------------------------------------------------------------------------------- helpers
def _as_config(cfg: ExperimentConfig | str | Path | None, overrides: list[str] | None) -> ExperimentConfig:
    if not isinstance(cfg, ExperimentConfig):
        return load_config(cfg, overrides)
    if not overrides:
        return cfg
    return build_config(apply_overrides(cfg.model_dump(mode="json"), list(overrides)))


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

    return build_taxonomy(cfg.data.taxonomy, data.class_names, rule=cfg.data.taxonomy_rule, synsets=data.synsets or None)


def build_callbacks(cfg: ExperimentConfig, run_dir: Path) -> list:
    from imgcls.engine.averaging import averaging_callbacks
    from imgcls.engine.confusion_sampling import sampling_callbacks

    callbacks = [*averaging_callbacks(cfg), *sampling_callbacks(cfg), StopAtValAcc()]
    if cfg.train.early_stopping_patience:
        callbacks.append(EarlyStopping(cfg.train.monitor, cfg.train.early_stopping_patience, cfg.train.early_stopping_min_delta))
    callbacks += [  # history first: the checkpoint written after it must already hold this epoch's row
        HistoryLogger(run_dir, cfg.output.tensorboard, cfg.train.log_every),
        Checkpointer(run_dir / "checkpoints", cfg.train.monitor),
        ProgressPrinter(cfg.train.progress),
    ]
    return callbacks


# ---------------------------------------------------------------------------------- train
def train(
    cfg: ExperimentConfig | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
    evaluate_after: bool = True,
) -> RunResult:
    """Train an experiment (or resume the run in ``resume``), then evaluate it once on the test set."""
    resume_ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"'{run_dir}' is not a run directory (no config.yaml); pass runs/<name>/<time>")
        cfg = load_config(run_dir / "config.yaml", overrides)
        resume_ckpt = ckpt_io.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    else:
        cfg = _as_config(cfg, overrides)
        run_dir = None

    device = resolve_device(cfg.train.device)
    dist = init_distributed(device.type)
    configure_backends(cfg.train, device)
    if run_dir is None:
        run_dir = Path(broadcast_object(str(new_run_dir(cfg)), dist))
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))

    data = prepare_data(cfg)
    taxonomy = build_taxonomy_for(cfg, data)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, len(data.class_names), data.channels, cfg.train.label_smoothing, taxonomy)
    train_loader = make_loader(data.train, data, cfg, train=True, batch_size=cfg.train.batch_size,
                               rank=dist.rank, world_size=dist.world_size, device=device)
    eval_bs = cfg.eval.batch_size or cfg.train.batch_size
    val_loader = make_loader(data.val, data, cfg, train=False, batch_size=eval_bs,
                             rank=dist.rank, world_size=dist.world_size, device=device) if len(data.val) else None

    from imgcls.data.augment import build_train_augment
    from imgcls.models.feature_cache import attach_feature_cache

    augment = build_train_augment(cfg.augment, len(data.class_names))
    attach_feature_cache(model, cfg, augment)
    trainer = Trainer(
        cfg, model, train_loader, val_loader, device=device, preprocess_meta=data.preprocess,
        class_names=data.class_names, callbacks=build_callbacks(cfg, run_dir), augment=augment, dist=dist, taxonomy=taxonomy,
        objective=build_objective(cfg, model, device=device, data=data),
    )
    start = time.perf_counter()
    history = trainer.fit(resume=resume_ckpt)
    train_time = time.perf_counter() - start + (resume_ckpt or {}).get("metrics", {}).get("train_time_s", 0.0)
    if dist.is_main and data.skipped_files:
        (run_dir / "skipped_files.txt").write_text("\n".join(data.skipped_files) + "\n")
    if dist.is_main:
        (run_dir / "train_summary.json").write_text(json.dumps({"train_time_s": train_time, "epochs": trainer.state.global_epoch}))
    barrier(dist)
    result = RunResult(run_dir, {}, history)
    if evaluate_after:
        result.metrics = evaluate(run_dir, data=data, dist=dist)
    return result


# ---------------------------------------------------------------------------------- evaluate
def evaluate(
    run_dir: str | Path,
    checkpoint: str | None = None,
    *,
    data: PreparedData | None = None,
    dist: DistInfo | None = None,
    data_overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a run's chosen checkpoint on the test set; writes metrics.json, figures and report.md."""
    from imgcls.evaluation.evaluate import evaluate_model

    run_dir = Path(run_dir)
    ckpt, which = load_run_checkpoint(run_dir, checkpoint)
    model, cfg, taxonomy = model_from_checkpoint(ckpt, which)
    if ckpt.get("execution") and cfg.train.precision == "auto":  # the precision training measured
        cfg.train.precision = ckpt["execution"]["precision"]
    if data_overrides:
        cfg = build_config(apply_overrides(cfg.model_dump(mode="json"), data_overrides))
    dist = dist or DistInfo()
    device = resolve_device(cfg.train.device)
    if data is None or data_overrides:
        data = prepare_data(cfg, need_train=False)
    if data.class_names != ckpt["class_names"]:
        raise UserError(f"the evaluation data's classes {data.class_names[:5]}... differ from the model's {ckpt['class_names'][:5]}...")
    detail = {"best": f"best validation {cfg.train.monitor} (epoch {ckpt.get('metrics', {}).get('epoch', '?')})",
              "last": f"last epoch ({ckpt.get('metrics', {}).get('epoch', '?')})",
              "ema": "exponential moving average of the weights", "swa": "stochastic weight averaging"}[which]
    summary_path = run_dir / "train_summary.json"
    train_time = json.loads(summary_path.read_text())["train_time_s"] if summary_path.is_file() else float("nan")
    return evaluate_model(
        model, cfg, data, run_dir, device=device, dist=dist, taxonomy=taxonomy, checkpoint=which,
        checkpoint_detail=detail, preprocess=ckpt["preprocess"], class_names=ckpt["class_names"], train_time_s=train_time,
    )


# ---------------------------------------------------------------------------------- predict
class Predictor:
    """A trained model ready for inference on image files, PIL images or uint8 tensors."""

    def __init__(self, model: Classifier, preprocess: dict[str, Any], class_names: list[str], taxonomy=None, device: str = "cpu") -> None:
        from imgcls.data.preprocess import Preprocess

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.meta, self.class_names, self.taxonomy = preprocess, class_names, taxonomy
        self.prep = Preprocess.from_meta(preprocess, self.device)

    def load_images(self, images: list[Any]) -> torch.Tensor:
        from PIL import Image

        from imgcls.data.decode import _BAD_IMAGE_ERRORS, decode_image
        from imgcls.data.images import convert_channels, resize_uint8
        from imgcls.errors import DataError

        size, channels = int(self.meta["image_size"]), int(self.meta["channels"])
        out = []
        for item in images:
            if isinstance(item, torch.Tensor):
                t = item if item.ndim == 4 else item[None]
                out.append(resize_uint8(convert_channels(t.to(torch.uint8), channels), size))
                continue
            if isinstance(item, Image.Image):
                item.save(buf := __import__("io").BytesIO(), format="PNG")
                buf.seek(0)
                item = buf
            try:
                out.append(decode_image(item, size, channels)[None])
            except FileNotFoundError:
                raise DataError(f"image '{item}' does not exist") from None
            except _BAD_IMAGE_ERRORS as exc:
                raise DataError(f"cannot read image '{item}': {exc}") from None
        return torch.cat(out)

    @torch.no_grad()
    def _predict_views(self, images: list[Any], tta: int):
        from imgcls.evaluation.predict import predict_views

        batch = self.load_images(images).to(self.device)
        return predict_views(self.model, batch, self.prep, lambda: autocast(self.device, None), tta)

    def predict_proba(self, images: list[Any], tta: int = 1) -> torch.Tensor:
        return self._predict_views(images, tta).probs.cpu()

    def predict(self, images: list[Any], top_k: int = 5, tta: int = 1, threshold: float | None = None) -> list[dict[str, Any]]:
        """Top-k classes per image; with ``threshold`` τ also the deepest taxonomy node on a consistent
        root path whose probability ≥ τ. Node probabilities come from the head itself for node-space
        heads (``predict_nodes``: SphereMulti, SphereMultiHier, per-level heads), else the class
        probabilities summed up the tree."""
        views = self._predict_views(images, tta)
        probs = views.probs.cpu()
        node_probs = None if views.node_probs is None else views.node_probs.cpu()
        k = min(top_k, probs.shape[1])
        results = []
        for i, p in enumerate(probs):
            values, idx = p.topk(k)
            row: dict[str, Any] = {
                "image": str(images[i]) if isinstance(images[i], (str, Path)) else f"#{i}",
                "top_k": [{"class": self.class_names[j], "probability": float(v)} for v, j in zip(values, idx.tolist(), strict=True)],
            }
            if threshold is not None:
                row["hierarchy"] = self.hierarchical_path(p[None], threshold, None if node_probs is None else node_probs[i : i + 1])[0]
            results.append(row)
        return results

    def hierarchical_path(self, class_probs: torch.Tensor, threshold: float,
                          node_probs: torch.Tensor | None = None) -> list[dict[str, Any]]:
        from imgcls.errors import UserError as _UserError

        if self.taxonomy is None:
            raise _UserError("--threshold needs a model trained with a taxonomy (data.taxonomy)")
        from imgcls.evaluation.hierarchical import threshold_decode

        if node_probs is None:
            node_probs = self.taxonomy.class_to_node_probs(class_probs)
        nodes = threshold_decode(node_probs, self.taxonomy, threshold)
        return [{"path": self.taxonomy.path_names(int(n)), "probability": float(node_probs[i, int(n)]) if int(n) >= 0 else 1.0}
                for i, n in enumerate(nodes)]


def load(run_dir: str | Path, checkpoint: str | None = None, device: str = "cpu") -> Predictor:
    """Load a run's model for inference (`imgcls.load(run_dir).predict(["shoe.png"])`)."""
    ckpt, which = load_run_checkpoint(run_dir, checkpoint)
    model, _, taxonomy = model_from_checkpoint(ckpt, which)
    return Predictor(model, ckpt["preprocess"], ckpt["class_names"], taxonomy, device)


def predict(run_dir: str | Path, images: list[Any], top_k: int = 5, tta: int = 1, threshold: float | None = None,
            checkpoint: str | None = None) -> list[dict[str, Any]]:
    return load(run_dir, checkpoint).predict(images, top_k=top_k, tta=tta, threshold=threshold)


# ---------------------------------------------------------------------------------- compare / export
def compare(run_dirs: list[str | Path], fmt: str = "markdown", sort_by: str | None = "accuracy") -> str:
    """One table (``markdown`` or ``csv``) of the evaluated runs under ``run_dirs``; seeds of one config are averaged."""
    from imgcls.evaluation.compare import compare_runs

    if fmt not in ("markdown", "csv"):
        raise UserError(f"table format must be markdown or csv, not '{fmt}'")
    table = compare_runs(list(run_dirs), sort_by=sort_by)
    return table.to_markdown() if fmt == "markdown" else table.to_csv()


def export(run_dir: str | Path, *, onnx: bool = True, torchscript: bool = False, checkpoint: str | None = None,
           out_dir: str | Path | None = None, atol: float = 1e-4, exporter: str = "auto") -> dict[str, Any]:
    """Export a run to ONNX / TorchScript (input: float images in [0, 1]; output: class probabilities) and check parity."""
    from imgcls.export import export_run

    return export_run(run_dir, onnx=onnx, torchscript=torchscript, checkpoint=checkpoint, out_dir=out_dir, atol=atol,
                      exporter=exporter)


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

    return build_taxonomy(cfg.data.taxonomy, source_data.train.class_names, rule=cfg.data.taxonomy_rule,
                          synsets=source_data.synsets or None)


def data_cache(src: str | Path, dst: str | Path, *, size: int = 96, grayscale: bool = False, workers: int | None = None,
               chunk_size: int = 256, exclude_manifest: str | Path | None = None, overwrite: bool = False,
               progress: bool = False) -> dict[str, Any]:
    """Decode an image-folder class tree once into a resized uint8 cache (resumable); returns a summary."""
    from imgcls.data.cache import build_cache

    return build_cache(src, dst, size=size, grayscale=grayscale, workers=workers, chunk_size=chunk_size,
                       exclude_manifest=exclude_manifest, overwrite=overwrite, progress=progress)


def data_dedup(src: str | Path, *, threshold: int = 2, scope: str = "both", hash_kind: str = "phash", size: int = 96,
               workers: int | None = None, out: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Find near-duplicate images of a class tree by perceptual hash; writes and returns the manifest (files untouched)."""
    from imgcls.data.dedup import dedup_folder

    return dedup_folder(src, threshold=threshold, scope=scope, kind=hash_kind, size=size, workers=workers, out=out,
                        progress=progress)

"""Experiment configuration: a pydantic schema, YAML files and dotted command-line overrides.

One :class:`ExperimentConfig` describes a whole run (data, augmentation, model, optimiser,
schedule, training, evaluation, output, stages). Every section forbids unknown keys; a bad
key or value becomes a one-line :class:`~imgcls.errors.ConfigError` naming the key, the
value, what is allowed, and the closest valid key for typos.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imgcls.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    name: str = Field("fashion_mnist", description="registered data set name (fashion_mnist, mnist, cifar10, ...)")
    root: str | None = Field(None, description="folder holding the data; default: search the standard places")
    download: bool = Field(False, description="download the data set when it is not found locally")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="stratified validation split of the training data")
    split_seed: int = 0
    image_size: int | None = Field(None, gt=0, description="resize images to this square size (None: native)")
    channels: int | None = Field(None, description="convert to 1 (grayscale) or 3 (RGB) channels (None: native)")
    mean: list[float] | None = Field(None, description="normalisation mean per channel (None: data set default)")
    std: list[float] | None = None
    train_subset: int | None = Field(None, gt=0, description="use only this many training images (stratified)")
    test_subset: int | None = Field(None, gt=0, description="use only this many test images (stratified)")
    in_memory: Literal["auto", "yes", "no"] = "auto"
    num_workers: int = Field(2, ge=0)
    sampler: Literal["random", "balanced", "m_per_class", "confusion"] = "random"
    samples_per_class: int | None = Field(None, gt=0, description="balanced: images per class per epoch; m_per_class: m")
    confusion_floor: float = Field(
        0.25, ge=0.0, le=1.0, description="confusion sampler: share of draws spread evenly over classes (1: balanced)"
    )
    train_dir: str | None = Field(None, description="imagefolder: training folder (relative to data.root), else found")
    test_dir: str | None = Field(
        None, description="imagefolder: test folder, a class tree or flat files named <class>_*.jpg; else found or carved"
    )
    holdout_per_class: int | None = Field(
        None, gt=0, description="set aside this many unused training images per class, evaluated once beside the test set"
    )
    taxonomy: str | None = Field(None, description="'wordnet', or a path to a parent-map YAML/JSON or label-path CSV")
    taxonomy_rule: Literal["first_path", "shortest_path"] = "first_path"
    exclude_manifest: str | None = Field(
        None, description="dedup manifest (imgcls data dedup --out FILE): the files it removed are skipped"
    )
    test_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="no test split (e.g. one cache): stratified fraction carved out as the test set"
    )

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: int | None) -> int | None:
        if v not in (None, 1, 3):
            raise ValueError("must be 1 or 3")
        return v


class AugmentConfig(Section):
    """Batched training augmentation (applied to whole batches on the device)."""

    preset: str | None = Field(None, description="mnist | cifar | asl: the seeds' recipes; fields below override")
    crop_padding: int = Field(0, ge=0, description="random crop after zero-padding by this many pixels")
    random_resized_crop: bool = False
    hflip: float = Field(0.0, ge=0.0, le=1.0, description="horizontal flip probability")
    rotation: float = Field(0.0, ge=0.0, le=180.0, description="max rotation in degrees")
    translate: float = Field(0.0, ge=0.0, le=0.5, description="max translation as a fraction of size")
    scale: tuple[float, float] = (1.0, 1.0)
    shear: float = Field(0.0, ge=0.0, le=45.0)
    perspective: float = Field(0.0, ge=0.0, le=1.0, description="distortion scale (probability 0.5)")
    brightness: float = Field(0.0, ge=0.0, le=1.0)
    contrast: float = Field(0.0, ge=0.0, le=1.0)
    grayscale: bool = False
    randaugment: tuple[int, int] | None = Field(None, description="(num_ops N, magnitude M 0..30)")
    autoaugment: Literal["cifar10", "imagenet", "svhn"] | None = None
    trivialaugment: bool = False
    cutout_holes: int = Field(0, ge=0)
    cutout_size: int = Field(0, ge=0)
    erasing: float = Field(0.0, ge=0.0, le=1.0, description="random erasing probability")
    mixup_alpha: float = Field(0.0, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="probability of mixing a batch")
    mix_switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability of CutMix when both are on")
    mix_off_epoch: int | None = Field(None, ge=0, description="stop mixing from this epoch on")


class ModelConfig(Section):
    backbone: str = Field("adaptive_cnn", description="registered backbone, or timm:<model name>")
    backbone_args: dict[str, Any] = Field(default_factory=dict)
    pretrained: bool = False
    pretrained_file: str | None = Field(None, description="local weights (.safetensors or .pt) for the backbone")
    head: str = "linear"
    head_args: dict[str, Any] = Field(default_factory=dict)
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the head")
    cache_features: bool = Field(False, description="frozen-trunk training: compute a frozen backbone's features once per image")
    cache_features_max_mb: float = Field(4096.0, gt=0, description="memory bound of the feature cache")


class OptimConfig(Section):
    name: Literal["sgd", "adamw", "adam", "rmsprop"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    decay_norm_and_bias: bool = Field(False, description="apply weight decay to norm weights and biases too")
    head_lr_mult: float = Field(1.0, gt=0.0, description="learning-rate multiplier for the head's parameters")
    fused: bool | None = Field(None, description="fused optimizer kernels (None: on CUDA only)")


class ScheduleConfig(Section):
    name: Literal["cosine", "constant", "step", "linear"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    warmup_start_factor: float = Field(0.1, ge=0.0, le=1.0, description="warm-up starts at lr × this (not 0)")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="cosine ends at lr × this")
    step_epochs: list[int] = Field(default_factory=list, description="step: multiply lr by gamma at these epochs")
    gamma: float = 0.1


class TrainConfig(Section):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, gt=0)
    grad_clip: float | None = Field(None, gt=0.0, description="clip gradient norm to this value")
    accumulate: int = Field(1, ge=1, description="gradient accumulation steps")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: the fastest of fp32 / bf16 autocast, timed on a few real steps before training"
    )
    channels_last: bool | None = Field(None, description="None (auto): measured with the precision; true/false pins it")
    autotune_max_share: float = Field(
        0.03, ge=0.0, le=1.0, description="auto precision/layout: timing may cost at most this share of the run"
    )
    compile: bool = False
    seed: int = 42
    deterministic: bool = False
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    monitor: Literal["val_acc", "val_loss"] = "val_acc"
    early_stopping_patience: int | None = Field(None, ge=1)
    early_stopping_min_delta: float = Field(0.0, ge=0.0)
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0, description="keep an EMA of the weights with this decay")
    ema_warmup: bool = True
    swa_start: float | None = Field(None, gt=0.0, lt=1.0, description="start SWA after this fraction of epochs")
    swa_lr: float | None = Field(None, gt=0.0)
    log_every: int = Field(50, ge=1, description="steps between TensorBoard scalars")
    progress: bool = True
    threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU (None: torch default)")
    ddp_find_unused_parameters: bool = Field(False, description="DDP: allow parameters without gradients in a step")


class EvalConfig(Section):
    checkpoint: Literal["best", "last", "ema", "swa"] = "best"
    batch_size: int | None = Field(None, gt=0, description="None: the training batch size")
    top_k: list[int] = Field(default_factory=lambda: [1, 5])
    tta: int = Field(1, ge=1, le=10, description="test-time views averaged (1: none; 2: + horizontal flip; more: + shifts)")
    calibration_bins: int = Field(15, ge=2)
    plots: bool = True
    embeddings_plot: bool = True
    gradcam: bool = True
    max_plot_samples: int = Field(2000, gt=0)
    hier_threshold: float = Field(0.5, ge=0.0, le=1.0, description="confidence threshold τ for hierarchical prediction")
    image_projection: bool = Field(False, description="t-SNE and UMAP of PCA-compressed training images (seed 001's Fig. 3)")


class OutputConfig(Section):
    dir: str = "runs"
    name: str | None = Field(None, description="run name (default: the config file's stem)")
    tensorboard: bool = True


class StageConfig(Section):
    """One stage of a staged experiment; unset fields inherit from the experiment."""

    name: str = "main"
    epochs: int | None = Field(None, ge=0)
    optim: dict[str, Any] = Field(default_factory=dict, description="overrides of the optim section")
    schedule: dict[str, Any] = Field(default_factory=dict, description="overrides of the schedule section")
    label_smoothing: float | None = Field(None, ge=0.0, lt=1.0)
    freeze: list[str] = Field(default_factory=list, description="module prefixes to freeze (also eval mode)")
    train_only: list[str] = Field(default_factory=list, description="train only these module prefixes")
    loss_weights: dict[str, float] = Field(default_factory=dict, description="weight per named loss term")
    head: str | None = Field(None, description="switch to this head for the stage")
    head_args: dict[str, Any] = Field(default_factory=dict)
    stop_at_val_acc: float | None = Field(None, gt=0.0, le=1.0, description="end the stage once val acc reaches it")


class ExperimentConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    stages: list[StageConfig] = Field(default_factory=list, description="empty: one stage of train.epochs")

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.eval.checkpoint == "ema" and self.train.ema_decay is None:
            raise ValueError("eval.checkpoint=ema needs train.ema_decay (e.g. 0.999)")
        if self.eval.checkpoint == "swa" and self.train.swa_start is None:
            raise ValueError("eval.checkpoint=swa needs train.swa_start (e.g. 0.75)")
        return self

    def resolved_stages(self) -> list[StageConfig]:
        """The stages to run; an experiment without a `stages` list is one stage of `train.epochs`."""
        if not self.stages:
            return [StageConfig(name="main", epochs=self.train.epochs)]
        return [s if s.epochs is not None else s.model_copy(update={"epochs": self.train.epochs}) for s in self.stages]

    def total_epochs(self) -> int:
        return sum(int(s.epochs or 0) for s in self.resolved_stages())


# --------------------------------------------------------------------------------------------
# Loading, overrides and error messages
# --------------------------------------------------------------------------------------------


class ConfigLoader(yaml.SafeLoader):
    """YAML as people write configs (YAML 1.2 scalars): only true/false are booleans (``in_memory: no``
    stays the string 'no'), and ``1e-3`` is a float, not a string."""


ConfigLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ConfigLoader)


def _parse_value(text: str) -> Any:
    """Parse an override value with YAML rules (numbers, bools, lists, null); fall back to the string."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError:
        return text


def _valid_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """Valid keys at ``path`` inside the schema (for typo suggestions)."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = next(
            (a for a in (annotation, *getattr(annotation, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form section.key=value (e.g. optim.lr=3e-4)")
        parts = key.strip().split(".")
        node = raw
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return raw


def _format_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "config"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        section = [p for p in loc[:-1] if not p.isdigit()]
        valid = _valid_keys(ExperimentConfig, section) or _valid_keys(StageConfig, section[-1:] if section else [])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else ""
        allowed = f" Valid keys here: {', '.join(valid)}." if valid else ""
        return f"unknown config key '{key}'{hint}{allowed}"
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        msg = "must be " + msg.removeprefix("Input should be ")
    more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    if not loc:
        return f"invalid config: {msg}{more}"
    return f"invalid value {shown} for '{key}': {msg}{more}"


def build_config(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML experiment config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    name = None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' not found; pass a YAML file such as configs/quickstart.yaml")
        try:
            raw = parse_yaml(p.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file '{p}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of sections (data:, model:, ...)")
        name = p.stem
    raw = apply_overrides(raw, list(overrides or []))
    cfg = build_config(raw)
    if cfg.output.name is None and name is not None:
        cfg.output.name = name
    return cfg


def config_to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
